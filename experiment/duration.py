"""Scheduler walltimes (`HH:MM:SS`, `D-HH:MM`, ...) as seconds, for the folder schema and the runner alike."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_duration(text: str) -> int:
    """Seconds of a Slurm/PBS walltime: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"walltime {text!r} is not [D-]HH:MM:SS (or MM, MM:SS)")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        return int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    if c is not None:
        return int(a) * 3600 + int(b) * 60 + int(c)
    if b is not None:
        return int(a) * 60 + int(b)
    return int(a) * 60
