"""Per-shard Megatron weights from a folder's mixing rules (pure functions, no file I/O but `plan_folder`).

Two ways to say what a step is made of:

* **ratio mode** (seed 002, ALLaM's ``data_ratio_from_file.py``; also seed 000's per-source scaling): a
  multiplier per domain (``data_ratio.json``, flat or per language) and a selection probability per language
  (``lang_prob.json``). Within a language a shard's weight is proportional to ``tokens x multiplier`` and the
  language's shards together carry its probability.
* **proportion mode** (OLMo 2 Dolmino table, seed 003): ``data.target_proportions`` gives each domain's
  share of the token budget; within a domain shards are weighted by their tokens.

Weights are **per token** and sum to 1. Megatron's ``GPTDataset`` packs documents into samples of exactly
``seq_length`` tokens, so a per-token weight is also the per-sample weight ``BlendedDataset`` draws with.
The arithmetic of ratio mode follows the seed script operation for operation (numpy's ``bincount`` adds in
input order, like the script's ``+=``), so the same inputs give the same floats; where that script is silent
or breaks, the planner reports a ``Problem`` instead.

Shards travel as columns (``ShardTable``), not one object each: a 100,000-shard plan is a few list and numpy
operations per column, and the per-rule work happens once per (language, domain) pair.
"""

from __future__ import annotations

from enum import StrEnum

import gc
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy
import orjson

from experiment.folder import FolderError, Problem, TrainingFolder
from experiment.mixture import inputs

#: Megatron's BlendedDataset indexes its datasets with int16 (``assert len(datasets) < 32767``).
MAX_BLEND_DATASETS = 32766

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_BUDGET = re.compile(r"^\s*(?P<num>[0-9][0-9_,]*(?:\.[0-9]+)?)\s*(?P<unit>[KMBGT]?)\s*$", re.IGNORECASE)
SCALED_BUDGET = "scaled"
#: Published share tables are rounded (OLMo 2's Dolmino shares sum to 1.0001): within this, normalise and say so.
PROPORTION_TOLERANCE = 1e-3


class MixtureError(FolderError):
    """The mixture cannot be planned; ``problems`` says why, each naming file and entry. ``plan`` holds what
    was computed anyway when the rules themselves were fine (e.g. a blend too large for Megatron)."""

    def __init__(self, problems: list[Problem], plan: "MixturePlan | None" = None):
        super().__init__(problems)
        self.plan = plan


class Shard(NamedTuple):
    """One tokenized shard as the planner sees it (from a data signature)."""

    prefix: str  # absolute Megatron prefix, no .bin/.idx
    language: str
    domain: str
    subdomain: str
    tokens: int
    bin_bytes: int = 0
    idx_bytes: int = 0
    signature: str = ""  # the signature file that lists it, for messages

    @property
    def name(self) -> str:
        return self.prefix.rpartition("/")[2]


@dataclass(frozen=True)
class ShardTable:
    """Shards as columns, one row per shard (what the planner works on)."""

    prefix: list[str]
    name: list[str]
    language: list[str]
    domain: list[str]
    subdomain: list[str]
    tokens: list[int]
    bin_bytes: list[int]
    idx_bytes: list[int]
    signature: list[str]

    @classmethod
    def from_shards(cls, shards: Iterable[Shard]) -> "ShardTable":
        rows = list(shards)
        cols = [list(c) for c in zip(*rows)] if rows else [[] for _ in Shard._fields]
        prefix = cols[0]
        return cls(prefix, [p.rpartition("/")[2] for p in prefix], *cols[1:])

    @classmethod
    def concat(cls, tables: Sequence["ShardTable"]) -> "ShardTable":
        if len(tables) == 1:
            return tables[0]
        return cls(*([x for t in tables for x in getattr(t, f)] for f in _TABLE_FIELDS))

    def __len__(self) -> int:
        return len(self.prefix)

    def take(self, rows: Sequence[int]) -> "ShardTable":
        return ShardTable(*([col[i] for i in rows] for col in (getattr(self, f) for f in _TABLE_FIELDS)))

    def row(self, i: int) -> Shard:
        return Shard(self.prefix[i], self.language[i], self.domain[i], self.subdomain[i], self.tokens[i],
                     self.bin_bytes[i], self.idx_bytes[i], self.signature[i])

    def __iter__(self):
        return map(Shard._make, zip(self.prefix, self.language, self.domain, self.subdomain, self.tokens,
                                    self.bin_bytes, self.idx_bytes, self.signature))


_TABLE_FIELDS = ("prefix", "name", "language", "domain", "subdomain", "tokens", "bin_bytes", "idx_bytes", "signature")


class MixtureMode(StrEnum):
    """How the budget is split: multipliers x language probabilities (seed 002), or fixed domain shares."""

    RATIO = "ratio"
    PROPORTIONS = "proportions"


@dataclass(frozen=True)
class MixtureSpec:
    """The mixing rules, already read from their files; file names are kept for messages only."""

    data_ratio: Mapping[str, Any]
    lang_prob: Mapping[str, Any] | None = None
    exclude: Sequence[str] = ()
    budget_tokens: float = 0
    budget_from: str = ""
    target_proportions: Mapping[str, float] | None = None
    max_epochs: float | None = None
    optional: Sequence[str] = ()
    normalize_lang_prob: bool = False
    seq_length: int = 1
    ratio_file: str = "data_ratio.json"
    lang_prob_file: str = "lang_prob.json"
    exclude_file: str = "exclude_iterator.json"
    config_file: str = "experiment.toml"


class MixtureEntry(NamedTuple):
    """One kept shard: what it holds, its per-token weight, and what a run of ``budget`` tokens sees of it."""

    prefix: str
    name: str
    language: str
    domain: str
    subdomain: str
    tokens: int
    multiplier: float
    weight: float
    tokens_seen: float
    bin_bytes: int = 0
    idx_bytes: int = 0

    @property
    def epochs(self) -> float:
        return self.tokens_seen / self.tokens if self.tokens else 0.0


class Dropped(NamedTuple):
    """A shard listed in a signature that the plan leaves out, and why."""

    name: str
    language: str
    domain: str
    tokens: int
    reason: str


@dataclass(frozen=True)
class MixturePlan:
    """The per-shard weights (in Megatron's blend order) and everything the outputs and the report need."""

    mode: MixtureMode
    table: ShardTable  # the kept shards, in blend order
    multiplier: list[float]
    weight: list[float]
    budget_tokens: float
    budget_from: str
    seq_length: int
    dropped: tuple[Dropped, ...] = ()
    notes: tuple[str, ...] = ()
    target_proportions: Mapping[str, float] | None = field(default=None)

    @cached_property
    def entries(self) -> tuple[MixtureEntry, ...]:
        t, b = self.table, self.budget_tokens
        return tuple(map(MixtureEntry._make, zip(t.prefix, t.name, t.language, t.domain, t.subdomain, t.tokens,
                                                 self.multiplier, self.weight, [w * b for w in self.weight],
                                                 t.bin_bytes, t.idx_bytes)))

    def megatron_blend(self) -> tuple[list[str], list[float]]:
        """``(prefixes, weights)`` exactly as ``BlendedMegatronDatasetConfig(blend=...)`` takes them."""
        return list(self.table.prefix), list(self.weight)

    def domains(self) -> dict[str, list[str]]:
        """Domain -> its prefixes (sorted by domain), for per-domain eval loss in the runner."""
        return _group(self.table.domain, self.table.prefix)

    def languages(self) -> dict[str, list[str]]:
        return _group(self.table.language, self.table.prefix)

    def sources(self) -> dict[str, list[str]]:
        """The held-out sets a run reports loss for: per domain, or per ``language/domain`` when the mix
        has several languages (a new language and its replay data often share domain names)."""
        if len(set(self.table.language)) > 1:
            return _group([f"{lang}/{dom}" for lang, dom in zip(self.table.language, self.table.domain)],
                          self.table.prefix)
        return self.domains()

    @property
    def total_weight(self) -> float:
        return math.fsum(self.weight)

    def expected_samples(self, entry: MixtureEntry) -> float:
        """How many ``seq_length`` samples of this shard a run of ``budget_tokens`` draws, on average."""
        return entry.weight * self.budget_tokens / self.seq_length


def _group(keys: list[str], values: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in zip(keys, values):
        out.setdefault(k, []).append(v)
    return dict(sorted(out.items()))


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


def _ratio_problems(spec: MixtureSpec) -> list[Problem]:
    return inputs.ratio_problems(spec.data_ratio, spec.ratio_file)


def _lang_prob_problems(spec: MixtureSpec) -> list[Problem]:
    out, f = [], spec.lang_prob_file
    if spec.lang_prob is None:
        return out
    out = inputs.lang_prob_problems(spec.lang_prob, f)
    if out:
        return out
    total = math.fsum(spec.lang_prob.values())
    if total <= 0:
        out.append(Problem(f, "", "probabilities sum to 0", "give at least one language a probability > 0"))
    elif abs(total - 1.0) > 1e-6 and not spec.normalize_lang_prob:
        out.append(Problem(f, "", f"probabilities sum to {total:.6g}, not 1",
                           f"divide each by {total:.6g}, or set data.normalize_lang_prob = true in "
                           "experiment.toml to let the kit do it (as seed 002's script did silently)"))
    return out


def _proportion_problems(spec: MixtureSpec) -> list[Problem]:
    out, f = [], spec.config_file
    assert spec.target_proportions is not None
    total = math.fsum(spec.target_proportions.values())
    for k, v in spec.target_proportions.items():
        if v < 0:
            out.append(Problem(f, f"data.target_proportions.{k}", f"share {v} is negative", "use a share >= 0"))
    if abs(total - 1.0) > PROPORTION_TOLERANCE:
        out.append(Problem(f, "data.target_proportions", f"shares sum to {total:.6g}, not 1",
                           f"divide each by {total:.6g}"))
    if spec.data_ratio:
        out.append(Problem(spec.ratio_file, "", "has multipliers but data.target_proportions is also set",
                           "use one: empty data_ratio.json ({}) for proportions, or drop target_proportions"))
    if spec.lang_prob is not None:
        out.append(Problem(f, "data.lang_prob", "is set but data.target_proportions fixes every domain's share",
                           "remove data.lang_prob, or drop target_proportions"))
    return out


def _multiplier(data_ratio: Mapping[str, Any], per_language: bool, lang: str, domain: str) -> Any:
    table = data_ratio.get(lang) if per_language else data_ratio
    if table is None:
        return None
    return table.get(domain)


def _empty(mode: MixtureMode, spec: MixtureSpec) -> MixturePlan:
    return MixturePlan(mode, ShardTable.from_shards([]), [], [], spec.budget_tokens, spec.budget_from,
                       spec.seq_length)


def _apply_excludes(t: ShardTable, spec: MixtureSpec, problems: list[Problem]) -> tuple[list[int], list[Dropped]]:
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


def _check_budget_and_weights(plan: MixturePlan, spec: MixtureSpec, problems: list[Problem]) -> None:
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


def plan_ratio(t: ShardTable, spec: MixtureSpec, problems: list[Problem]) -> MixturePlan:
    """Seed 002's rule: w = p(lang) * tc*m / sum over the language's kept shards of tc*m."""
    problems.extend(_ratio_problems(spec))
    problems.extend(_lang_prob_problems(spec))
    if problems:
        return _empty(MixtureMode.RATIO, spec)
    per_language = is_per_language(spec.data_ratio)
    optional = set(spec.optional)
    rows, dropped = _apply_excludes(t, spec, problems)
    notes: list[str] = []

    # seed 002: lang_prob divided by its sum first. The kit sums exactly (fsum), so the file's key order
    # cannot change a bit of the result; seed 002 summed in key order (the same float whenever that is exact)
    lang_prob = dict(sorted(spec.lang_prob.items())) if spec.lang_prob is not None else None
    if lang_prob is not None:
        total = math.fsum(lang_prob.values())
        lang_prob = {k: v / total for k, v in lang_prob.items()}

    # every rule is decided once per (language, domain) pair, then applied to the rows
    pairs = list(zip(t.language, t.domain))
    verdict: dict[tuple[str, str], Any] = {}  # pair -> multiplier, or the reason it is left out
    for pair in set(pairs[i] for i in rows):
        lang, domain = pair
        m = _multiplier(spec.data_ratio, per_language, lang, domain)
        if m is None:
            verdict[pair] = "domain not in data_ratio.json"
        elif m == 0:
            verdict[pair] = "multiplier 0"
        elif lang_prob is not None and lang not in lang_prob:
            verdict[pair] = "language not in lang_prob.json"
        else:
            verdict[pair] = m
    kept, missing_ratio, missing_lang = [], {}, {}
    for i in rows:
        v = verdict[pairs[i]]
        if type(v) is str:
            dropped.append(Dropped(t.name[i], t.language[i], t.domain[i], t.tokens[i], v))
            if v == "domain not in data_ratio.json":
                missing_ratio[pairs[i]] = missing_ratio.get(pairs[i], 0) + 1
            elif v == "language not in lang_prob.json":
                missing_lang[t.language[i]] = missing_lang.get(t.language[i], 0) + 1
        else:
            kept.append(i)

    for (lang, domain), n in sorted(missing_ratio.items()):
        key = f"{lang}.{domain}" if per_language else domain
        if domain in optional or key in optional or (per_language and lang in optional
                                                      and lang not in spec.data_ratio):
            notes.append(f"{n} shard(s) of {key} left out: not in {spec.ratio_file} (marked optional)")
            continue
        where = (f"language {lang!r} has no entry" if per_language and lang not in spec.data_ratio
                 else f"domain {domain!r} has no multiplier" + (f" under {lang!r}" if per_language else ""))
        problems.append(Problem(spec.ratio_file, key, f"{where}, but the data has {n} shard(s) of it "
                                "(seed 002's script dropped them without a word)",
                                f"add {key!r} with a multiplier (0 to leave it out), or list it in "
                                "data.optional_domains"))
    for lang, n in sorted(missing_lang.items()):
        if lang in optional:
            notes.append(f"{n} shard(s) of language {lang!r} left out: not in {spec.lang_prob_file} (optional)")
            continue
        problems.append(Problem(spec.lang_prob_file, lang, f"language {lang!r} has {n} shard(s) but no "
                                "probability (seed 002's script crashed with KeyError)",
                                f"add {lang!r} with a probability (0 to leave it out), or list it in "
                                "data.optional_domains"))

    # data_ratio entries that match no data
    present = set(pairs)
    present_domains = {d for _, d in present}
    present_langs = {lang for lang, _ in present}
    if per_language:
        for lang, table in spec.data_ratio.items():
            if lang not in present_langs:
                if lang not in optional:
                    problems.append(Problem(spec.ratio_file, lang, f"language {lang!r} has no shards in the data",
                                            "remove it, correct the name, or list it in data.optional_domains"))
                continue
            for domain in table:
                key = f"{lang}.{domain}"
                if (lang, domain) not in present and domain not in optional and key not in optional:
                    problems.append(Problem(spec.ratio_file, key, f"domain {domain!r} of {lang!r} has no shards "
                                            "in the data", "remove it, correct the name, or list it in "
                                            "data.optional_domains"))
    else:
        for domain in spec.data_ratio:
            if domain not in present_domains and domain not in optional:
                problems.append(Problem(spec.ratio_file, domain, f"domain {domain!r} has no shards in the data",
                                        "remove it, correct the name, or list it in data.optional_domains"))

    # the language groups, in order of first appearance (seed 002's output order)
    group_of = (lambda i: t.language[i]) if lang_prob is not None else (lambda i: "*")
    codes: dict[str, int] = {}
    code = [codes.setdefault(group_of(i), len(codes)) for i in kept]

    # languages whose probability finds no kept shard: seed 002 left the weights summing below 1
    if lang_prob is not None:
        lost = [lang for lang, p in lang_prob.items() if p > 0 and lang not in codes]
        for lang in lost:
            if lang in optional:
                notes.append(f"language {lang!r} has no kept shards; its probability {lang_prob[lang]:.6g} "
                             "goes to the other languages in proportion (marked optional)")
                continue
            problems.append(Problem(
                spec.lang_prob_file, lang,
                f"language {lang!r} has probability {lang_prob[lang]:.6g} but no kept shards (all excluded, "
                "multiplier 0, or none in the data); seed 002's weights would sum to less than 1",
                "set its probability to 0, un-exclude shards, or list it in data.optional_domains to give "
                "its share to the other languages"))
        if any(lang in optional for lang in lost):
            kept_mass = sum(p for lang, p in lang_prob.items() if lang in codes)
            if kept_mass > 0:
                lang_prob = {k: (v / kept_mass if k in codes else 0.0) for k, v in lang_prob.items()}
    if not kept and not problems:
        problems.append(Problem(spec.ratio_file, "", "no shard is left to train on",
                                "check data_ratio.json, lang_prob.json and the exclude list"))
    if problems or not kept:
        return _empty(MixtureMode.RATIO, spec)

    # w = tc*m / (sum of the language's tc*m) * p, with seed 002's operation order
    order = sorted(range(len(kept)), key=code.__getitem__)  # stable: grouped by language, names sorted within
    kept = [kept[j] for j in order]
    code_arr = numpy.asarray([code[j] for j in order], dtype=numpy.int64)
    mult = [verdict[pairs[i]] for i in kept]
    tm = numpy.asarray([t.tokens[i] for i in kept], dtype=numpy.float64) * numpy.asarray(mult, dtype=numpy.float64)
    sampled = numpy.bincount(code_arr, weights=tm, minlength=len(codes))  # in row order, like `+=`
    group_p = numpy.asarray([lang_prob[g] if lang_prob is not None else 1.0 for g in codes], dtype=numpy.float64)
    w = tm / sampled[code_arr] * group_p[code_arr]
    zero = numpy.flatnonzero(w <= 0)
    for j in zero:
        i = kept[j]
        dropped.append(Dropped(t.name[i], t.language[i], t.domain[i], t.tokens[i],
                               "weight 0 (language probability 0)"))
    if zero.size:
        keep = numpy.flatnonzero(w > 0)
        kept, mult, w = [kept[j] for j in keep], [mult[j] for j in keep], w[keep]
    result = MixturePlan(MixtureMode.RATIO, t.take(kept), [float(m) for m in mult], w.tolist(), spec.budget_tokens,
                         spec.budget_from, spec.seq_length, tuple(sorted(dropped)), tuple(notes))
    _check_budget_and_weights(result, spec, problems)
    return result


def plan_proportions(t: ShardTable, spec: MixtureSpec, problems: list[Problem]) -> MixturePlan:
    """OLMo 2 / seed 003: each domain gets its share of the budget; within it, shards weigh by tokens."""
    problems.extend(_proportion_problems(spec))
    targets = dict(spec.target_proportions or {})
    optional = set(spec.optional)
    rows, dropped = _apply_excludes(t, spec, problems)
    notes: list[str] = []
    kept = []
    for i in rows:
        d = t.domain[i]
        if d not in targets:
            dropped.append(Dropped(t.name[i], t.language[i], d, t.tokens[i], "domain not in target_proportions"))
        elif targets[d] == 0:
            dropped.append(Dropped(t.name[i], t.language[i], d, t.tokens[i], "share 0"))
        else:
            kept.append(i)
    for domain in sorted({d.domain for d in dropped if d.reason == "domain not in target_proportions"}):
        if domain in optional:
            notes.append(f"domain {domain!r} left out: not in data.target_proportions (marked optional)")
        else:
            problems.append(Problem(spec.config_file, f"data.target_proportions.{domain}",
                                    f"the data has domain {domain!r} but it has no share",
                                    "give it a share (0 to leave it out), or list it in data.optional_domains"))
    present = {t.domain[i] for i in kept}
    for domain in [d for d, share in targets.items() if share > 0 and d not in present]:
        if domain in optional:
            notes.append(f"domain {domain!r} has no kept shards; its share goes to the others in proportion")
        else:
            problems.append(Problem(spec.config_file, f"data.target_proportions.{domain}",
                                    f"domain {domain!r} has a share but no kept shards in the data",
                                    "correct the name, add its data, or list it in data.optional_domains"))
    total = math.fsum(targets.values())
    if total > 0 and abs(total - 1.0) > 1e-12 and abs(total - 1.0) <= PROPORTION_TOLERANCE:
        notes.append(f"data.target_proportions sum to {total:.6g}; each share was divided by that sum")
    mass = math.fsum(targets[d] for d in present)  # exactly rounded: independent of the set's order
    if not kept or mass <= 0:
        if not problems:
            problems.append(Problem(spec.config_file, "data.target_proportions", "no shard is left to train on",
                                    "check the shares and the exclude list"))
        return _empty(MixtureMode.PROPORTIONS, spec)
    domain_tokens: dict[str, int] = {}
    domain_count: dict[str, int] = {}
    for i in kept:
        domain_tokens[t.domain[i]] = domain_tokens.get(t.domain[i], 0) + t.tokens[i]
        domain_count[t.domain[i]] = domain_count.get(t.domain[i], 0) + 1
    w = []
    for i in kept:
        d = t.domain[i]
        share = targets[d] / mass
        w.append(share * t.tokens[i] / domain_tokens[d] if domain_tokens[d] else share / domain_count[d])
    result = MixturePlan(MixtureMode.PROPORTIONS, t.take(kept), [1.0] * len(kept), w, spec.budget_tokens, spec.budget_from,
                         spec.seq_length, tuple(sorted(dropped)), tuple(notes), targets)
    if not problems:
        _check_budget_and_weights(result, spec, problems)
    return result


def duplicate_problems(t: ShardTable) -> list[Problem]:
    """Shard names are unique across signatures (``t`` is sorted by name, so duplicates are neighbours)."""
    out = []
    names = t.name
    for i in range(1, len(names)):
        if names[i] == names[i - 1]:
            out.append(Problem(t.signature[i], names[i], f"shard name listed twice (also in {t.signature[i - 1]})",
                               "list each shard once; shard names must be unique across signatures"))
    return out


def as_table(shards: Iterable[Shard] | ShardTable) -> ShardTable:
    return shards if isinstance(shards, ShardTable) else ShardTable.from_shards(shards)


def scaled_budget(shards: Iterable[Shard] | ShardTable, spec: MixtureSpec) -> float:
    """Seed 000's total: the sum of each kept shard's tokens x its multiplier (so a shard sees tc x m)."""
    t = as_table(shards)
    per_language = is_per_language(spec.data_ratio)
    excluded = {exclude_keys(e) for e in spec.exclude}
    total: list[float] = []
    for nm, lang, domain, tokens in zip(t.name, t.language, t.domain, t.tokens):
        if nm in excluded or _stem(nm) in excluded:
            continue
        m = _multiplier(spec.data_ratio, per_language, lang, domain)
        if _number(m) and m > 0:
            total.append(tokens * m)
    return math.fsum(total)


def whole_tokens(tokens: float) -> int:
    """Round a token count up to a whole token (seed 000), ignoring float noise below 1/1000 of a token."""
    return math.ceil(round(tokens, 3))


def plan(shards: Iterable[Shard] | ShardTable, spec: MixtureSpec) -> MixturePlan:
    """Plan the mixture, or raise ``MixtureError`` with every problem. Input order does not matter."""
    with _no_gc():
        return _plan(as_table(shards), spec)


def _plan(t: ShardTable, spec: MixtureSpec) -> MixturePlan:
    names = t.name
    if len(set(names)) == len(names):
        order = sorted(range(len(names)), key=names.__getitem__)  # seed 002 sorted by name
    else:
        order = sorted(range(len(names)), key=lambda i: (names[i], t.prefix[i], t.signature[i]))
    t = t.take(order)
    problems = duplicate_problems(t)
    if spec.target_proportions is not None:
        result = plan_proportions(t, spec, problems)
    else:
        result = plan_ratio(t, spec, problems)
    if problems:
        raise MixtureError(problems, result if result.weight else None)
    return result


# ---- reading a folder (the only I/O here) -------------------------------------------------------------

def read_exclude(raw: Any, file: str) -> list[str]:
    """``[name, ...]`` or seed 002's ``{"exclude_iterator_name": [name, ...]}``."""
    names, problems = inputs.read_exclude_list(raw, file)
    if problems:
        raise MixtureError(problems)
    return names


_TEXT = ("prefix", "language", "domain", "subdomain")
_COUNTS = ("tokens", "bin_bytes", "idx_bytes")


@contextmanager
def _no_gc():
    """Pause Python's cycle collector while building large acyclic structures (a JSON document of 100,000
    shards): each collection would walk the whole heap for nothing. Reference counting still frees memory."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_signature_shards(path: Path) -> ShardTable:
    """The shards of one data signature, with absolute prefixes.

    Reads the JSON with orjson and takes the fields the planner uses column by column, checking their types
    and signs column-wise (several times faster than a full pydantic validation of a 100,000-shard
    signature); if anything is off, the full ``experiment.data.signature.read`` runs, whose error names the
    entry and the field."""
    from experiment.data.signature import DataSignature, read

    try:
        with _no_gc():
            raw = orjson.loads(path.read_bytes())
            entries = raw["shards"]
            cols = {f: [e[f] for e in entries] for f in _TEXT + _COUNTS}
            del entries
        ok = (isinstance(raw["root"], str) and all(set(map(type, cols[f])) <= {str} for f in _TEXT)
              and all(set(map(type, cols[f])) <= {int} and min(cols[f], default=0) >= 0 for f in _COUNTS))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        read(path)  # raises pydantic's ValidationError, naming the entry and the field
        raise ValueError(f"{path}: not a data signature the planner can read")
    root = DataSignature.model_construct(root=raw["root"]).root_path(path)
    head = str(root).rstrip("/") + "/"
    rel = cols["prefix"]
    return ShardTable([head + p for p in rel], [p.rpartition("/")[2] for p in rel], cols["language"],
                      cols["domain"], cols["subdomain"], cols["tokens"], cols["bin_bytes"], cols["idx_bytes"],
                      [str(path)] * len(rel))


def shards_from_signatures(folder: TrainingFolder) -> ShardTable:
    return ShardTable.concat([read_signature_shards(p) for p in folder.signature_paths])


def training_tokens(folder: TrainingFolder) -> tuple[int, str]:
    t, seq = folder.config.training, folder.config.model.seq_length
    if t.train_tokens is not None:
        return parse_budget(t.train_tokens), "training.train_tokens"
    assert t.train_iters is not None
    return t.train_iters * t.global_batch_size * seq, (
        f"training.train_iters {t.train_iters} x global_batch_size {t.global_batch_size} x seq_length {seq}")


def spec_from_folder(folder: TrainingFolder, shards: ShardTable | None = None) -> MixtureSpec:
    d = folder.config.data
    rel = lambda p: str(folder.resolve(p))  # noqa: E731
    cfg_file = str(folder.path / "experiment.toml")
    data_ratio = folder.read_json(d.data_ratio)
    lang_prob = folder.read_json(d.lang_prob) if d.lang_prob else None
    exclude = read_exclude(folder.read_json(d.exclude_iterator), rel(d.exclude_iterator)) if d.exclude_iterator else []
    spec = MixtureSpec(
        data_ratio=data_ratio, lang_prob=lang_prob, exclude=exclude,
        target_proportions=d.target_proportions, max_epochs=d.max_epochs,
        optional=tuple(getattr(d, "optional_domains", ()) or ()),
        normalize_lang_prob=bool(getattr(d, "normalize_lang_prob", False)),
        seq_length=folder.config.model.seq_length,
        ratio_file=rel(d.data_ratio), lang_prob_file=rel(d.lang_prob) if d.lang_prob else "lang_prob.json",
        exclude_file=rel(d.exclude_iterator) if d.exclude_iterator else "exclude_iterator.json",
        config_file=cfg_file,
    )
    if d.token_budget is None:
        budget, source = training_tokens(folder)
    elif d.token_budget.strip().lower() == SCALED_BUDGET:
        if shards is None:
            shards = shards_from_signatures(folder)
        budget, source = scaled_budget(shards, spec), "data.token_budget = scaled (sum of tokens x multiplier)"
    else:
        try:
            budget, source = parse_budget(d.token_budget), "data.token_budget"
        except ValueError as err:
            raise MixtureError([Problem(cfg_file, "data.token_budget", str(err), "write e.g. 50B")]) from None
    return MixtureSpec(**{**spec.__dict__, "budget_tokens": budget, "budget_from": source})


def plan_folder(folder: TrainingFolder) -> MixturePlan:
    """The folder's mixture; ``MixtureError`` lists every problem (files named, entries named)."""
    shards = shards_from_signatures(folder)
    return plan(shards, spec_from_folder(folder, shards))
