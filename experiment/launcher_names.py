"""The launcher names, in one place: the folder schema (``launch.launcher``), ``experiment run --launcher``
and the registry (``experiment.launch.launchers``) all read this tuple. Only the standard library is
imported, so the schema can import it.

Also here: what each batch scheduler sets inside its jobs (``SCHEDULERS``). The job script, the chain of
segments and the runner's live status read a job's id and node count through this one table, so a new
scheduler is one entry here, a launcher class and a job-script template.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

LAUNCHER_NAMES = ("local", "container", "slurm", "pbs")


@dataclass(frozen=True)
class SchedulerEnv:
    """The environment variables a batch scheduler sets in a job."""

    job_id: str  # the job's id (also torchrun's rendezvous id)
    node_counts: tuple[str, ...] = ()  # variables holding the number of nodes, first set wins
    nodefile: str | None = None  # else: a file listing the job's hosts (one line per slot)
    restart_count: str | None = None  # how often the scheduler requeued this job
    nodelist: str | None = None  # a compressed host list (``node[1-2]``), expanded with ``scontrol show hostnames``


SCHEDULERS: dict[str, SchedulerEnv] = {
    "slurm": SchedulerEnv("SLURM_JOB_ID", ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"),
                          restart_count="SLURM_RESTART_COUNT", nodelist="SLURM_JOB_NODELIST"),
    "pbs": SchedulerEnv("PBS_JOBID", nodefile="PBS_NODEFILE"),
}
CLUSTER_LAUNCHERS = tuple(SCHEDULERS)


def current_job(env: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """(scheduler, job id) of the job this process runs in, or None outside a scheduled job."""
    for name, scheduler in SCHEDULERS.items():
        if env.get(scheduler.job_id):
            return name, env[scheduler.job_id]
    return None


def job_nodes(env: Mapping[str, str] = os.environ) -> int:
    """How many nodes the current job has (1 outside a job)."""
    job = current_job(env)
    if job is None:
        return 1
    scheduler = SCHEDULERS[job[0]]
    for var in scheduler.node_counts:
        if env.get(var, "").isdigit():
            return int(env[var])
    nodefile = env.get(scheduler.nodefile) if scheduler.nodefile else None
    if nodefile and Path(nodefile).is_file():
        return len(set(Path(nodefile).read_text().split()))
    return 1


def expand_hostlist(text: str) -> list[str]:
    """Slurm's compressed host list (``node[1-3,7],gpu[01-02],login``) as names, zero padding kept; the
    forms ``scontrol show hostnames`` expands, with one bracket per name."""
    import re

    hosts: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?([^,\[]*)", text):
        prefix, ranges, suffix = m.group(1), m.group(2), m.group(3)
        if ranges is None:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{width}d}{suffix}")
    return hosts


def hostnames(compressed: str) -> list[str]:
    """A Slurm node list as host names: ``scontrol show hostnames`` (what the job script uses for MASTER_ADDR),
    else ``expand_hostlist`` (no scontrol: inside a container)."""
    import subprocess

    try:
        res = subprocess.run(["scontrol", "show", "hostnames", compressed], capture_output=True, text=True,
                             timeout=30)
        if res.returncode == 0 and res.stdout.split():
            return res.stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return expand_hostlist(compressed)


def job_hosts(env: Mapping[str, str] = os.environ) -> list[str]:
    """The host names of the current job's nodes, in the scheduler's order ([] outside a job): Slurm's node
    list expanded by ``scontrol show hostnames`` (as the job script does for MASTER_ADDR), PBS's node file."""
    job = current_job(env)
    if job is None:
        return []
    scheduler = SCHEDULERS[job[0]]
    compressed = env.get(scheduler.nodelist or "", "")
    if compressed:
        return hostnames(compressed)
    nodefile = env.get(scheduler.nodefile) if scheduler.nodefile else None
    if nodefile and Path(nodefile).is_file():
        return list(dict.fromkeys(Path(nodefile).read_text().split()))
    return []


def job_restarts(env: Mapping[str, str] = os.environ) -> int:
    """How often the scheduler requeued the current job (0 where it does not say)."""
    job = current_job(env)
    var = SCHEDULERS[job[0]].restart_count if job else None
    value = env.get(var, "0") if var else "0"
    return int(value) if value.isdigit() else 0
