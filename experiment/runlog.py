"""The run's log files as the runner writes them and the lockfile reads them: names and one reader.

Kept below both ``experiment.train`` (which writes the logs) and ``experiment.lock`` (which records them),
so neither reaches into the other.
"""

from __future__ import annotations

import json
from pathlib import Path

from experiment.errors import KitError

LOGS = "logs"
LOSSES = "losses.jsonl"
EVALS = "eval.jsonl"
STATUS = "run_status.json"  # the runner's live status, rewritten atomically every few seconds and at the end


class RunLogError(KitError, ValueError):
    """A log file of a run is damaged (a line that is not JSON)."""


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL log ([] when the file does not exist); a damaged line names file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise RunLogError(f"{path}: line {n}: not JSON ({err.msg}); the run's log is damaged") from err
    return rows


def read_losses(log_dir: str | Path) -> list[dict]:
    """The per-step records of ``log_dir/losses.jsonl``, in order."""
    return read_jsonl(Path(log_dir) / LOSSES)


def read_status(log_dir: str | Path) -> dict:
    """``log_dir/run_status.json`` ({} when the run has not written one); a damaged file names itself."""
    path = Path(log_dir) / STATUS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunLogError(f"{path}: not JSON ({err.msg}); the run's status file is damaged") from err
