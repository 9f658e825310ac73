"""`experiment data tokenize --tasks N --executor slurm` across the virtual cluster's nodes: datatrove's
SlurmPipelineExecutor submits a job array to partition `nodes`, one task per node (1 CPU each), each task
tokenizes its share and its log names its host, and the shards are byte for byte those of one local process."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest

from experiment.data import tokenize_tasks
from experiment.data.tokenize import TokenizeConfig
from experiment.data.tokenize_tasks import SlurmOptions, run_tasks
from experiment.launch.slurm_local import NODES_PARTITION

pytestmark = pytest.mark.slow


def _shards(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.suffix in (".bin", ".idx")}


def test_tokenization_spread_over_two_nodes_equals_the_local_run(cluster, sample_dir, sp_model_path, sp_shards,
                                                                 tmp_path):
    out = tmp_path / "out"
    cfg = TokenizeConfig(inputs=[sample_dir], output=out, tokenizer=sp_model_path, progress=False)
    venv_bin = Path(sys.executable).parent  # datatrove's tasks run its launch_pickled_pipeline from PATH
    options = SlurmOptions(partition=NODES_PARTITION, time="00:10:00", cpus_per_task=1, mem_per_cpu_gb=1.0,
                           env_command=f"export PATH={venv_bin}:$PATH")
    assert run_tasks(cfg, 2, executor="slurm", slurm=options) is None  # submitted, not waited for
    done = out / tokenize_tasks.LOGS / "completions"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(done.glob("*"))) < 2:
        time.sleep(1)
    logs = "\n".join(p.read_text()[-1500:] for p in (out / tokenize_tasks.LOGS).rglob("*.out"))
    assert sorted(p.name for p in done.glob("*")) == ["00000", "00001"], logs
    assert _shards(out) == _shards(sp_shards)
    # one task per node: each task's log and report name the node it ran on
    hosts = {json.loads((out / tokenize_tasks.LOGS / "reports" / f"{r:05d}.json").read_text())["host"] for r in (0, 1)}
    assert hosts == {"node1", "node2"}, hosts
    for host in hosts:
        assert f"on host {host}:" in logs, logs
