"""The mixture planner's data: shards as columns, the mixing rules as read, the plan and its errors.

Shards travel as columns (``ShardTable``), not one object each: a 100,000-shard plan is a few list and numpy
operations per column, and the per-rule work happens once per (language, domain) pair. The types live apart
from the rules (``mixture.rules``, ``mixture.weights``) and from the reading of a folder (``mixture.plan``),
so each of those imports them without importing the others.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, NamedTuple

from experiment.folder import FolderError, Problem


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


def empty_plan(mode: MixtureMode, spec: MixtureSpec) -> MixturePlan:
    return MixturePlan(mode, ShardTable.from_shards([]), [], [], spec.budget_tokens, spec.budget_from,
                       spec.seq_length)


def as_table(shards: Iterable[Shard] | ShardTable) -> ShardTable:
    return shards if isinstance(shards, ShardTable) else ShardTable.from_shards(shards)


@contextmanager
def no_gc():
    """Pause Python's cycle collector while building large acyclic structures (a JSON document of 100,000
    shards): each collection would walk the whole heap for nothing. Reference counting still frees memory."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
