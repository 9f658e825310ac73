"""A tokenize run's report: each input's shard and counts, the run's times, the summary table.

Apart from the run itself so that ``tokenize_tasks`` can merge its tasks' reports into the same table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from experiment.summary import Summary


@dataclass
class ShardResult:
    input: Path
    prefix: Path
    docs: int
    sentences: int
    tokens: int
    input_bytes: int
    seconds: float
    skipped: bool = False
    empty_docs: int = 0


@dataclass
class TokenizeReport:
    backend_note: str
    shards: list[ShardResult] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # user + system of this process (all its threads) during the run; tasks: summed


def summary(report: TokenizeReport) -> Summary:
    """Per shard its tokens and share of the run's tokens (shards are encoded together: a per-shard rate
    would be false); the rate is over the command's wall time."""
    from experiment.summary import Column, Summary, count, fixed, percent

    tokens = sum(s.tokens for s in report.shards)
    new_tokens = sum(s.tokens for s in report.shards if not s.skipped)
    rate = new_tokens / report.seconds if report.seconds > 0 and new_tokens else None
    out = Summary(
        f"tokenized with {report.backend_note}",
        [Column("shard"), Column("docs", count, True), Column("tokens", count, True), Column("share", percent, True),
         Column("MB in", fixed(1), True), Column("status")],
        extra={"backend": report.backend_note, "wall_seconds": round(report.seconds, 3),
               "cpu_seconds": round(report.cpu_seconds, 3), "new_tokens": new_tokens,
               "tokens_per_second": round(rate) if rate else None},
        caption=f"{new_tokens:,} new tokens in {report.seconds:.2f} s wall"
                + (f" = {_rate_text(rate)}" if rate else "") + f", {report.cpu_seconds:.2f} CPU-s",
    )
    for s in report.shards:
        status = "skipped (done)" if s.skipped else ("ok" if not s.empty_docs else f"ok, {s.empty_docs} empty docs dropped")
        out.add(s.prefix.name, s.docs, s.tokens, 100 * s.tokens / tokens if tokens else 0.0, s.input_bytes / 1e6, status)
    out.total = ["total", sum(s.docs for s in report.shards), tokens, 100.0 if tokens else 0.0,
                 sum(s.input_bytes for s in report.shards) / 1e6, f"{report.seconds:.2f} s wall"]
    return out


def _rate_text(rate: float) -> str:
    return f"{rate / 1e6:.2f} M tokens/s" if rate >= 1e5 else f"{rate:,.0f} tokens/s"
