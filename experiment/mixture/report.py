"""A person's view of the plan: Markdown tables (per language, domain and shard) and a PNG chart.

Columns, as in seed 000's table: tokens available, tokens seen in a run of the budget, source % (seen /
available, i.e. how much of the source is used; above 100 % means repetition), mix % (the per-token weight),
and epochs. Rendering is deterministic: sorted rows, fixed number formats, a PNG without a timestamp.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from experiment.mixture.datatypes import MixtureEntry, MixtureMode, MixturePlan
from experiment.mixture.outputs import split_string
from experiment.mixture.rules import whole_tokens


@dataclass(frozen=True)
class Row:
    key: str
    shards: int
    available: int
    seen: int
    weight: float
    target: float | None = None

    @property
    def source_pct(self) -> float:
        return 100.0 * self.seen / self.available if self.available else 0.0

    @property
    def epochs(self) -> float:
        return self.seen / self.available if self.available else 0.0


def group(plan: MixturePlan, key: Callable[[MixtureEntry], str]) -> list[Row]:
    acc: dict[str, list[MixtureEntry]] = {}
    for e in plan.entries:
        acc.setdefault(key(e), []).append(e)
    rows = []
    for k in sorted(acc):
        members = acc[k]
        target = plan.target_proportions.get(k) if plan.target_proportions and key is domain_of else None
        rows.append(Row(k, len(members), sum(e.tokens for e in members),
                        sum(whole_tokens(e.tokens_seen) for e in members), sum(e.weight for e in members), target))
    return rows


def domain_of(e: MixtureEntry) -> str:
    """An entry's domain: a grouping key of the tables (and of the HTML report's)."""
    return e.domain


def language_of(e: MixtureEntry) -> str:
    """An entry's language: a grouping key of the tables (and of the HTML report's)."""
    return e.language


def _table(title: str, rows: Iterable[Row], with_target: bool) -> str:
    head = f"| {title} | shards | tokens available | tokens seen | source % | mix % | epochs |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if with_target:
        head += " target % |"
        rule += "---:|"
    out = [head, rule]
    total_avail = total_seen = total_shards = 0
    total_weight = 0.0
    for r in rows:
        line = (f"| {r.key} | {r.shards:,} | {r.available:,} | {r.seen:,} | {r.source_pct:.2f}% | "
                f"{100 * r.weight:.2f}% | {r.epochs:.3f} |")
        if with_target:
            line += f" {100 * r.target:.2f}% |" if r.target is not None else " - |"
        out.append(line)
        total_avail += r.available
        total_seen += r.seen
        total_shards += r.shards
        total_weight += r.weight
    src = 100.0 * total_seen / total_avail if total_avail else 0.0
    line = (f"| **total** | {total_shards:,} | {total_avail:,} | {total_seen:,} | {src:.2f}% | "
            f"{100 * total_weight:.2f}% | {total_seen / total_avail if total_avail else 0:.3f} |")
    out.append(line + (" |" if with_target else ""))
    return "\n".join(out) + "\n"


def markdown(plan: MixturePlan, folder_name: str, fingerprint: str, valid_fraction: float) -> str:
    with_target = plan.mode == MixtureMode.PROPORTIONS
    rules = ("data_ratio.json x lang_prob.json, seed 002 rules" if plan.mode == MixtureMode.RATIO
             else "data.target_proportions per domain")
    parts = [
        f"# Data mixture of `{folder_name}`\n",
        f"- mode: **{plan.mode}** ({rules})",
        f"- budget: **{whole_tokens(plan.budget_tokens):,} tokens** ({plan.budget_from}); "
        f"sequence length {plan.seq_length}",
        f"- shards in the blend: {len(plan.entries):,}; left out: {len(plan.dropped):,}",
        f"- fingerprint: `{fingerprint}`\n",
        "## How the weights were derived\n",
        _derivation(plan, valid_fraction),
        "## By language\n",
        _table("language", group(plan, language_of), False),
        "## By domain\n",
        _table("domain", group(plan, domain_of), with_target),
    ]
    if plan.notes:
        parts += ["## Notes\n", "\n".join(f"- {n}" for n in plan.notes) + "\n"]
    if plan.dropped:
        parts += ["## Left out\n", "| shard | language | domain | tokens | why |", "|---|---|---|---:|---|"]
        parts += [f"| {d.name} | {d.language} | {d.domain} | {d.tokens:,} | {d.reason} |" for d in plan.dropped]
        parts.append("")
    parts += ["## By shard\n",
              "| shard | language | domain | multiplier | tokens available | tokens seen | source % | mix % | "
              "epochs | weight |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for e in plan.entries:
        seen = whole_tokens(e.tokens_seen)
        src = 100.0 * seen / e.tokens if e.tokens else 0.0
        parts.append(f"| {e.name} | {e.language} | {e.domain} | {e.multiplier:g} | {e.tokens:,} | {seen:,} | "
                     f"{src:.2f}% | {100 * e.weight:.4f}% | {e.epochs:.3f} | {e.weight!r} |")
    return "\n".join(parts) + "\n"


def _derivation(plan: MixturePlan, valid_fraction: float) -> str:
    if plan.mode == MixtureMode.RATIO:
        rule = ("Per shard, `tokens x multiplier` (multiplier from `data_ratio.json`); within a language these are "
                "divided by their sum and multiplied by the language's probability from `lang_prob.json` (without "
                "it, all languages form one pool). This is seed 002's `data_ratio_from_file.py` rule.")
    else:
        rule = ("Each domain gets its `target_proportions` share; within a domain a shard's share is its tokens "
                "over the domain's tokens.")
    return (
        f"{rule} The result is a **per-token** weight; the weights sum to 1.\n\n"
        "Megatron's `BlendedDataset` draws **samples**, with these weights as sample probabilities. "
        f"`GPTDataset` packs every shard's documents into samples of exactly {plan.seq_length} tokens (+1 for "
        "the shifted label), so every sample holds the same number of tokens and the per-sample weight equals "
        "the per-token weight: no conversion is needed. Megatron normalises the weights again (a no-op here) and "
        "builds each shard's dataset with `ceil(weight x samples x (1 + surplus))` samples, repeating a shard's "
        "epochs when the budget asks for more than it holds (the `epochs` column).\n\n"
        f"Tokens seen = weight x budget; source % = seen / available. For a held-out split use `data_path.args` "
        f"with `--split {split_string(valid_fraction)}` (data.valid_fraction = {valid_fraction:g}); "
        "`per_split_data_args.json` lists the train blend only, because Megatron's per-split mode would use "
        "every document of a shard listed under `valid` for validation.\n"
    )


def chart_png(plan: MixturePlan, folder_name: str) -> bytes:
    """Per-domain bars: share of the data available vs share of the mix, with epochs annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = group(plan, domain_of)
    total_avail = sum(r.available for r in rows) or 1
    labels = [r.key for r in rows]
    avail = [100 * r.available / total_avail for r in rows]
    mix = [100 * r.weight for r in rows]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * max(len(rows), 1)), dpi=100)
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], avail, height=0.4, label="share of tokens available", color="#9db4c0")
    ax.barh([y - 0.2 for y in ys], mix, height=0.4, label="share of the mix (weight)", color="#1f77b4")
    if plan.target_proportions:
        ax.scatter([100 * (r.target or 0) for r in rows], [y - 0.2 for y in ys], marker="|", s=200,
                   color="black", label="target", zorder=3)
    for y, r, m in zip(ys, rows, mix):
        ax.text(m, y - 0.2, f" {r.epochs:.2f} ep", va="center", fontsize=8)
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.2 * max(avail + mix + [1.0]))  # room for the epoch labels
    ax.set_xlabel("% of tokens")
    ax.set_title(f"Mixture of {folder_name}: {whole_tokens(plan.budget_tokens):,} tokens")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / max(len(rows), 1)), ncol=3, fontsize=8,
              frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
