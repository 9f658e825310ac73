"""Where each rank runs and what `experiment status` says per node, on the virtual cluster (partition `nodes`,
node1 and node2: tests/launch/conftest.py): a 2-node run's log has one start line per rank naming its host,
node rank and the folder's environment, its heartbeats name their hosts and status shows the segment's nodes;
a node whose slurmd stopped is named by status with the scheduler's State and Reason."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from experiment import runlog

pytestmark = pytest.mark.slow

NODES = 'nnodes = 2\npartition = "nodes"\ncpus_per_task = 1\nwalltime = "10"\nexit_margin_seconds = 30'


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiment.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=timeout)


def test_two_node_run_logs_each_ranks_host_and_status_names_the_nodes(cluster, project):
    folder = project / "training" / "tiny"
    toml = folder / "experiment.toml"
    text = toml.read_text().replace("train_iters = 4", "train_iters = 2")  # 2 steps, one save: enough here
    toml.write_text(text.replace("[launch]\nnproc_per_node = 1\n", f"[launch]\nnproc_per_node = 1\n{NODES}\n"))
    res = _cli("run", str(folder), "--launcher", "slurm", "--wait")
    job = next(e["job_id"] for e in runlog.read_chain(folder / "logs") if e["event"] == "submitted")
    log = (folder / "logs" / f"slurm-{job}.out").read_text()
    assert res.returncode == 0, res.stdout + res.stderr + log[-3000:]
    lines = re.findall(r"^\[experiment\.train\] rank \d/2 on .*$", log, re.M)
    assert len(lines) == 2, log[-3000:]  # one line per rank, every rank
    env = "CUBLAS_WORKSPACE_CONFIG=:4096:8 NCCL_ALGO=Ring NVTE_ALLOW_NONDETERMINISTIC_ALGO=0 OMP_NUM_THREADS"
    for rank, node in ((0, "node1"), (1, "node2")):
        line = next(x for x in lines if x.startswith(f"[experiment.train] rank {rank}/2 "))
        assert line.startswith(f"[experiment.train] rank {rank}/2 on {node} (node rank {rank}, local rank 0): "
                               f"{env}") and line.endswith(" PYTHONHASHSEED=0"), line
    beats = {json.loads(p.read_text())["host"] for p in (folder / "logs" / "heartbeat").glob("rank-*.json")}
    assert beats == {"node1", "node2"}
    status = _cli("status", str(folder))
    row = next(x for x in status.stdout.splitlines() if x.startswith(f"│ {job} "))
    assert "finished" in row and "node1, node2" in row and "0 -> 2" in row, status.stdout


def test_a_node_whose_slurmd_stopped_is_named_with_the_schedulers_reason(cluster, project):
    """node2's slurmd stopped: a job that lands on it fails to start its step there, and status names node2
    with Slurm's State (NOT_RESPONDING) and Reason, for that job and for the next one, which waits for it. The
    cluster is left as found: slurmd restarted, every node idle."""
    from experiment.launch import virtual_nodes

    folder = project / "training" / "tiny"
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    cluster.wait_idle(120)  # every node up (idle, or still allocated to an earlier test's job)
    # and free: a job of an earlier test still ending on node2 would stay COMPLETING there once its slurmd is
    # gone, and hold the next job queued instead of letting its step fail to start (seen: 2 runs in 5)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(cluster.node_states().get(n.name) != "idle"
                                              for n in virtual_nodes.nodes(cluster.nodes, cluster.instance)):
        time.sleep(0.5)
    node2 = virtual_nodes.Node(2, cluster.instance)
    pid_file = cluster.pid_file("slurmd", node2.name)
    slurmd = int(pid_file.read_text().split()[0])
    os.kill(slurmd, signal.SIGTERM)
    jobs: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and os.path.exists(f"/proc/{slurmd}"):
            time.sleep(0.2)

        def submit() -> str:
            job = subprocess.run(["sbatch", "--parsable", "-N", "2", "-p", "nodes", "--ntasks-per-node=1", "-c", "1",
                                  "-t", "2", "-o", str(logs / "slurm-%j.out"), "--wrap", "srun --wait=30 hostname"],
                                 capture_output=True, text=True, check=True, timeout=60).stdout.strip()
            runlog.append_chain(logs, {"event": "submitted", "job_id": job, "by": "test", "after": None})
            jobs.append(job)
            return job

        first = submit()
        deadline = time.monotonic() + 60  # the step's launch on node2 fails at once; Slurm then marks node2
        while time.monotonic() < deadline:
            status = _cli("status", str(folder)).stdout
            if f"job {first}: node node2 is not up" in status:
                break
            time.sleep(1)
        assert f"job {first}: node node2: the step could not start there" in status, status
        note = next((x for x in status.splitlines() if x.startswith(f"job {first}: node node2 is not up")), "")
        assert "State=" in note and ("NOT_RESPONDING" in note or "DOWN" in note), status
        second = submit()  # waits for node2 (still completing the first job, not responding)
        status = _cli("status", str(folder)).stdout
        row = next(x for x in status.splitlines() if x.startswith(f"│ {second} "))
        assert "queued" in row and "waits for node2" in " ".join(status.split()), status
        assert f"job {second}: node node2 is not up: State=" in status, status
    finally:
        if jobs:
            subprocess.run(["scancel", *jobs], timeout=60)
        if not os.path.exists(f"/proc/{slurmd}") or not pid_file.is_file():
            subprocess.run(virtual_nodes.node_argv(node2, cluster.hosts_file, ["/usr/sbin/slurmd", "-N", node2.name]),
                           env=cluster.environ(), check=True, timeout=60)
        # node2 still "completes" the first job for slurmctld (a minute or more after slurmd is back): DOWN then
        # RESUME clears that at once (only this test's cancelled jobs were on it)
        for state in ("state=down", "state=resume"):
            subprocess.run(["scontrol", "update", f"nodename={node2.name}", state, "reason=test restarts slurmd"],
                           capture_output=True, timeout=60)
        cluster.wait_idle(120)
