"""Checkpoint retention: keep the last ``keep_last`` complete checkpoints and every ``keep_every``-th one.

Runs on rank 0 right after a save has completed (manifest written, folder renamed, marker updated), so
an older checkpoint is deleted only once a newer one is complete; an incomplete folder is never counted
as one of the kept. Like OLMo-core's and torchtitan's ``keep_latest_k``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from experiment.train.checkpointing import iteration_dir, usable_iterations


def to_delete(complete: list[int], keep_last: int | None, keep_every: int | None) -> list[int]:
    """Iterations to delete from ``complete`` (any order): all but the newest ``keep_last`` and the
    multiples of ``keep_every``. ``keep_last`` None keeps everything."""
    if keep_last is None:
        return []
    newest_first = sorted(complete, reverse=True)
    kept = set(newest_first[:max(keep_last, 1)])
    if keep_every:
        kept |= {it for it in complete if it % keep_every == 0}
    return sorted(it for it in complete if it not in kept)


def prune(save_dir: Path, keep_last: int | None, keep_every: int | None) -> list[Path]:
    """Delete the checkpoints retention does not keep; returns the deleted folders."""
    if keep_last is None:
        return []
    complete, _ = usable_iterations(save_dir)
    removed = []
    for it in to_delete(complete, keep_last, keep_every):
        path = iteration_dir(save_dir, it)
        trash = path.with_name(path.name + ".deleting")  # renamed first: never half a checkpoint under its name
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(path)
    return removed
