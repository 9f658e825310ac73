"""What ``experiment eval`` writes: the table (stdout or ``--json``), ``logs/eval/eval.json``, the PNG of
target gain against replay loss per checkpoint (``logs/eval/gain.png``), and the same numbers sent to the
trackers of ``[tracking]`` (the training run's MLflow/W&B run, through ``logs/tracking.json``).

Gain and loss are in nats per token against the reference (the base checkpoint when evaluated, else the
first checkpoint): gain = mean over target domains of ln(ppl_ref) - ln(ppl), replay loss = mean over
replay domains of ln(ppl) - ln(ppl_ref); up-and-left is better.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from experiment.atomic import write_atomic

JSON_NAME, PNG_NAME = "eval.json", "gain.png"


@dataclass
class Row:
    label: str  # "base" or "iter_0000008"
    iteration: int  # 0 for the base
    ppl: dict[str, float]  # held-out token perplexity per domain
    mc: dict[str, float]  # multiple-choice accuracy per language
    gain: float | None = None  # target gain vs the reference (nats/token)
    replay_loss: float | None = None  # replay loss increase vs the reference (nats/token)
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)  # --task: lm-eval's metrics per task


def from_metrics(label: str, iteration: int, metrics: dict[str, dict[str, float]]) -> Row:
    return Row(label, iteration,
               {k[4:]: m["token_perplexity"] for k, m in metrics.items() if k.startswith("ppl/")},
               {k[3:]: m["acc"] for k, m in metrics.items() if k.startswith("mc/")},
               tasks={k[5:]: m for k, m in metrics.items() if k.startswith("task/")})


def headline(metrics: dict[str, float]) -> tuple[str, float] | None:
    """The one metric a table column shows for a ``--task``: acc, else the first lm-eval reported."""
    for name in ("acc", "exact_match", "word_perplexity", *sorted(metrics)):
        if name in metrics:
            return name, metrics[name]
    return None


def add_gains(rows: list[Row], targets: set[str]) -> None:
    ref = rows[0]

    def mean(values):
        return sum(values) / len(values) if values else None

    for r in rows:
        t = [math.log(ref.ppl[d]) - math.log(r.ppl[d]) for d in r.ppl if d in targets and d in ref.ppl]
        p = [math.log(r.ppl[d]) - math.log(ref.ppl[d]) for d in r.ppl if d not in targets and d in ref.ppl]
        r.gain, r.replay_loss = mean(t), mean(p)


def emit(rows: list[Row], targets: set[str], out_dir: Path, as_json: bool, extra: dict) -> dict:
    """The table on stdout (``experiment.summary``) and ``eval.json``; returns the JSON payload."""
    from experiment.summary import Column, Summary
    from experiment.summary import emit as emit_summary

    domains = sorted({d for r in rows for d in r.ppl})
    langs = sorted({lang for r in rows for lang in r.mc})
    tasks = sorted({t for r in rows for t in r.tasks})
    payload = {"targets": sorted(targets), "reference": rows[0].label, "rows": [asdict(r) for r in rows], **extra}
    write_atomic(out_dir / JSON_NAME, json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    cols = [Column("checkpoint")] + [Column(f"ppl {d}{' *' if d in targets else ''}") for d in domains] \
        + [Column(f"mc acc {lang}") for lang in langs] \
        + [Column(f"{t} {_metric_name(rows, t)}") for t in tasks] + [Column("target gain"), Column("replay loss")]
    table = Summary(f"lm-eval on {len(rows)} checkpoint(s); * target domain; gain/loss in nats/token vs {rows[0].label}",
                    cols,
                    extra={**payload, "json": str(out_dir / JSON_NAME)})
    fmt = lambda v: "" if v is None else f"{v:+.4f}"  # noqa: E731
    for r in rows:
        table.add(r.label, *[(f"{r.ppl[d]:.1f}" if r.ppl[d] >= 100 else f"{r.ppl[d]:.3f}") if d in r.ppl else ""
                             for d in domains],
                  *[f"{r.mc[lang]:.3f}" if lang in r.mc else "" for lang in langs],
                  *[f"{h[1]:.4g}" if (h := headline(r.tasks.get(t, {}))) else "" for t in tasks],
                  fmt(r.gain), fmt(r.replay_loss))
    emit_summary(table, as_json)
    return payload


def _metric_name(rows: list[Row], task: str) -> str:
    for r in rows:
        if h := headline(r.tasks.get(task, {})):
            return h[0]
    return ""


def plot(rows: list[Row], out_dir: Path, title: str) -> Path:
    """Target gain (y) against replay loss (x), one labelled point per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5), dpi=100)
    xs = [r.replay_loss or 0.0 for r in rows]
    ys = [r.gain or 0.0 for r in rows]
    ax.plot(xs, ys, "-o", color="tab:blue", lw=1)
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set(xlabel="replay loss (nats/token, higher = more forgetting)",
           ylabel="target gain (nats/token, higher = better)", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = out_dir / PNG_NAME
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)
    return out


def track(folder, rows: list[Row], files: list[Path]) -> list[str]:
    """Mirror the numbers (``eval/ppl/<domain>``, ``eval/mc_acc/<lang>``, ``eval/target_gain``,
    ``eval/replay_loss`` at step = checkpoint iteration) and the files to the configured trackers; returns
    the names of the trackers that took them."""
    from experiment.train import trackers

    log_dir = folder.path / "logs"
    sinks = trackers.start(folder, log_dir, resume=True)
    if not sinks:
        return []
    for r in rows:
        values = {f"eval/ppl/{d}": v for d, v in r.ppl.items()} | {f"eval/mc_acc/{k}": v for k, v in r.mc.items()} \
            | {f"eval/{t}/{m}": v for t, ms in r.tasks.items() for m, v in ms.items()}
        if r.gain is not None:
            values["eval/target_gain"] = r.gain
        if r.replay_loss is not None:
            values["eval/replay_loss"] = r.replay_loss
        trackers.emit(sinks, r.iteration, values)
    for sink in list(sinks):
        for f in files:
            trackers.guard(sinks, sink, "artifact", f)
    names = [s.name for s in sinks]
    trackers.finish(sinks, "finished")
    return names
