"""What `experiment run --launcher slurm` refuses before submitting: a request the partition can never run
(CPUs, GPUs, nodes, walltime vs. `scontrol`'s view of it) and a `--signal=TERM` lead that fires before the
first step. Each refusal is one line (experiment.toml, the field, both numbers, the fix), exit code 2, and
nothing is written or submitted. No training: the one accepted job waits behind a blocker and is cancelled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiment.launch import partition
from experiment.launch.slurm_local import MAX_TIME, NODES_PARTITION, PARTITION

# ------------------------------------------------------------------ parsing scontrol -o (no scheduler)

PARTITIONS = (
    "PartitionName=debug AllowGroups=ALL Default=YES MaxNodes=UNLIMITED MaxTime=1-00:00:00 Nodes=n[1-2] "
    "State=UP TotalCPUs=4 TotalNodes=2 MaxCPUsPerNode=UNLIMITED\n"
    "PartitionName=gpu Default=NO MaxNodes=2 MaxTime=INFINITE Nodes=g[1-4] State=UP TotalNodes=4\n")
NODES = (
    "NodeName=n1 Arch=x86_64 CPUAlloc=0 CPUTot=2 Gres=(null) OS=Linux 6.1.0 #1 SMP Debian (2024-02-01) "
    "Partitions=debug RealMemory=7000\n"
    "NodeName=n2 CPUTot=2 Gres=(null) Partitions=debug\n"
    "NodeName=g1 CPUTot=64 CPUEfctv=62 Gres=gpu:a100:8(S:0-1) Partitions=gpu\n"
    "NodeName=g2 CPUTot=64 Gres=gpu:a100:4(S:0,1),gpu:v100:2 Partitions=gpu,debug2\n"
    "NodeName=g3 CPUTot=64 Gres=gpu:8 Partitions=gpu\n"
    "NodeName=g4 CPUTot=32 Gres=gpu:8 Partitions=gpu\n")


def test_scontrol_lines_give_the_partition_and_its_nodes():
    debug = partition.parse(PARTITIONS, NODES, None)  # no launch.partition: the Default=YES one
    assert (debug.name, debug.max_time_s, debug.total_nodes, debug.max_nodes) == ("debug", 86400, 2, None)
    assert [(n.name, n.cpus, n.gpus) for n in debug.nodes] == [("n1", 2, 0), ("n2", 2, 0)]
    gpu = partition.parse(PARTITIONS, NODES, "gpu")
    assert gpu.max_time_s is None and gpu.max_nodes == 2
    assert [(n.cpus, n.gpus) for n in gpu.nodes] == [(62, 8), (64, 6), (64, 8), (32, 8)]  # CPUEfctv first
    assert partition.parse(PARTITIONS, NODES, "nosuch") is None  # left to sbatch's own error


def test_each_mismatch_is_one_line_with_field_numbers_and_fix():
    debug = partition.parse(PARTITIONS, NODES, "debug")
    fits = partition.Ask(cpus_per_node=2, gpus_per_node=0, nnodes=2, walltime="24:00:00")
    assert partition.problems(fits, debug) == []
    asked = partition.Ask(cpus_per_node=4, gpus_per_node=1, nnodes=3, walltime="1-00:00:01",
                          cpus_note=" (default: 2 per rank x launch.nproc_per_node 2)")
    out = partition.problems(asked, debug)
    assert len(out) == 4 and all(p.startswith("experiment.toml: launch.") and "fix: " in p for p in out), out
    assert "launch.cpus_per_task (default: 2 per rank x launch.nproc_per_node 2) asks 4 CPUs per node" in out[0]
    assert "have at most 2" in out[0] and "launch.cpus_per_task = 2 or less" in out[0]
    assert "launch.gpus_per_node asks 1 GPUs per node" in out[1] and "at most 0" in out[1]
    assert "launch.nnodes asks 3 nodes, but partition debug has 2 node(s)" in out[2]
    assert "launch.walltime 1-00:00:01 (86401 s) exceeds the MaxTime 1-00:00:00 (86400 s)" in out[3]

    gpu = partition.parse(PARTITIONS, NODES, "gpu")
    assert partition.problems(partition.Ask(48, 8, 2, "72:00:00"), gpu) == []  # INFINITE: no limit
    assert "has 4 node(s) and MaxNodes=2" in partition.problems(partition.Ask(2, 0, 3, "1"), gpu)[0]
    # some nodes have the CPUs, some the GPUs, only g1 and g3 both: 3 such nodes are not there
    mixed = partition.parse(PARTITIONS.replace("MaxNodes=2", "MaxNodes=4"), NODES, "gpu")
    out = partition.problems(partition.Ask(60, 8, 3, "1"), mixed)
    assert len(out) == 1 and "only 2 node(s) of partition gpu have that" in out[0], out


def test_the_term_lead_uses_the_start_up_and_step_measured_on_the_folder(tmp_path):
    """walltime - signal_seconds must hold the start-up (chain.jsonl: begin -> first_step) and one step
    (run_status.json: tokens/s); STARTUP_GUESS_S and no step before anything was measured."""
    import json
    from types import SimpleNamespace

    from experiment.launch.launchers import signal_problems

    def folder(walltime, signal):
        launch = SimpleNamespace(walltime=walltime, signal_seconds=signal, exit_margin_seconds=0)
        config = SimpleNamespace(launch=launch, training=SimpleNamespace(global_batch_size=4),
                                 model=SimpleNamespace(seq_length=32))
        return SimpleNamespace(config=config, path=tmp_path)

    assert signal_problems(folder("2", 110)) == []  # 10 s left: the start-up guess
    assert "SIGTERM 9 s after the job starts" in signal_problems(folder("2", 111))[0]
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "chain.jsonl").write_text(
        json.dumps({"event": "begin", "job_id": "7", "time": 100.0}) + "\n"
        + json.dumps({"event": "first_step", "job_id": "7", "time": 140.0}) + "\n")
    (tmp_path / "logs" / "run_status.json").write_text(json.dumps({"tokens_per_s": 64.0}))  # 128 tokens: 2 s
    assert signal_problems(folder("2", 78)) == []
    out = signal_problems(folder("2", 80))
    assert len(out) == 1 and "start-up 40 s + one step 2.0 s = 42 s" in out[0], out
    assert "lower launch.signal_seconds to 78 or less, or raise launch.walltime to at least 122 s (00:02:02)" in out[0]


# ------------------------------------------------------------------ live: the local Slurm, no training

def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiment.cli", *args], capture_output=True, text=True,
                          timeout=300)


def _configure(folder: Path, launch: str, nproc: int = 1) -> None:
    toml = folder / "experiment.toml"
    toml.write_text(toml.read_text().replace("[launch]\nnproc_per_node = 1\n",
                                             f"[launch]\nnproc_per_node = {nproc}\n{launch}\n"))


def _jobs_of(folder: Path) -> list[str]:
    """Jobs the scheduler knows (ended ones included) whose working directory is this folder."""
    res = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%Z"], capture_output=True, text=True, check=True,
                         timeout=60)
    return [line.split("|")[0] for line in res.stdout.splitlines() if line.split("|")[-1] == str(folder)]


def _refused(folder: Path, *needles: str) -> str:
    res = _cli("run", str(folder), "--launcher", "slurm")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "refusing to launch" in res.stderr, res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr
    assert not (folder / "logs" / "chain.jsonl").exists() and not (folder / "launch" / "slurm.sh").exists()
    assert _jobs_of(folder) == []
    return res.stderr


def test_two_ranks_ask_more_cpus_than_the_node_has(slurm, project):
    folder = project / "training" / "tiny"
    cpus = os.cpu_count() or 1  # the local Slurm's one node has every CPU of this machine
    extra = "" if 2 * 2 > cpus else f"cpus_per_task = {cpus + 1}"  # the default (2 per rank) on a 2-CPU node
    _configure(folder, f'walltime = "5"\nexit_margin_seconds = 30\n{extra}', nproc=2)
    asked = 4 if not extra else cpus + 1
    err = _refused(folder, f"asks {asked} CPUs per node, but the nodes of partition {PARTITION} have at most "
                           f"{cpus}", f"launch.cpus_per_task = {cpus} or less")
    assert "Reason=PartitionConfig" in err
    dry = _cli("run", str(folder), "--launcher", "slurm", "--dry-run")  # --dry-run asks no scheduler
    assert dry.returncode == 0 and "#SBATCH --cpus-per-task" in dry.stdout, dry.stderr


def test_gpus_nodes_without_gres_do_not_have(slurm, project):
    folder = project / "training" / "tiny"
    _configure(folder, 'walltime = "5"\nexit_margin_seconds = 30\ncpus_per_task = 1\ngpus_per_node = 1\nnnodes = 2')
    _refused(folder, "launch.gpus_per_node asks 1 GPUs per node", "have at most 0",
             f"launch.nnodes asks 2 nodes, but partition {PARTITION} has 1 node(s)")


def test_a_term_signal_before_the_first_step_is_refused(slurm, project):
    folder = project / "training" / "tiny"  # the exit margin fits; only the default signal_seconds 120 does not
    _configure(folder, 'walltime = "00:02:00"\nexit_margin_seconds = 30\ncpus_per_task = 1')
    err = _refused(folder, "launch.signal_seconds 120 sends SIGTERM at the job's start (launch.walltime "
                           "00:02:00 = 120 s)", "lower launch.signal_seconds to 110 or less")
    assert "too short" not in err  # the walltime check itself passes
    assert len([line for line in err.splitlines() if "experiment.toml" in line]) == 1
    dry = _cli("run", str(folder), "--launcher", "slurm", "--dry-run")  # needs no scheduler: refused there too
    assert dry.returncode == 2 and "launch.signal_seconds 120" in dry.stderr, dry.stderr
    pbs = _cli("run", str(folder), "--launcher", "pbs", "--dry-run")  # the PBS script sends no such signal
    assert pbs.returncode == 0 and "signal_seconds" not in pbs.stderr, pbs.stderr


def test_a_walltime_beyond_the_partition_maxtime_is_refused(slurm, project):
    limit = subprocess.run(["scontrol", "show", "partition", "-o", PARTITION], capture_output=True, text=True,
                           timeout=60)
    if "MaxTime=UNLIMITED" in limit.stdout or "MaxTime=INFINITE" in limit.stdout:
        pytest.skip("the running local Slurm ($MIDTRAIN_SLURM_DIR) predates its finite MaxTime; restart it")
    folder = project / "training" / "tiny"
    _configure(folder, 'walltime = "1-00:01:00"\ncpus_per_task = 1')
    _refused(folder, f"launch.walltime 1-00:01:00 (86460 s) exceeds the MaxTime {MAX_TIME} (86400 s) of "
                     f"partition {PARTITION}", f"fix: set launch.walltime to {MAX_TIME} or less")


def test_a_request_that_fits_is_submitted(slurm, project):
    """The checks do not refuse good input: the partition's whole node, its full MaxTime, a signal lead that
    leaves time for the first step. The job waits behind a blocker holding every CPU and is cancelled."""
    folder = project / "training" / "tiny"
    cpus = os.cpu_count() or 1
    _configure(folder, f'walltime = "{MAX_TIME}"\ncpus_per_task = {cpus}\nsignal_seconds = 60')
    blocker = subprocess.run(["sbatch", "--parsable", f"--cpus-per-task={cpus}", "--time=2", "--output=/dev/null",
                              "--wrap", "sleep 60"], capture_output=True, text=True, check=True,
                             timeout=60).stdout.strip()
    try:
        res = _cli("run", str(folder), "--launcher", "slurm")
        assert res.returncode == 0, res.stdout + res.stderr
        job = res.stdout.strip().splitlines()[-1]
        assert _jobs_of(folder) == [job]
        subprocess.run(["scancel", job], check=True, timeout=60)
    finally:
        subprocess.run(["scancel", blocker], check=False, timeout=60)


def test_more_nodes_or_cpus_than_the_virtual_cluster_has_are_refused(cluster, project):
    """The virtual cluster's partition `nodes` (node1..nodeN, the machine's cores split between them), as
    `scontrol` reports it: more nodes than it has, and more CPUs per node than a node has, are refused before
    submission with both numbers."""
    folder = project / "training" / "tiny"
    per_node = max(1, (os.cpu_count() or 1) // cluster.nodes)
    toml = folder / "experiment.toml"  # a batch that nodes+1 ranks divide, so only the partition refuses
    toml.write_text(toml.read_text().replace("micro_batch_size = 2", "micro_batch_size = 1")
                    .replace("global_batch_size = 4", f"global_batch_size = {4 * (cluster.nodes + 1)}"))
    _configure(folder, f'walltime = "5"\nexit_margin_seconds = 30\npartition = "{NODES_PARTITION}"\n'
                       f'nnodes = {cluster.nodes + 1}\ncpus_per_task = {per_node + 1}')
    _refused(folder, f"launch.nnodes asks {cluster.nodes + 1} nodes, but partition {NODES_PARTITION} has "
                     f"{cluster.nodes} node(s)", f"set launch.nnodes = {cluster.nodes} or less",
             f"launch.cpus_per_task asks {per_node + 1} CPUs per node, but the nodes of partition {NODES_PARTITION} "
             f"have at most {per_node}")
