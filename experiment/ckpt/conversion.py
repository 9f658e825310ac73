"""What import and export share: the output-folder rule, stats, progress bar and megatron set-up.

Both directions (``experiment.ckpt.hf_import``, ``experiment.ckpt.hf_export``) write a new folder the same
way: refuse one that holds anything, write under a hidden name, fsync the tree and rename it into place; both
report ``ConvertStats`` under the same bar. They, and the logits check (``experiment.ckpt.compare``), load
megatron's strategies the same way. Kept apart so that neither direction imports the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from experiment.ckpt.meta import LATEST_NAME, META_NAME, CheckpointError
from experiment.model.strategies import dist_strategies


@dataclass(frozen=True)
class ConvertStats:
    tensors: int
    bytes: int
    seconds: float
    out: Path

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)


def import_libraries() -> None:
    """Import now the megatron.core parts every conversion uses (torch comes with ``hf_import``). The CLI
    calls it with the garbage collector paused (``experiment.short_lived``), which cuts 0.5 s of start-up."""
    from experiment import megatron_import

    megatron_import.install()  # before megatron's first import (the CLI's root callback has done it already)
    from megatron.core import dist_checkpointing, parallel_state  # noqa: F401
    from megatron.core.dist_checkpointing.strategies import torch as _torch_strategies  # noqa: F401
    from megatron.core.models.gpt import GPTModel, gpt_layer_specs  # noqa: F401
    from megatron.core.tensor_parallel import random  # noqa: F401


def in_process_strategies():
    """The kit's checkpoint strategies, with the writer's results kept in this process (see below)."""
    in_process_results_queue()
    return dist_strategies()


def in_process_results_queue() -> None:
    """Our saves are synchronous: the writer's results are put and read in this process, so a plain
    queue will do. megatron otherwise starts a spawn-context Manager process, which re-imports
    ``__main__`` (several seconds; fails outright when the caller is stdin or a notebook)."""
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def refuse_existing_output(out_dir: Path, what: str) -> None:
    """An output folder must be absent or empty: conversion never overwrites or mixes into one."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise CheckpointError(f"{out_dir}: exists and is a file; fix: choose another output path")
        content = sorted(p.name for p in out_dir.iterdir())
        if content:
            holds = "a checkpoint" if {LATEST_NAME, META_NAME, "config.json"} & set(content) else "files"
            raise CheckpointError(
                f"{out_dir}: already holds {holds} ({', '.join(content[:5])}); fix: delete it or choose another {what}"
            )


def fsync_tree(folder: Path) -> None:
    for p in [*folder.rglob("*"), folder]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class progress_bar:
    """A rich progress bar on the process that reports, a no-op elsewhere."""

    def __init__(self, enabled: bool, label: str, total: int):
        self.enabled, self.label, self.total = enabled, label, total

    def __enter__(self):
        if not self.enabled:
            return lambda _desc: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[item]}"), transient=True)
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=self.total, item="")
        return lambda desc: self.bar.update(task, advance=1, item=desc)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False
