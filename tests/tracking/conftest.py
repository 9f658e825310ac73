"""Three real runs of the tiny lock project (tests/lock/tinyproject.py: torchrun, megatron.core, 4 steps),
shared by the compare, tracking and report tests: A and A2 are the same folder run twice; B is A run with
``--set training.lr=0.002`` and both trackers switched on by ``--set`` (MLflow's SQLite store, W&B offline),
with sentinel credentials in its environment that must never reach a file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SECRETS = {"WANDB_API_KEY": "sentinel-wandb-key-7f3a9c", "MLFLOW_TRACKING_TOKEN": "sentinel-mlflow-token-51d2e8",
           "MLFLOW_TRACKING_PASSWORD": "sentinel-mlflow-password-0b6c4d"}
B_SETS = ("training.lr=0.002", "tracking.mlflow=true", "tracking.wandb=true")
EVAL = "valid_fraction = 0.0\n", "valid_fraction = 0.2\n"
EVAL_TRAINING = "eval_interval = 1000\neval_iters = 0\n", "eval_interval = 2\neval_iters = 1\n"


def run_cli(*args: str, env: dict | None = None, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiment.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


@pytest.fixture(scope="session")
def three_runs(_project_template, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    folders = {}
    for name in ("a", "a2", "b"):
        dest = root / name
        shutil.copytree(_project_template, dest, symlinks=True)
        toml = dest / "training" / "tiny" / "experiment.toml"
        text = toml.read_text().replace(*EVAL).replace(*EVAL_TRAINING)
        assert "valid_fraction = 0.2" in text and "eval_iters = 1" in text
        toml.write_text(text)
        folders[name] = dest / "training" / "tiny"
    procs = {n: subprocess.Popen([sys.executable, "-m", "experiment.cli", "run", str(folders[n])],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env={**os.environ, "PYTHONWARNINGS": "ignore"}) for n in ("a", "a2")}
    b = run_cli("run", str(folders["b"]), *[a for s in B_SETS for a in ("--set", s)], env=SECRETS)
    assert b.returncode == 0, (b.stdout + b.stderr)[-4000:]
    (folders["b"] / "logs" / "run.out").write_text(b.stdout + b.stderr)  # scanned for secrets too
    for n, p in procs.items():
        out, _ = p.communicate(timeout=400)
        assert p.returncode == 0, out[-4000:]
    return folders
