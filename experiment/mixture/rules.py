"""The rules both mixing modes share: budget syntax, exclude list, multiplier lookup, weight checks.

``mixture.weights`` applies them per mode; ``mixture.plan`` reads the budget and the excludes of a folder
with them, and ``experiment.train.runner`` parses ``--train-tokens`` with ``parse_budget`` (the one
token-count syntax of the kit).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy

from experiment.folder import Problem
from experiment.mixture.datatypes import Dropped, MixturePlan, MixtureSpec, Shard, ShardTable, as_table

#: Megatron's BlendedDataset indexes its datasets with int16 (``assert len(datasets) < 32767``).
MAX_BLEND_DATASETS = 32766

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_BUDGET = re.compile(r"^\s*(?P<num>[0-9][0-9_,]*(?:\.[0-9]+)?)\s*(?P<unit>[KMBGT]?)\s*$", re.IGNORECASE)


def parse_budget(text: str | int) -> int:
    """'50B' -> 50_000_000_000; also '1.5T', '300M', '12_000', plain integers."""
    if isinstance(text, int):
        return text
    m = _BUDGET.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a token count; write e.g. 50B, 1.5T, 300M or 123456")
    number = float(m["num"].replace("_", "").replace(",", "")) if "." in m["num"] else int(
        m["num"].replace("_", "").replace(",", ""))
    return int(round(number * _SUFFIX[m["unit"].upper()]))


def exclude_keys(entry: str) -> str:
    """The name an exclude entry means: no folder, no ``.bin``/``.idx`` (the seed needed ``.bin``)."""
    base = entry.strip().replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".bin", ".idx"):
        base = base.removesuffix(suffix)
    return base


def _stem(name: str) -> str:
    """The name without its ``_dc=.._sc=.._tc=..`` counts."""
    head, sep, _ = name.rpartition("_dc=")
    return head if sep else name


def is_per_language(data_ratio: Mapping[str, Any]) -> bool:
    return bool(data_ratio) and all(isinstance(v, Mapping) for v in data_ratio.values())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def multiplier_of(data_ratio: Mapping[str, Any], per_language: bool, lang: str, domain: str) -> Any:
    table = data_ratio.get(lang) if per_language else data_ratio
    if table is None:
        return None
    return table.get(domain)


def apply_excludes(t: ShardTable, spec: MixtureSpec, problems: list[Problem]) -> tuple[list[int], list[Dropped]]:
    """Rows kept after the exclude list; an entry may be a name or stem, with or without folder and .bin."""
    wanted = {exclude_keys(e): e for e in spec.exclude}
    if not wanted:
        return list(range(len(t))), []
    by_stem = any("_dc=" not in k for k in wanted)  # entries without counts match a shard's stem
    keys = [nm if nm in wanted or not by_stem else _stem(nm) for nm in t.name]
    hits = [i for i, k in enumerate(keys) if k in wanted]
    dropped = [Dropped(t.name[i], t.language[i], t.domain[i], t.tokens[i], f"excluded ({wanted[keys[i]]})")
               for i in hits]
    used = {keys[i] for i in hits}
    for key, raw in wanted.items():
        if key not in used:
            problems.append(Problem(spec.exclude_file, raw, "matches no shard in the data signatures",
                                    "correct the name (shard name with or without .bin), or remove the entry"))
    hit_set = set(hits)
    return [i for i in range(len(t)) if i not in hit_set], dropped


def check_budget_and_weights(plan: MixturePlan, spec: MixtureSpec, problems: list[Problem]) -> None:
    """No weight Megatron would never draw; no shard repeated beyond the cap; a blend Megatron can index."""
    n = len(plan.weight)
    if n > MAX_BLEND_DATASETS:
        problems.append(Problem(spec.config_file, "data.signatures",
                                f"{n} shards in one blend; Megatron's BlendedDataset indexes at most "
                                f"{MAX_BLEND_DATASETS} (int16) and would crash",
                                "merge small shards (`experiment data merge`) or exclude some"))
    if not n or not spec.budget_tokens:
        return
    w = numpy.asarray(plan.weight)
    samples = spec.budget_tokens / spec.seq_length
    rare = numpy.flatnonzero(w * samples < 1.0)
    if rare.size:
        worst = int(rare[numpy.argmin(w[rare])])
        problems.append(Problem(
            spec.ratio_file if spec.target_proportions is None else spec.config_file, plan.table.name[worst],
            f"{rare.size} shard(s) would get less than one {spec.seq_length}-token sample in a "
            f"{spec.budget_tokens:,.0f}-token run (smallest weight {w[worst]:.3g}), so Megatron would never "
            "draw them",
            "raise their domain's multiplier/share, exclude them, or merge them into larger shards"))
    if spec.max_epochs is not None:
        tokens = numpy.asarray(plan.table.tokens, dtype=numpy.float64)
        with numpy.errstate(divide="ignore", invalid="ignore"):
            epochs = numpy.where(tokens > 0, w * spec.budget_tokens / tokens, 0.0)
        over: dict[str, float] = {}
        for i in numpy.flatnonzero(epochs > spec.max_epochs * (1 + 1e-9)):
            d = plan.table.domain[i]
            over[d] = max(over.get(d, 0.0), float(epochs[i]))
        for domain, ep in sorted(over.items()):
            field_name = (f"data.target_proportions.{domain}" if spec.target_proportions is not None
                          else "data.max_epochs")
            problems.append(Problem(
                spec.config_file, field_name,
                f"domain {domain!r} would be repeated {ep:.3g} times to reach the "
                f"{spec.budget_tokens:,.0f}-token budget ({spec.budget_from}), above max_epochs={spec.max_epochs:g}",
                "lower the budget or that domain's share/multiplier, add data, or raise data.max_epochs"))


def scaled_budget(shards: Iterable[Shard] | ShardTable, spec: MixtureSpec) -> float:
    """Seed 000's total: the sum of each kept shard's tokens x its multiplier (so a shard sees tc x m)."""
    t = as_table(shards)
    per_language = is_per_language(spec.data_ratio)
    excluded = {exclude_keys(e) for e in spec.exclude}
    total: list[float] = []
    for nm, lang, domain, tokens in zip(t.name, t.language, t.domain, t.tokens):
        if nm in excluded or _stem(nm) in excluded:
            continue
        m = multiplier_of(spec.data_ratio, per_language, lang, domain)
        if _number(m) and m > 0:
            total.append(tokens * m)
    return math.fsum(total)


def whole_tokens(tokens: float) -> int:
    """Round a token count up to a whole token (seed 000), ignoring float noise below 1/1000 of a token."""
    return math.ceil(round(tokens, 3))
