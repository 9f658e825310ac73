"""The torchrun command that starts the runner, and running it on this machine (``--launcher local``).

The same argv is what the Slurm and PBS scripts put on each node, so a folder that runs locally runs
on a cluster with only the rendezvous changed.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from experiment.torchrun import HERE, command

RUNNER_MODULE = "experiment.train.runner"


@dataclass(frozen=True)
class Launch:
    """One validated launch: where, how many processes, and the environment the job exports."""

    folder: Path
    nnodes: int = 1
    nproc_per_node: int = 1
    env: tuple[tuple[str, str], ...] = ()  # determinism variables etc., exported before torchrun
    runner_args: tuple[str, ...] = ()


def torchrun_argv(launch: Launch, *, rdzv_endpoint: str = "localhost:0", rdzv_id: str | None = None,
                  torchrun: tuple[str, ...] = ("torchrun",)) -> list[str]:
    """``torchrun ... -m experiment.train.runner FOLDER RUNNER_ARGS`` for one launch (``experiment.torchrun``)."""
    return command(RUNNER_MODULE, (os.fspath(launch.folder), *launch.runner_args), nnodes=launch.nnodes,
                   nproc_per_node=launch.nproc_per_node, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id,
                   torchrun=torchrun)


def local_argv(launch: Launch) -> list[str]:
    """The local command: this interpreter's torch.distributed.run (no reliance on PATH)."""
    return torchrun_argv(launch, torchrun=HERE)


def command_line(argv: list[str]) -> str:
    return shlex.join(argv)


def run_local(launch: Launch) -> int:
    """Run torchrun in the foreground; SIGTERM/SIGINT are passed on so the runner saves before exiting."""
    env = {**os.environ, **dict(launch.env)}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // launch.nproc_per_node)))
    proc = subprocess.Popen(local_argv(launch), env=env)

    def forward(signum, frame):
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
