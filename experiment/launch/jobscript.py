"""Render a Slurm or PBS job script from its template (templates/*.sh.j2) for one launch.

The script exports the run's environment, finds the first node for the c10d rendezvous, and starts one
torchrun per node (``srun`` on Slurm, ``mpirun`` one-per-node on PBS), optionally inside the kit's
image through the container runtime's cluster line. It is written into the folder as
``launch/<kind>.sh`` (the run directory keeps what was submitted) and submitted with sbatch/qsub.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from experiment import torchrun
from experiment.launch.finish import overrides_of
from experiment.launch.local import Launch, torchrun_argv
from experiment.launcher_names import SCHEDULERS

TEMPLATES = Path(__file__).parent / "templates"
RDZV_PORT = 29500
# srun --wait: how long the other nodes' tasks may run on once one node's task has ended. Long enough for rank
# 0's own work after the others leave (the summary, loss.png: seconds); short against a walltime, so a node
# whose whole step died (measured on the virtual cluster: srun otherwise waits for it until the walltime) ends
# the step in about this plus Slurm's KillWait
NODE_EXIT_WAIT_S = 30


@dataclass(frozen=True)
class ClusterSettings:
    """Scheduler settings from the folder's ``[launch]`` section."""

    kind: str  # slurm | pbs
    job_name: str
    walltime: str
    partition: str | None = None
    account: str | None = None
    gpus: int = 0  # per node
    container_prefix: str | None = None  # e.g. "apptainer exec --nv --bind ... image.sif"
    cpus_per_task: int = 2  # the one task per node: torchrun and its ranks
    signal_seconds: int = 120


def _python(settings: "ClusterSettings") -> tuple[str, ...]:
    """The interpreter the job uses: the image's ``python`` in a container, else the one that submitted
    (a cluster's shared filesystem holds the same virtual environment on every node)."""
    return ("python",) if settings.container_prefix else (sys.executable,)


def torchrun_line(launch: Launch, kind: str, torchrun: tuple[str, ...] = ("torchrun",)) -> str:
    """The exact torchrun command each node runs (shell variables expand on the node)."""
    rdzv_id = "$" + SCHEDULERS[kind].job_id
    argv = torchrun_argv(launch, rdzv_endpoint="__ENDPOINT__", rdzv_id="__ID__", torchrun=torchrun)
    line = shlex.join(argv)
    return line.replace("__ENDPOINT__", '"$MASTER_ADDR:$MASTER_PORT"').replace("__ID__", f'"{rdzv_id}"')


def render(launch: Launch, settings: ClusterSettings) -> str:
    import jinja2

    if settings.kind not in SCHEDULERS or not (TEMPLATES / f"{settings.kind}.sh.j2").is_file():
        raise ValueError(f"unknown launcher {settings.kind!r}; use {' or '.join(SCHEDULERS)}")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    from experiment.train.walltime import parse_duration

    python = _python(settings)
    command = torchrun_line(launch, settings.kind, ("torchrun",) if settings.container_prefix else
                            torchrun.via(python))
    chain = shlex.join([*python, "-m", "experiment.launch.chain"])
    if settings.container_prefix:
        command = f"{settings.container_prefix} {command}"
        chain = f"{settings.container_prefix} {chain}"
    return env.get_template(f"{settings.kind}.sh.j2").render(
        job_name=settings.job_name, nnodes=launch.nnodes, nproc=launch.nproc_per_node,
        walltime=settings.walltime, partition=settings.partition, account=settings.account,
        gpus=settings.gpus, log_dir=shlex.quote(os.fspath(launch.folder / "logs")),
        folder=shlex.quote(os.fspath(launch.folder)),
        exports=[f"export {k}={shlex.quote(v)}" for k, v in launch.env], env_names=[k for k, _ in launch.env],
        rdzv_port=RDZV_PORT, node_exit_wait=NODE_EXIT_WAIT_S, in_image=bool(settings.container_prefix), command=command, chain=chain, cpus_per_task=settings.cpus_per_task,
        signal_seconds=settings.signal_seconds, walltime_seconds=parse_duration(settings.walltime),
        # the run's --set overrides reach every step that loads the folder, not torchrun only
        chain_sets="".join(f" --set {shlex.quote(o)}" for o in overrides_of(launch.runner_args)),
        script=shlex.quote(os.fspath(launch.folder / "launch" / f"{settings.kind}.sh")),
    )


def write(folder: Path, kind: str, text: str) -> Path:
    """``<folder>/launch/<kind>.sh``, written atomically, executable."""
    out_dir = folder / "launch"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{kind}.sh"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(path)
    return path


def check_syntax(path: Path) -> None:
    """``bash -n``: the script parses (raises with bash's message if not)."""
    res = subprocess.run(["bash", "-n", os.fspath(path)], capture_output=True, text=True)
    if res.returncode:
        raise ValueError(f"{path}: bash -n failed: {res.stderr.strip()}")
