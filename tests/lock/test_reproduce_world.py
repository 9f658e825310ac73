"""`experiment reproduce` of a multi-node lock on one machine: the re-run starts the lock's whole world (nodes x
ranks per node) as local processes, and a world this machine cannot hold is refused by name with the numbers
(the 2-node run reproduced end to end: tests/launch/test_slurm_demo.py and the 2-node chains in test_slurm.py)."""

from __future__ import annotations

import os
from pathlib import Path

from experiment.lock.records import EnvironmentRecord, LaunchRecord, RunLock
from experiment.lock.reproduce import ReproduceOptions, local_world_size, rerun_command, world_size_problem


def _lock(nnodes: int, per_node: int, gpu: list[str] | None = None) -> RunLock:
    launch = LaunchRecord.model_construct(world_size=nnodes * per_node, launcher={
        "launcher": "slurm", "nnodes": nnodes, "nproc_per_node": per_node,
        "segments": [{"job_id": "7", "hosts": [f"node{i + 1}" for i in range(nnodes)]}]})
    return RunLock.model_construct(launch=launch, environment=EnvironmentRecord.model_construct(gpu=gpu))


def test_a_two_node_lock_reruns_as_its_whole_world_here():
    lock = _lock(2, 1)
    assert local_world_size(lock) == 2 and world_size_problem(lock, Path("run.lock.json")) is None
    cmd = rerun_command(Path("/tmp/mirror/tiny"), ReproduceOptions(lockfile=Path("run.lock.json")), local_world_size(lock))
    assert cmd[cmd.index("--nproc") + 1] == "2" and cmd[cmd.index("--launcher") + 1] == "local"
    slurm = rerun_command(Path("/tmp/mirror/tiny"), ReproduceOptions(lockfile=Path("run.lock.json"), launcher="slurm"), 2)
    assert "--nproc" not in slurm  # on a cluster the folder's own nodes x ranks apply


def test_a_world_this_machine_cannot_hold_is_refused_with_the_numbers():
    cores = len(os.sched_getaffinity(0))
    lock = _lock(4, cores)  # one rank per core on each of 4 nodes: 4x this machine
    problem = world_size_problem(lock, Path("/runs/big/run.lock.json"))
    assert problem is not None
    assert f"/runs/big/run.lock.json: launch.world_size {4 * cores} (4 node(s) x {cores} rank(s))" in problem
    assert f"this machine gives this process {cores}" in problem and "--launcher slurm" in problem
    gpus = world_size_problem(_lock(2, 8, gpu=["NVIDIA H100 80GB HBM3"]), Path("run.lock.json"))
    assert gpus is not None and "ran on GPUs (NVIDIA H100 80GB HBM3)" in gpus and "16" in gpus
