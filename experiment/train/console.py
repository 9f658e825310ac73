"""The runner's console lines (``[experiment.train] ...``), printed once per run: by rank 0 only.

One home for the prefix and the rank check, so the runner and the modules it delegates to (building,
resuming) print the same way, without one line per rank.
"""

from __future__ import annotations


def rank0() -> bool:
    """Whether this process speaks for the run: rank 0, or no process group (yet)."""
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def say(message: str) -> None:
    if rank0():
        print(f"[experiment.train] {message}", flush=True)
