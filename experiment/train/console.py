"""The runner's console lines (``[experiment.train] ...``), printed once per run: by rank 0 only (``rank_line``:
one line per rank at the start, where it runs).

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


def rank_line(env, names) -> str:
    """Every rank's one start line (printed by every rank, unlike ``say``): where it runs and the environment
    the folder sets, as this process sees it. ``env``: the process environment (torchrun's RANK, WORLD_SIZE,
    GROUP_RANK, LOCAL_RANK); ``names``: the variables the launch exports (``determinism.environment``) and
    OMP_NUM_THREADS. A multi-node job's log (``logs/slurm-<job>.out``) then has one greppable line per rank:

        [experiment.train] rank 1/2 on node2 (node rank 1, local rank 0): CUBLAS_WORKSPACE_CONFIG=:4096:8 ...
    """
    import socket

    values = " ".join(f"{k}={env[k]}" if k in env else f"{k} unset" for k in sorted(names))
    return (f"[experiment.train] rank {env.get('RANK', '0')}/{env.get('WORLD_SIZE', '1')} on {socket.gethostname()} "
            f"(node rank {env.get('GROUP_RANK', '0')}, local rank {env.get('LOCAL_RANK', '0')}): "
            f"{values or 'no environment set by the folder'}")
