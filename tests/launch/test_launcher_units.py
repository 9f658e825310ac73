"""The launcher registry, walltime parsing, the time budget's decision and checkpoint retention's choice."""

from __future__ import annotations

import typing

import pytest

from experiment.folder import LaunchSection
from experiment.launch.launchers import LAUNCHERS
from experiment.launcher_names import LAUNCHER_NAMES
from experiment.train.retention import to_delete
from experiment.train.walltime import TimeBudget, job_end_time, parse_duration


def test_one_list_of_launchers_for_schema_cli_and_registry():
    assert tuple(LAUNCHERS) == LAUNCHER_NAMES
    assert typing.get_args(LaunchSection.model_fields["launcher"].annotation) == LAUNCHER_NAMES
    assert {LAUNCHERS[n].lock_writer for n in ("slurm", "pbs", "container")} == {"job"}
    assert LAUNCHERS["local"].lock_writer == "parent"


@pytest.mark.parametrize("text,seconds", [("5", 300), ("1:30", 90), ("02:00:00", 7200), ("1-00", 86400),
                                          ("2-03:04", 2 * 86400 + 3 * 3600 + 240), ("0-00:00:07", 7)])
def test_walltime_formats(text, seconds):
    assert parse_duration(text) == seconds


def test_a_bad_walltime_is_refused_by_the_schema():
    with pytest.raises(ValueError, match=r"walltime '2h' is not \[D-\]HH:MM:SS"):
        LaunchSection(walltime="2h")


def test_time_budget_stops_when_a_step_and_a_save_no_longer_fit():
    budget = TimeBudget(end_time=1000.0, margin=30.0, save_seconds=5.0)
    budget.record_step(2.0)
    assert not budget.out_of_time(now=1000.0 - 38.0)  # 38 s left > 2 + 5 + 30
    assert budget.out_of_time(now=1000.0 - 36.0)
    budget.record_save(20.0)  # a slower save measured on this run moves the stop earlier
    assert budget.out_of_time(now=1000.0 - 50.0)
    assert not TimeBudget(None, 30.0).out_of_time()  # outside a job: never


def test_job_end_time_from_the_environment():
    assert job_end_time({"MIDTRAIN_JOB_END_TIME": "1234"}) == 1234.0
    assert job_end_time({"SLURM_JOB_END_TIME": "99"}) == 99.0
    assert job_end_time({}) is None


def test_retention_keeps_the_newest_and_every_kth():
    assert to_delete([2, 4, 6, 8, 10], keep_last=2, keep_every=None) == [2, 4, 6]
    assert to_delete([2, 4, 6, 8, 10], keep_last=1, keep_every=4) == [2, 6]
    assert to_delete([2, 4], keep_last=None, keep_every=None) == []


def test_one_scheduler_table_gives_job_id_nodes_and_restarts(tmp_path):
    """Job script, chain and live status read a job through experiment.launcher_names.SCHEDULERS only."""
    from experiment.launcher_names import CLUSTER_LAUNCHERS, SCHEDULERS, current_job, job_nodes, job_restarts

    assert CLUSTER_LAUNCHERS == tuple(SCHEDULERS) == ("slurm", "pbs")
    assert current_job({}) is None and job_nodes({}) == 1 and job_restarts({}) == 0
    slurm = {"SLURM_JOB_ID": "42", "SLURM_NNODES": "3", "SLURM_RESTART_COUNT": "2"}
    assert (current_job(slurm), job_nodes(slurm), job_restarts(slurm)) == (("slurm", "42"), 3, 2)
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\nn2\n")  # one line per slot, as PBS writes it
    pbs = {"PBS_JOBID": "7.server", "PBS_NODEFILE": str(nodefile)}
    assert (current_job(pbs), job_nodes(pbs), job_restarts(pbs)) == (("pbs", "7.server"), 2, 0)


# ------------------------------------------------------------------------------------------ per-node status

SRUN_NODE_LOST = """\
[experiment.train] iter 44/400 loss 7.4598
srun: error: node1: task 0: Exited with exit code 1
srun: launch/slurm: _step_signal: Terminating StepId=3.0
srun: First task exited 30s ago
srun: StepId=3.0 task 1: running
srun: StepId=3.0 task 0: exited abnormally
srun: Job step aborted: Waiting up to 32 seconds for job step to finish.
srun: error: Timed out waiting for job step to complete
"""


def test_the_node_whose_task_never_ended_is_named_not_the_survivor():
    from experiment.launch.status import step_failures

    notes = step_failures(SRUN_NODE_LOST, ["node1", "node2"])
    assert len(notes) == 1 and notes[0].startswith("node node2: its processes stopped answering"), notes
    launch = "srun: error: Task launch for StepId=4.0 failed on node node2: Communication connection failure\n"
    assert step_failures(launch, ["node1", "node2"]) == [
        "node node2: the step could not start there (Communication connection failure)"]
    # a rank that failed by itself: the node whose task exited with the error
    plain = "srun: error: node2: task 1: Exited with exit code 2\nsrun: error: node1: task 0: Killed\n"
    assert step_failures(plain, ["node1", "node2"]) == ["node node2: Exited with exit code 2", "node node1: Killed"]


def test_rank_lines_name_host_node_rank_and_environment(monkeypatch):
    import socket

    from experiment.launch.status import rank_hosts
    from experiment.train.console import rank_line

    env = {"RANK": "1", "WORLD_SIZE": "2", "GROUP_RANK": "1", "LOCAL_RANK": "0", "PYTHONHASHSEED": "0"}
    line = rank_line(env, ["PYTHONHASHSEED", "OMP_NUM_THREADS"])
    assert line == (f"[experiment.train] rank 1/2 on {socket.gethostname()} (node rank 1, local rank 0): "
                    "OMP_NUM_THREADS unset PYTHONHASHSEED=0")
    assert rank_hosts(line + "\nother\n") == {1: (socket.gethostname(), 1)}
    assert rank_line({}, []).endswith("rank 0/1 on " + socket.gethostname() +
                                      " (node rank 0, local rank 0): no environment set by the folder")


def test_nodes_not_up_name_state_and_reason():
    from experiment.launch.partition import fields
    from experiment.launch.status import nodes_not_up

    nodes = [fields(line) for line in (
        "NodeName=node1 Arch=x86_64 State=IDLE Partitions=nodes Reason=(null)",
        "NodeName=node2 Arch=x86_64 State=DOWN+NOT_RESPONDING Partitions=nodes "
        "Reason=Not responding [slurm@2026-12-08T01:30:00]",
        "NodeName=node3 State=IDLE+COMPLETING+NOT_RESPONDING Partitions=nodes",
        "NodeName=vm State=DRAIN Partitions=debug Reason=maintenance [root@2026-12-08T01:00:00]")]
    down = dict(nodes_not_up(nodes, partition="nodes"))
    assert set(down) == {"node2", "node3"}
    assert down["node2"] == "State=DOWN+NOT_RESPONDING; Reason=Not responding [slurm@2026-12-08T01:30:00]"
    assert down["node3"].startswith("State=IDLE+COMPLETING+NOT_RESPONDING; no Reason yet")
    assert [n for n, _ in nodes_not_up(nodes, hosts=["node1", "vm"])] == ["vm"]


def test_node_progress_groups_heartbeats_by_host(tmp_path):
    import json

    from experiment.launch.status import node_progress

    beats = tmp_path / "heartbeat"
    beats.mkdir()
    for rank, host, it, t in ((0, "node1", 44, 100.0), (1, "node1", 44, 101.0), (2, "node2", 41, 80.0)):
        (beats / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "host": host, "iteration": it,
                                                             "phase": "train", "time": t}))
    assert node_progress(tmp_path, now=103.0) == [
        "node node1: iteration 44 (ranks 0, 1, train), heartbeat 0m02s ago",
        "node node2: iteration 41 (rank 2, train), heartbeat 0m23s ago"]


def test_a_node_that_cannot_reach_the_rendezvous_is_named():
    """srun's and torchrun's lines of a 2-node job whose node2 could not reach node1's c10d store (measured on the
    virtual cluster with port 29500 rejected in node2's namespace: the step ended 91-124 s after it began, at
    torchrun's 60 s connect timeout and one retry, not at the walltime)."""
    from experiment.launch.status import step_failures

    log = "\n".join([
        "[chain] segment 1 (job 4) starts at iteration 0 on node1, node2",
        "[E1208 02:22:12.062522842 socket.cpp:1028] [c10d] The client socket has timed out after 60000ms while "
        "trying to connect to (node1, 29500).",
        "[W1208 02:22:12.069731031 TCPStore.cpp:340] [c10d] TCP client failed to connect/validate to host "
        "node1:29500 - retrying (try=0, timeout=60000ms, delay=27420ms)",
        "torch.distributed.elastic.rendezvous.api.RendezvousConnectionError: The connection to the C10d store has "
        "failed. See inner exception for details.",
        "srun: error: node2: task 1: Exited with exit code 1",
        "srun: launch/slurm: _step_signal: Terminating StepId=4.0",
        "slurmstepd-node1: error: *** STEP 4.0 ON node1 CANCELLED AT 2026-12-08T02:22:41 ***",
        "srun: error: node1: task 0: Terminated",
    ])
    notes = step_failures(log, ["node1", "node2"])
    assert notes[0].startswith("node node2: could not join the rendezvous at node1:29500"), notes
    assert notes[1:] == ["node node1: Terminated"]
