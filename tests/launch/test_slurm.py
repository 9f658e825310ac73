"""`experiment run --launcher slurm` against a real Slurm (experiment/launch/slurm_local.py): the tiny
folder trained as a job, a run chained over several 1-minute jobs with a SIGTERM in the middle of a save,
byte-identical to an uninterrupted local run (`experiment reproduce` of the Slurm run's lockfile), and
what a user sees when a submission cannot or should not go ahead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiment.launch.jobscript import NODE_EXIT_WAIT_S
from experiment.launch.slurm_local import NODES_PARTITION
from experiment.lock import environment, lockfile
from tests import fault_matrix

pytestmark = pytest.mark.slow


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    # 1200 s: the longest call is a reproduction (test_slurm_demo's demo re-run measured 150-430 s)
    return subprocess.run([sys.executable, "-m", "experiment.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=1200)


def _configure(folder: Path, launch: str, iters: int, save_interval: int) -> None:
    toml = folder / "experiment.toml"
    text = toml.read_text().replace("train_iters = 4", f"train_iters = {iters}")
    text = text.replace("save_interval = 2", f"save_interval = {save_interval}")
    toml.write_text(text.replace("[launch]\nnproc_per_node = 1\n", f"[launch]\nnproc_per_node = 1\n{launch}\n"))


def _chain(folder: Path) -> list[dict]:
    path = folder / "logs" / "chain.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _wait_chain_end(folder: Path, timeout: float) -> list[dict]:
    """Until the chain's last segment ended without a successor (finished, or stopped)."""
    from experiment.launch.chain import wait

    state = wait(folder, poll=1.0, timeout=timeout)
    assert state != "timeout", f"chain did not end in {timeout} s: {_chain(folder)[-3:]}\n" + \
        _cli("status", str(folder)).stdout
    return _chain(folder)


def _job_id(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip().splitlines()[-1]


def test_tiny_folder_trains_as_a_slurm_job(slurm, project):
    folder = project / "training" / "tiny"
    _configure(folder, 'walltime = "5"\nexit_margin_seconds = 30\ncpus_per_task = 2', iters=4, save_interval=2)
    toml = folder / "experiment.toml"
    toml.write_text(toml.read_text().replace("[checkpoint]\n", "[checkpoint]\nkeep_last = 1\n"))
    untouched = project / "training" / "tiny-default"  # the same folder without the override, for `compare`
    shutil.copytree(folder, untouched)
    job = _job_id(_cli("run", str(folder), "--launcher", "slurm", "--set", "training.lr=0.002"))
    assert (folder / "logs").is_dir()  # made before submission: the scheduler opens its output file there
    script = (folder / "launch" / "slurm.sh").read_text()  # every step that loads the folder gets the override
    assert script.count("--set training.lr=0.002") == 3, script  # chain begin, torchrun, chain end
    info = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                          timeout=60).stdout
    assert "NumCPUs=2" in info and "MinCPUsNode=2" in info, info  # the ranks' CPUs, not Slurm's default 1
    events = [e for e in _wait_chain_end(folder, 180) if e["event"] == "end"]
    assert events[-1]["state"] == "finished", (folder / "logs" / f"slurm-{job}.out").read_text()[-3000:]
    lock = lockfile.read_lock(folder / "run.lock.json")  # written by the job (the chain's last segment)
    assert lock.config.overrides == ["training.lr=0.002"] and lock.config.experiment["training"]["lr"] == 0.002
    assert lock.config.resolved["runner_args"] == ["--set", "training.lr=0.002"]
    segs = lock.launch.launcher["segments"]
    assert [(s["job_id"], s["start_iteration"], s["end_iteration"]) for s in segs] == [(job, 0, 4)]
    assert list(lock.outputs.checkpoints) == ["iter_0000004"]
    # retention: iteration 2 was deleted once iteration 4 was complete; each save's time is logged
    assert sorted(p.name for p in (folder / "checkpoints").glob("iter_*")) == ["iter_0000004"]
    saves = [json.loads(line) for line in (folder / "logs" / "saves.jsonl").read_text().splitlines()]
    assert [s["iteration"] for s in saves] == [2, 4] and all(s["seconds"] > 0 for s in saves)
    status = _cli("status", str(folder))
    assert status.returncode == 0 and "finished" in status.stdout and "iteration 4/4" in status.stdout

    # the lock re-run on the same Slurm: `reproduce --launcher slurm` submits it (`run --wait`), then compares
    rep = _cli("reproduce", str(folder / "run.lock.json"), "--out", str(project / "rerun-slurm"),
               "--launcher", "slurm", *(["--ignore"] if environment.source_hash() != lock.kit.source_hash else []))
    out = rep.stdout + rep.stderr
    assert rep.returncode == 0 and "4 step(s) of losses" in out and "identical" in out, out[-4000:]
    relock = lockfile.read_lock(project / "rerun-slurm" / "training" / "tiny" / "run.lock.json")
    assert relock.dump()["outputs"] == lock.dump()["outputs"]
    assert [s["job_id"] for s in relock.launch.launcher["segments"]] != [job]  # a new job ran it
    assert relock.config.overrides == ["training.lr=0.002"]
    # the Slurm run's lock re-run here, without Slurm: the override is applied again (it used to diverge at step 1)
    local = _cli("reproduce", str(folder / "run.lock.json"), "--out", str(project / "rerun-local"), "--steps", "2",
                 *(["--ignore"] if environment.source_hash() != lock.kit.source_hash else []))
    assert local.returncode == 0 and "applied again: --set training.lr=0.002" in local.stdout + local.stderr, \
        (local.stdout + local.stderr)[-4000:]
    cmp = subprocess.run([sys.executable, "-m", "experiment.cli", "compare", str(untouched), str(folder)],
                         capture_output=True, text=True, timeout=300, cwd=project)
    assert "training.lr" in cmp.stdout + cmp.stderr, cmp.stdout + cmp.stderr
    fault_matrix.record("slurm", "--set override", survived="everything (one job)", resumed="from the base (a new run)",
                        reproduced="yes: `reproduce --launcher slurm` exit 0 (outputs equal), `--launcher local "
                        "--steps 2` exit 0; `compare` names training.lr", message="overrides recorded in the lock, "
                        "applied again: --set training.lr=0.002",
                        test="tests/launch/test_slurm.py::test_tiny_folder_trains_as_a_slurm_job")


def test_two_node_chain_of_two_minute_jobs_with_sigterm_mid_save_matches_a_local_run(cluster, project):
    """Two nodes of the virtual cluster, one rank each. Walltime 2 minutes, exit margin 80 s (more than Slurm's
    up to 60 s early --signal, which then only ends a segment sooner): a segment saves and stops 40 s after its
    start, so after start-up (about 15 s) it trains for some 25 s: 9 steps of 1.6 s (seq 256, batch 16, 2 ranks)
    measured at load 4, about 20 idle, so the 36 iterations take 3 segments or more (up to launch.max_segments)
    and the time budget ends at least one. A segment gets `scancel -s TERM` (every step of the job, on both nodes) while a save
    is being written. The chain continues by itself, every segment on both nodes, and `experiment reproduce`
    of its lockfile re-runs it on one machine (2 local processes), uninterrupted, to the byte."""
    folder = project / "training" / "tiny"
    _configure(folder, f'nnodes = 2\npartition = "{NODES_PARTITION}"\ncpus_per_task = 1\nwalltime = "2"\n'
               'exit_margin_seconds = 80\nsignal_seconds = 5\nmax_segments = 30', iters=36, save_interval=3)
    toml = folder / "experiment.toml"
    toml.write_text(toml.read_text().replace("seq_length = 32", "seq_length = 256")
                    .replace("global_batch_size = 4", "global_batch_size = 16"))
    job = _job_id(_cli("run", str(folder), "--launcher", "slurm"))
    deadline = time.monotonic() + 240
    partial = []
    while not partial and time.monotonic() < deadline:
        partial = list((folder / "checkpoints").glob("iter_*.partial"))
        time.sleep(0.01)
    assert partial, (folder / "logs" / f"slurm-{job}.out").read_text()[-3000:]
    running = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True,
                             timeout=60).stdout.split()
    subprocess.run(["scancel", "-s", "TERM", *running], check=True, timeout=60)
    signalled = int(partial[0].name[5:12])
    events = _wait_chain_end(folder, 1200)
    log = (folder / "logs" / f"slurm-{job}.out").read_text()
    ends = [e for e in events if e["event"] == "end"]
    assert ends[-1]["state"] == "finished", log[-3000:]
    assert len(ends) >= 3 and "walltime" in {e["state"] for e in ends[:-1]}, ends  # the budget ended one
    hit = next(e for e in ends if e["job_id"] == running[0])
    # the save in progress finished (a periodic one: "interrupted"; the budget's own: "walltime")
    assert hit["state"] in ("interrupted", "walltime") and hit["complete_iteration"] >= signalled, hit
    log = (folder / "logs" / f"slurm-{running[0]}.out").read_text()
    assert "Received 15 death signal" in log and f"saved iter_{signalled:07d}" in log, log[-3000:]
    assert {e["state"] for e in ends[1:-1]} <= {"walltime", "interrupted"}, ends
    saves = [json.loads(line)["iteration"] for line in (folder / "logs" / "saves.jsonl").read_text().splitlines()]
    assert len(saves) == len(set(saves)), f"an iteration was saved twice: {saves}"
    lock = lockfile.read_lock(folder / "run.lock.json")
    segs = lock.launch.launcher["segments"]
    assert len(segs) == len(ends) and segs[-1]["end_iteration"] == 36
    assert all(a["end_iteration"] == b["start_iteration"] for a, b in zip(segs, segs[1:])), segs
    assert all(seg["hosts"] == ["node1", "node2"] for seg in segs), segs  # every segment on both nodes

    rep = _cli("reproduce", str(folder / "run.lock.json"), "--out", str(project / "rerun"),
               *(["--ignore"] if environment.source_hash() != lock.kit.source_hash else []))
    out = rep.stdout + rep.stderr
    assert rep.returncode == 0, out[-4000:]
    assert "36 step(s) of losses" in out and "identical" in out
    relock = lockfile.read_lock(project / "rerun" / "training" / "tiny" / "run.lock.json")
    assert relock.dump()["outputs"] == lock.dump()["outputs"]  # per-step losses and the last checkpoint's files and tensors
    fault_matrix.record("slurm", "SIGTERM during a save", survived=f"every checkpoint (the save of iteration {signalled} "
                        "in progress finished); logs", resumed=f"the next job, from iteration {hit['complete_iteration']}"
                        f" ({len(ends)} jobs in all)", reproduced="yes: `experiment reproduce` (local, uninterrupted) "
                        "exit 0, outputs equal", message=f"[chain] segment {running[0]} ended ({hit['state']}) at iteration "
                        f"{hit['complete_iteration']}/36; next segment: job ...", test="tests/launch/test_slurm.py::test_two_node_chain_of_two_minute_jobs_with_"
                        "sigterm_mid_save_matches_a_local_run")


def test_refusals_and_a_job_that_dies_at_start(slurm, project):
    folder = project / "training" / "tiny"
    # signal_seconds below the 1-minute walltime: the default 120 would fire SIGTERM at the start (refused)
    _configure(folder, 'walltime = "1"\nexit_margin_seconds = 55\nsignal_seconds = 30', iters=4, save_interval=2)
    short = _cli("run", str(folder), "--launcher", "slurm")
    assert short.returncode == 2 and "launch.walltime 1 (60 s) is too short" in short.stderr, short.stderr
    assert "exit_margin_seconds 55 s" in short.stderr and not (folder / "logs" / "chain.jsonl").exists()

    toml = folder / "experiment.toml"
    toml.write_text(toml.read_text().replace("exit_margin_seconds = 55", 'exit_margin_seconds = 10\n'
                                             'partition = "nosuch"'))
    bad = _cli("run", str(folder), "--launcher", "slurm")
    assert bad.returncode == 2 and "invalid partition" in bad.stderr.lower() and "launch.partition" in bad.stderr

    toml.write_text(toml.read_text().replace('partition = "nosuch"', ""))
    cpus = str(os.cpu_count())  # a job holding every CPU keeps ours queued while the test looks at it
    blocker = subprocess.run(["sbatch", "--parsable", f"--cpus-per-task={cpus}", "--time=2", "--output=/dev/null",
                              "--wrap", "sleep 100"], capture_output=True, text=True, check=True,
                             timeout=60).stdout.strip()
    job = _job_id(_cli("run", str(folder), "--launcher", "slurm"))
    again = _cli("run", str(folder), "--launcher", "slurm")
    assert again.returncode == 2 and f"job {job} (PENDING)" in again.stderr and f"scancel {job}" in again.stderr
    status = _cli("status", str(folder))
    assert "queued" in status.stdout, status.stdout

    good = toml.read_text()
    toml.write_text(good.replace("[training]", "[training]\nno_such_field = 1"))  # the job will refuse it
    subprocess.run(["scancel", blocker], check=True, timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = _cli("status", str(folder))
        if "failed" in status.stdout:
            break
        time.sleep(1)
    assert "failed" in status.stdout and "exit code 2:0" in status.stdout, status.stdout
    assert "refusing to start" in status.stdout and "no_such_field" in status.stdout  # the job's log tail


def test_one_node_killed_mid_step_ends_the_step_and_the_next_job_resumes_from_its_last_checkpoint(cluster, project):
    """kill -9 of node2's whole step (its slurmstepd and everything under it: torchrun and its rank; the nodes
    share this machine's PID namespace) in the middle of training, past the checkpoint of iteration 40: the
    rank on node1 loses its peer and ends, and srun (`--kill-on-bad-exit=1 --wait=30`: node2 never reports its
    task's end) ends the step about 30 + 32 s (KillWait) later, not at the 10-minute walltime; the segment ends
    failed, the chain resubmits (it had saved a checkpoint),
    the next segment resumes from iteration 40 on both nodes, the lock records the iterations lost, and the
    run re-runs on one machine to the byte."""
    from experiment.launch import virtual_nodes

    folder = project / "training" / "tiny"
    _configure(folder, f'nnodes = 2\npartition = "{NODES_PARTITION}"\ncpus_per_task = 1\nwalltime = "10"\n'
               'exit_margin_seconds = 30', iters=120, save_interval=40)
    job = _job_id(_cli("run", str(folder), "--launcher", "slurm"))
    checkpoints, losses = folder / "checkpoints", folder / "logs" / "losses.jsonl"
    deadline = time.monotonic() + 300
    reached = 0
    while time.monotonic() < deadline and not ((checkpoints / "iter_0000040").is_dir() and reached >= 45):
        if losses.is_file():
            reached = max([0, *(json.loads(line)["iteration"] for line in losses.read_text().splitlines()
                                if line.strip().endswith("}"))])
        time.sleep(0.05)
    assert reached >= 45, (folder / "logs" / f"slurm-{job}.out").read_text()[-3000:]
    node2 = virtual_nodes.Node(2, cluster.instance)
    slurmd = int(cluster.pid_file("slurmd", node2.name).read_text().split()[0])
    step = [pid for pid in virtual_nodes.pids_in(node2) if pid != slurmd]  # node2's slurmstepd tree: the step
    assert step, "no process of the step found on node2"
    for pid in step:
        os.kill(pid, 9)
    killed = time.monotonic()
    events = _wait_chain_end(folder, 600)
    ends = [e for e in events if e["event"] == "end"]
    first_end = next(e for e in events if e["event"] == "end" and e["job_id"] == job)
    log = (folder / "logs" / f"slurm-{job}.out").read_text()
    assert first_end["state"] == "failed" and first_end["complete_iteration"] == 40, (first_end, log[-3000:])
    # the step ended soon after the kill, not at the walltime (chain.jsonl's time of the segment's end)
    after = first_end["time"] - (time.time() - (time.monotonic() - killed))
    assert after < 180, (after, log[-3000:])
    assert f"First task exited {NODE_EXIT_WAIT_S}s ago" in log and "task 1: running" in log, log[-3000:]
    assert f"[chain] segment {job} failed: node node2: its processes stopped answering" in log, log[-3000:]
    assert ends[-1]["state"] == "finished", log[-3000:]
    second = [e for e in events if e["event"] == "begin"][1]
    assert second["start_iteration"] == 40 and second["hosts"] == ["node1", "node2"]
    assert second["lost_iterations"] == first_end["reached_iteration"] - 40 > 0
    segs = lockfile.read_lock(folder / "run.lock.json").launch.launcher["segments"]
    assert segs[1]["lost_iterations"] == second["lost_iterations"] and segs[-1]["end_iteration"] == 120
    steps = [json.loads(line)["iteration"] for line in losses.read_text().splitlines()]
    assert steps == list(range(1, 121))  # the lost steps' records were cut back and trained again
    assert sorted(p.name for p in checkpoints.glob("iter_*")) == ["iter_0000040", "iter_0000080", "iter_0000120"]
    lock = lockfile.read_lock(folder / "run.lock.json")
    rep = _cli("reproduce", str(folder / "run.lock.json"), "--out", str(project / "rerun"),
               *(["--ignore"] if environment.source_hash() != lock.kit.source_hash else []))
    out = rep.stdout + rep.stderr
    assert rep.returncode == 0 and "120 step(s) of losses" in out and "identical" in out, out[-4000:]
    fault_matrix.record("slurm", "kill -9 of one node's step mid-step", survived="iteration 40's checkpoint; the "
                        "cut log lines under logs/aside/", resumed=f"iteration 40, by the next job on both nodes "
                        f"({second['lost_iterations']} iterations trained again)",
                        reproduced="yes: `experiment reproduce` (2 local processes, uninterrupted) exit 0",
                        message=f"[chain] segment {job} failed: node node2: its processes stopped answering (srun's task 1 "
                        "never ended: killed, or the node lost); ...", test="tests/launch/test_slurm.py::test_one_node_killed_mid_step_ends_the_step_and_the_next_"
                        "job_resumes_from_its_last_checkpoint")


def test_a_segment_killed_with_sigkill_mid_save_resumes_from_its_last_complete_checkpoint(slurm, project):
    """kill -9 of every process of the step while it writes a checkpoint (torchrun and its rank; the batch
    script lives on): the segment ends failed, the chain resubmits (it had saved a checkpoint before), the
    next segment resumes from the last complete checkpoint (the half-written one is never loaded), the lock
    records the iterations lost, and no half-written checkpoint is left. (A whole job cancelled with
    `scancel JOB` also stops its chain: that is how a user stops one.)"""
    folder = project / "training" / "tiny"
    _configure(folder, 'walltime = "5"\nexit_margin_seconds = 30', iters=120, save_interval=40)
    job = _job_id(_cli("run", str(folder), "--launcher", "slurm"))
    checkpoints, losses = folder / "checkpoints", folder / "logs" / "losses.jsonl"
    half_written = checkpoints / "iter_0000080.partial"  # checkpointing.save writes here, then renames
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not half_written.is_dir():
        time.sleep(0.02)
    assert half_written.is_dir(), "the save of iteration 80 was never seen in progress"
    assert (checkpoints / "iter_0000040").is_dir() and not (checkpoints / "iter_0000080").exists()
    step = subprocess.run(["pgrep", "-f", f"experiment.train.runner {folder}"], capture_output=True,
                          text=True, timeout=60)
    pids = [int(p) for p in step.stdout.split()]
    assert pids, "no process of the step found"
    for pid in pids:  # the processes this test's job started, by their ids
        os.kill(pid, 9)
    events = _wait_chain_end(folder, 400)
    ends = [e for e in events if e["event"] == "end"]
    assert ends[0]["state"] == "failed" and ends[0]["reached_iteration"] > ends[0]["complete_iteration"], ends
    assert ends[-1]["state"] == "finished", (folder / "logs" / f"slurm-{job}.out").read_text()[-3000:]
    second = [e for e in events if e["event"] == "begin"][1]
    assert second["start_iteration"] == ends[0]["complete_iteration"]
    assert second["lost_iterations"] == ends[0]["reached_iteration"] - ends[0]["complete_iteration"] > 0
    segs = lockfile.read_lock(folder / "run.lock.json").launch.launcher["segments"]
    assert segs[1]["lost_iterations"] == second["lost_iterations"] and segs[-1]["end_iteration"] == 120
    steps = [json.loads(line)["iteration"] for line in losses.read_text().splitlines()]
    assert steps == list(range(1, 121))  # the lost steps' records were cut back and trained again
    assert ends[0]["complete_iteration"] == 40 and second["start_iteration"] == 40
    assert sorted(p.name for p in checkpoints.glob("iter_*")) == ["iter_0000040", "iter_0000080", "iter_0000120"]
    aside = [json.loads(line) for line in (folder / "logs" / "aside.jsonl").read_text().splitlines()]
    assert any(e["what"] == "log" and e["from"] == "losses.jsonl" for e in aside), aside  # the cut lines, kept
    lock = lockfile.read_lock(folder / "run.lock.json")
    assert lock.checkpoint_record.aside == aside  # the lock lists what was kept aside
    rep = _cli("reproduce", str(folder / "run.lock.json"), "--out", str(project / "rerun"),
               *(["--ignore"] if environment.source_hash() != lock.kit.source_hash else []))
    out = rep.stdout + rep.stderr
    assert rep.returncode == 0 and "120 step(s) of losses" in out and "identical" in out, out[-4000:]
    fault_matrix.record("slurm", "kill -9 during a save", survived="iteration 40's checkpoint; the half-written "
                        "iteration 80 (a .partial, never loaded) removed; the cut log lines under logs/aside/",
                        resumed=f"iteration 40, by the next job ({second['lost_iterations']} iterations trained again)",
                        reproduced="yes: `experiment reproduce` (local, uninterrupted) exit 0",
                        message=f"[chain] segment {job} ended (failed) at iteration 40/120; next segment: job ...",
                        test="tests/launch/test_slurm.py::test_a_segment_killed_with_sigkill_mid_save_resumes_from_"
                        "its_last_complete_checkpoint")
