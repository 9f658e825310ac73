"""One way for every command to report its result: a table on stdout, or ``--json`` for scripts.

Why: results are what a user pipes or reads after the run, progress and logs are not; so results go to
stdout and everything else to stderr. The table and the JSON are rendered from the same rows, so they
cannot disagree, and long names fold onto a second line instead of being cut at narrow terminals.
Rates are over the command's wall time (from the process's start when run as ``experiment``), the time
a user waits, not an internal timer.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

_command_start: float | None = None  # time.monotonic() when the command started
_pinned = False  # the start is the process's (the ``experiment`` executable): later marks keep it


def _process_start() -> float | None:
    """time.monotonic() of this process's start (interpreter start-up and imports included), or None."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, ticks after boot
        since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.monotonic() - since_start


def start_command(from_process_start: bool = False) -> None:
    """Mark the command's start: the process's start for the ``experiment`` executable, else now (a
    command invoked inside another program, e.g. a test's CliRunner)."""
    global _command_start, _pinned
    if from_process_start:
        _command_start, _pinned = _process_start() or time.monotonic(), True
    elif not _pinned:
        _command_start = time.monotonic()


def command_seconds(fallback_start: float | None = None) -> float:
    """Wall seconds since the command started; ``fallback_start`` (a time.monotonic()) when none was marked."""
    start = _command_start if _command_start is not None else fallback_start
    return time.monotonic() - (start if start is not None else time.monotonic())


def command_started() -> bool:
    return _command_start is not None


@dataclass
class Column:
    name: str
    fmt: Callable[[Any], str] = str
    numeric: bool = False


def count(v) -> str:
    return "-" if v is None else f"{v:,}"


def fixed(digits: int) -> Callable[[Any], str]:
    return lambda v: "-" if v is None else f"{v:,.{digits}f}"


def percent(v) -> str:
    return "-" if v is None else f"{v:.1f}%"


@dataclass
class Summary:
    """A result table: ``rows`` hold raw values (JSON numbers), ``columns`` say how each is shown."""

    title: str
    columns: list[Column]
    rows: list[list] = field(default_factory=list)
    total: list | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-only fields (and the caption's, if ``caption``)
    caption: str | None = None

    def add(self, *values) -> None:
        self.rows.append(list(values))

    def cells(self, row: list) -> list[str]:
        return [c.fmt(v) for c, v in zip(self.columns, row)]

    def to_dict(self) -> dict:
        names = [c.name for c in self.columns]
        out = {"title": self.title, "rows": [dict(zip(names, r)) for r in self.rows]}
        if self.total is not None:
            out["total"] = dict(zip(names, self.total))
        out.update(self.extra)
        return out

    def table(self):
        from rich.table import Table

        table = Table(title=self.title, caption=self.caption)
        for c in self.columns:
            table.add_column(c.name, justify="right" if c.numeric else "left", overflow="fold")
        for r in self.rows:
            table.add_row(*self.cells(r))
        if self.total is not None:
            table.add_row(*self.cells(self.total), style="bold")
        return table


def emit(summary: Summary, as_json: bool = False, console=None) -> None:
    """The summary on stdout: JSON (one object) or the table (``console``: a stdout console, for tests)."""
    if as_json:
        sys.stdout.write(json.dumps(summary.to_dict(), ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()
        return
    if console is None:
        from rich.console import Console

        console = Console()
    console.print(summary.table())
