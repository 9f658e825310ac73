"""The README's demo folder (training/demo: SmolLM2-135M, real Debian text, 2 ranks) trained as one job across
two nodes of the virtual cluster (1 rank per node, gloo over the nodes' network), in a root of its own built by
the demo's own stages; its lockfile re-run on one machine as 2 local processes (the same world, layout and data
order), to the byte: a 2-node run is byte-identical to a 1-node run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import experiment.demo as demo
from experiment.launch.slurm_local import NODES_PARTITION
from experiment.lock import environment, lockfile
from tests.conftest import require_system_packages
from tests.launch.test_slurm import _cli, _job_id, _wait_chain_end

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("logs", "checkpoints", "mixture", "launch", "run.lock.json", "report.html", ".reproduce")

pytestmark = pytest.mark.slow


def _demo_inputs(root: Path) -> Path:
    """The demo folder as committed, and everything it points at, built by the demo's stages up to the plan."""
    folder = root / demo.DEMO_FOLDER
    shutil.copytree(REPO / demo.DEMO_FOLDER, folder, ignore=shutil.ignore_patterns(*GENERATED))
    for stage in demo.stages(root, 3.0, container=False):
        if stage.argv[0] == "run":
            return folder
        r = subprocess.run([sys.executable, "-m", stage.module, *stage.argv], cwd=root, capture_output=True,
                           text=True, timeout=1200)  # corpus, shards, signature, SmolLM2 import: minutes each
        assert r.returncode == 0, f"{stage.shown()}\n{(r.stdout + r.stderr)[-3000:]}"
    raise AssertionError("the demo has no training stage")


def test_demo_folder_trains_across_two_nodes_and_reproduces_on_one_machine(cluster, tmp_path):
    require_system_packages("corpus")
    folder = _demo_inputs(tmp_path)
    toml = folder / "experiment.toml"
    text = toml.read_text()
    assert 'launcher = "local"\nnproc_per_node = 2\n' in text
    # the folder as a user points it at a cluster: launcher, 2 nodes of 1 rank each, their partition and CPUs
    toml.write_text(text.replace('launcher = "local"\nnproc_per_node = 2\n',
                                 f'launcher = "slurm"\nnnodes = 2\nnproc_per_node = 1\npartition = "{NODES_PARTITION}"\n'
                                 'walltime = "15"\ncpus_per_task = 1\n'))
    # the demo's own 8 steps (fewer are refused: 4 steps = 4,096 tokens would give 5 small shards of its mixture
    # less than one sample)
    job = _job_id(_cli("run", str(folder)))
    ends = [e for e in _wait_chain_end(folder, 900) if e["event"] == "end"]
    assert ends[-1]["state"] == "finished", (folder / "logs" / f"slurm-{job}.out").read_text()[-3000:]

    lock = lockfile.read_lock(folder / "run.lock.json")  # written by the job
    assert lock.launch.world_size == 2 and lock.launch.launcher["launcher"] == "slurm"
    assert (lock.launch.launcher["nnodes"], lock.launch.launcher["nproc_per_node"]) == (2, 1)
    assert [(s["job_id"], s["start_iteration"], s["end_iteration"], s["hosts"])
            for s in lock.launch.launcher["segments"]] == [(job, 0, 8, ["node1", "node2"])]
    log = (folder / "logs" / f"slurm-{job}.out").read_text()
    for rank, node in enumerate(("node1", "node2")):  # every rank on its node, with its node rank
        assert f"rank {rank}/2 on {node} (node rank {rank}" in log, log[-3000:]
    assert list(lock.outputs.checkpoints) == ["iter_0000008"]
    losses = (folder / "logs" / "losses.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in losses] == list(range(1, 9))
    evals = [json.loads(line) for line in (folder / "logs" / "eval.jsonl").read_text().splitlines()]
    loss = {(e["domain"], e["iteration"]): float.fromhex(e["loss"]) for e in evals}
    assert loss[("ja/manual", 8)] < loss[("ja/manual", 0)]  # the new language improves, as in the local demo

    # the 2-node lock re-run by the local launcher as 2 processes: the same losses and checkpoint, to the byte
    rep = _cli("reproduce", str(folder / "run.lock.json"), "--out", str(tmp_path / "rerun-local"),
               *(["--ignore"] if environment.source_hash() != lock.kit.source_hash else []))
    out = rep.stdout + rep.stderr
    assert "the lock ran on 2 nodes (node1, node2): re-running its world size 2 as 2 local processes" in out, out[-4000:]
    assert rep.returncode == 0 and "8 step(s) of losses" in out and "identical" in out, out[-4000:]
    relock = lockfile.read_lock(tmp_path / "rerun-local" / demo.DEMO_FOLDER / "run.lock.json")
    assert relock.dump()["outputs"] == lock.dump()["outputs"]
