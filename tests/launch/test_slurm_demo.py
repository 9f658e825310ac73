"""The README's demo folder (training/demo: SmolLM2-135M, real Debian text, 2 ranks) trained as a job of the
real Slurm, in a root of its own built by the demo's own stages; its lockfile re-run locally to the byte."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import experiment.demo as demo
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


def test_demo_folder_trains_as_a_slurm_job_and_reproduces_locally(slurm, tmp_path):
    require_system_packages("corpus")
    folder = _demo_inputs(tmp_path)
    toml = folder / "experiment.toml"
    text = toml.read_text()
    assert 'launcher = "local"\nnproc_per_node = 2\n' in text
    # the folder as a user points it at a cluster: launcher, walltime, the node's CPUs for its 2 ranks
    toml.write_text(text.replace('launcher = "local"\nnproc_per_node = 2\n',
                                 'launcher = "slurm"\nnproc_per_node = 2\nwalltime = "15"\ncpus_per_task = 2\n'))
    job = _job_id(_cli("run", str(folder)))
    ends = [e for e in _wait_chain_end(folder, 900) if e["event"] == "end"]
    assert ends[-1]["state"] == "finished", (folder / "logs" / f"slurm-{job}.out").read_text()[-3000:]

    lock = lockfile.read_lock(folder / "run.lock.json")  # written by the job
    assert lock.launch.world_size == 2 and lock.launch.launcher["launcher"] == "slurm"
    assert [(s["job_id"], s["start_iteration"], s["end_iteration"]) for s in lock.launch.launcher["segments"]] \
        == [(job, 0, 8)]
    assert list(lock.outputs.checkpoints) == ["iter_0000008"]
    losses = (folder / "logs" / "losses.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in losses] == list(range(1, 9))
    evals = [json.loads(line) for line in (folder / "logs" / "eval.jsonl").read_text().splitlines()]
    loss = {(e["domain"], e["iteration"]): float.fromhex(e["loss"]) for e in evals}
    assert loss[("ja/manual", 8)] < loss[("ja/manual", 0)]  # the new language improves, as in the local demo

    # the Slurm run's lock re-run by the local launcher: the same losses and checkpoint, to the byte
    rep = _cli("reproduce", str(folder / "run.lock.json"), "--out", str(tmp_path / "rerun-local"),
               *(["--ignore"] if environment.source_hash() != lock.kit.source_hash else []))
    out = rep.stdout + rep.stderr
    assert rep.returncode == 0 and "8 step(s) of losses" in out and "identical" in out, out[-4000:]
    relock = lockfile.read_lock(tmp_path / "rerun-local" / demo.DEMO_FOLDER / "run.lock.json")
    assert relock.dump()["outputs"] == lock.dump()["outputs"]
