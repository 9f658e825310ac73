"""Starting a run again from its base: an explicit choice that moves the old run aside, never deletes it.

A resume that finds checkpoints none of which loads stops (``checkpointing.CheckpointLoadError``) instead of
falling back to the base and overwriting them. When a user means to start over, ``experiment run FOLDER
--restart`` calls ``move_run_aside`` first: the checkpoints go to ``<save>/aside/restart-N/``, the logs and the
lock to ``logs/aside/restart-N/`` (renames on the same filesystem: nothing is copied or deleted), and
``logs/aside.jsonl`` says what went where.
"""

from __future__ import annotations

import os
from pathlib import Path

from experiment import runlog
from experiment.train.checkpointing import LATEST_NAME

KEEP_IN_LOGS = {runlog.ASIDE, runlog.ASIDE_DIR, "dataset_index"}  # the record itself, and derived caches


def _free(folder: Path, stem: str) -> Path:
    n = 1
    while (folder / f"{stem}-{n}").exists():
        n += 1
    return folder / f"{stem}-{n}"


def move_run_aside(folder_path: Path, save_dir: Path) -> list[str]:
    """Move the run's checkpoints, logs and lock aside; returns one line per place moved (empty: nothing to
    move). Run before any process of the new run starts."""
    folder_path, save_dir = Path(folder_path), Path(save_dir)
    logs = folder_path / runlog.LOGS
    said = []
    checkpoints = sorted(p for p in save_dir.glob("iter_*") if p.is_dir()) if save_dir.is_dir() else []
    marker = save_dir / LATEST_NAME
    if checkpoints or marker.is_file():
        target = _free(save_dir / "aside", "restart")
        target.mkdir(parents=True)
        for p in [*checkpoints, *([marker] if marker.is_file() else [])]:
            os.replace(p, target / p.name)
        said.append(f"{len(checkpoints)} checkpoint(s) -> {target}")
        runlog.note_aside(logs, {"what": "checkpoints", "from": [p.name for p in checkpoints],
                                 "to": os.path.relpath(target, save_dir), "why": "experiment run --restart"})
    entries = sorted(p for p in logs.iterdir() if p.name not in KEEP_IN_LOGS) if logs.is_dir() else []
    lock = folder_path / runlog.LOCK
    if entries or lock.is_file():
        target = _free(logs / runlog.ASIDE_DIR, "restart")
        target.mkdir(parents=True)
        for p in [*entries, *([lock] if lock.is_file() else [])]:
            os.replace(p, target / p.name)
        said.append(f"{len(entries)} log file(s){' and run.lock.json' if lock.is_file() else ''} -> {target}")
        runlog.note_aside(logs, {"what": "logs", "from": [p.name for p in entries] + ([runlog.LOCK] if lock.is_file()
                                                                                       else []),
                                 "to": os.path.relpath(target, logs), "why": "experiment run --restart"})
    return said
