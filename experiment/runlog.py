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
SAVES = "saves.jsonl"  # one record per checkpoint save: time taken, and each file's hash (outlives retention)
ASIDE = "aside.jsonl"  # every checkpoint and log record a resume moved aside (never deleted), and why
ASIDE_DIR = "aside"  # under logs/: the log lines a resume cut, kept


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


def read_saves(log_dir: str | Path) -> list[dict]:
    """The records of ``log_dir/saves.jsonl`` in order; a torn line (a kill mid-append) is skipped."""
    path = Path(log_dir) / SAVES
    out = []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


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


def note_aside(log_dir: str | Path, entry: dict) -> None:
    """Append one record to ``logs/aside.jsonl``: what was moved aside, where to, and why (the lock lists them)."""
    import os

    Path(log_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(log_dir) / ASIDE, "a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_aside(log_dir: str | Path) -> list[dict]:
    """The records of ``logs/aside.jsonl`` ([] when nothing was ever moved aside)."""
    return read_jsonl(Path(log_dir) / ASIDE)


def free_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name.2``, ``name.3``, ... when taken: what is set aside never replaces what was."""
    target, n = Path(folder) / name, 1
    while target.exists():
        n += 1
        target = Path(folder) / f"{name}.{n}"
    return target


def keep_aside(path: Path, lines: list[str], why: str, resumed: int) -> Path | None:
    """Write log lines a resume drops from ``path`` to ``logs/aside/<name>.after-<resumed>[.n]`` (a free name,
    atomically) and note it; None when there is nothing to keep."""
    from experiment.atomic import write_atomic

    if not lines:
        return None
    path = Path(path)
    folder = path.parent / ASIDE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = free_path(folder, f"{path.name}.after-{resumed}")
    write_atomic(target, "".join(lines))
    note_aside(path.parent, {"what": "log", "from": path.name, "to": f"{ASIDE_DIR}/{target.name}",
                             "lines": len(lines), "why": why, "resumed_iteration": resumed})
    return target
