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
