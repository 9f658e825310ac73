"""The torchrun command line: the one place that spells ``torch.distributed.run``'s arguments.

The training launchers (``launch/local.py``, and through it the Slurm/PBS job scripts) and ``experiment ckpt
import`` (its TP x PP ranks) both start processes with it, so a change to the rendezvous is made once.
``tests/test_records.py`` fails when another module spells the command.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def via(python: Sequence[str]) -> tuple[str, ...]:
    """torchrun started by a given interpreter (``python -m torch.distributed.run``: no reliance on PATH)."""
    return (*python, "-m", "torch.distributed.run")


HERE = via((sys.executable,))  # this interpreter's torchrun


def command(module: str, args: Sequence[str], *, nnodes: int = 1, nproc_per_node: int = 1,
            rdzv_endpoint: str = "localhost:0", rdzv_id: str | None = None,
            torchrun: Sequence[str] = ("torchrun",)) -> list[str]:
    """``torchrun --nnodes N --nproc-per-node P ... -m MODULE ARGS``; c10d rendezvous, so no fixed port is needed
    locally (``localhost:0`` picks a free one) and nodes find each other through one endpoint."""
    argv = [*torchrun, f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}"]
    if rdzv_id is not None:
        argv.append(f"--rdzv-id={rdzv_id}")
    return [*argv, "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", "-m", module, *args]
