"""The run's log records (status, saves, chain, losses, evals, aside): their names, one reader and writer each.

Kept below both ``experiment.train`` (which writes the logs) and ``experiment.lock`` (which records them),
so neither reaches into the other. No other module names these files: ``tests/test_records.py`` fails when one
does, so a record's format changes in one place (two readers of ``run_status.json`` drifting apart is how a
lock once described a run that did not train).
"""

from __future__ import annotations

import json
from pathlib import Path

from experiment.errors import KitError

LOGS = "logs"
LOSSES = "losses.jsonl"
EVALS = "eval.jsonl"
STATUS = "run_status.json"  # the runner's live status, rewritten atomically every few seconds and at the end
CHAIN = "chain.jsonl"  # a scheduled run's submissions and segment begin/first_step/end records
SAVES = "saves.jsonl"  # one record per checkpoint save: time taken, and each file's hash (outlives retention)
ASIDE = "aside.jsonl"  # every checkpoint and log record a resume moved aside (never deleted), and why
ASIDE_DIR = "aside"  # under logs/: the log lines a resume cut, kept
LOCK = "run.lock.json"  # in the training folder: written by launch.finish, read by lock.lockfile


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


def _read_tolerant(path: Path) -> list[dict]:
    """The records of an append-only log, in order; a torn line (a kill mid-append) is skipped."""
    out = []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _append(path: Path, record: dict, *, sync: bool = False) -> None:
    """One JSON line appended (``sync``: fsync'ed, for records a crash must not lose)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        if sync:
            fh.flush()
            os.fsync(fh.fileno())


def read_saves(log_dir: str | Path) -> list[dict]:
    """The records of ``log_dir/saves.jsonl`` in order; a torn line (a kill mid-append) is skipped."""
    return _read_tolerant(Path(log_dir) / SAVES)


def append_save(log_dir: str | Path, record: dict) -> None:
    """One checkpoint save's record (iteration, seconds, folder, time, file hashes) appended to saves.jsonl."""
    _append(Path(log_dir) / SAVES, record)


def read_chain(log_dir: str | Path) -> list[dict]:
    """The events of ``log_dir/chain.jsonl`` in order; a torn line is skipped."""
    return _read_tolerant(Path(log_dir) / CHAIN)


def append_chain(log_dir: str | Path, event: dict) -> None:
    """One chain event appended to chain.jsonl with its time, fsync'ed (one writer at a time: the CLI, then
    each job)."""
    import time

    _append(Path(log_dir) / CHAIN, {**event, "time": round(time.time(), 3)}, sync=True)


def read_losses(log_dir: str | Path, *, strict: bool = True) -> list[dict]:
    """The per-step records of ``log_dir/losses.jsonl``, in order (``strict=False``: a torn line, as a kill
    mid-append leaves, is skipped instead of named)."""
    path = Path(log_dir) / LOSSES
    return read_jsonl(path) if strict else _read_tolerant(path)


def read_evals(log_dir: str | Path) -> list[dict]:
    """The held-out evaluation records of ``log_dir/eval.jsonl``, in order."""
    return read_jsonl(Path(log_dir) / EVALS)


def status_path(log_dir: str | Path) -> Path:
    """Where the run's status lives (for messages; read and write it with ``read_status``/``write_status``)."""
    return Path(log_dir) / STATUS


def read_status(log_dir: str | Path, *, strict: bool = True) -> dict:
    """``log_dir/run_status.json`` ({} when the run has not written one); a damaged file names itself
    (``strict=False``: {} instead, for the live views that show what they can)."""
    path = status_path(log_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError:
        if strict:
            raise
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        if not strict:
            return {}
        raise RunLogError(f"{path}: not JSON ({err.msg}); the run's status file is damaged") from err


def write_status(log_dir: str | Path, status: dict) -> None:
    """Replace ``log_dir/run_status.json`` atomically (a reader never sees half of it)."""
    from experiment.atomic import write_atomic

    write_atomic(status_path(log_dir), json.dumps(status, indent=1, sort_keys=True) + "\n")


def note_aside(log_dir: str | Path, entry: dict) -> None:
    """Append one record to ``logs/aside.jsonl``: what was moved aside, where to, and why (the lock lists them)."""
    _append(Path(log_dir) / ASIDE, entry, sync=True)


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
