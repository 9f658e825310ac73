"""What a run leaves at its end (rank 0): the final ``run_status.json`` and the summary table on stderr.

The status is the record the launcher's lock writer reads back (state, iteration, speed, how the run was
started); the table is for the person at the terminal. Both are written once, by ``runner.Trainer.close``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from experiment import runlog

RECENT_STEPS = 256  # whole-iteration times kept in run_status.json


def _peak_memory_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def _world_record(world: int) -> dict:
    """Nodes and processes per node as torchrun started this run (``LOCAL_WORLD_SIZE``)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world) or world)
    return {"nnodes": max(1, world // max(local, 1)), "nproc_per_node": local}


def write_final_status(log_dir: Path, result, *, train_iters: int, checkpoint: str | None, device, overrides,
                       world_size: int, speed: dict) -> None:
    """``run_status.json``: where the run ended (``result``: the runner's RunResult), its speed, MFU and ETA.

    ``device``: the runner's ``build.DeviceSetup``; ``overrides``: the ``--set`` values the run was started with.
    """
    runlog.write_status(log_dir, {
        "state": result.state, "iteration": result.iteration, "train_iters": train_iters,
        "consumed_samples": result.consumed_samples,
        "final_loss": None if result.final_loss is None else result.final_loss.hex(),
        "checkpoint": checkpoint, "device": device.device_name,
        "layer_spec": device.layer_spec,
        "recompute": "none" if device.choice is None else device.choice.recompute,
        "peak_memory_gib": _peak_memory_gib(),
        # the micro-batch the run used (the folder's number, or what `auto` measured) and the FP8 recipe: the lock
        "micro_batch_size": device.micro_batch_size, "fp8": device.fp8, "fusions": list(device.fusions),
        "micro_batch_timings": device.micro_batch_timings,
        # the last whole iterations (bench/gpu/check.py's windows; the first, with its warm-up, left out)
        "recent_step_seconds": [round(x, 6) for x in result.step_seconds[1:][-RECENT_STEPS:]],
        # how this run was started, read back by the one lock writer (experiment.launch.finish)
        "overrides": list(overrides), **_world_record(world_size),
        **{k: None if v is None else round(v, 6) for k, v in speed.items()}})


def print_summary(folder, result, iters: int, last_eval, png, tokens_per_iter: int, before=None,
                  speed: dict | None = None) -> None:
    """The run's summary table on stderr: iterations, final loss, speed, MFU, held-out loss before -> after."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {folder.config.name}: {result.state}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("iterations", f"{result.iteration}/{iters}")
    table.add_row("samples consumed", str(result.consumed_samples))
    if result.final_loss is not None:
        table.add_row("final train loss", f"{result.final_loss:.4f}")
    steady = result.step_seconds[1:] or result.step_seconds
    if steady:
        mean = sum(steady) / len(steady)
        table.add_row("s / iteration (steady)", f"{mean:.3f}")
        table.add_row("tokens / s", f"{tokens_per_iter / mean:,.0f}")
    if speed and speed.get("tokens_per_s_per_gpu"):
        table.add_row("tokens / s / GPU (compute)", f"{speed['tokens_per_s_per_gpu']:,.0f}")
        table.add_row("TFLOP/s / GPU", f"{speed['tflops_per_gpu']:.1f}")
        if speed.get("mfu") is not None:
            table.add_row("MFU", f"{speed['mfu']:.1%}")
    for domain, loss in (last_eval or {}).items():
        start = f"{before[domain]:.4f} -> " if before and domain in before else ""
        table.add_row(f"valid loss {domain}", f"{start}{loss:.4f} (ppl {math.exp(min(loss, 50)):.1f})")
    if png:
        table.add_row("loss curve", str(png))
    Console(stderr=True).print(table)
