"""Every training folder shipped under training/ is valid and its cluster job scripts render."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from experiment.folder import errors
from experiment.mixture.checks import check_all

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = sorted(p.parent for p in (ROOT / "training").glob("*/experiment.toml"))


def test_the_seed_workflows_and_the_demo_are_shipped():
    names = {f.name for f in FOLDERS}
    assert {"demo", "llama3-8b-dolmino-50b", "llama2-7b-en-ar", "llama2-7b-snak"} <= names


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_folder_passes_check(folder):
    loaded, problems = check_all(folder)
    assert loaded is not None
    assert errors(problems) == []
    # what may be absent is only what a user makes on their machine: base weights and tokenized shards
    for p in problems:
        assert p.missing_artifact and ("checkpoint.base" in p.field or "not exist" in p.message), p


@pytest.mark.parametrize("launcher", ["slurm", "pbs"])
@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_job_scripts_render(folder, launcher):
    out = subprocess.run(
        [sys.executable, "-m", "experiment.cli", "run", str(folder), "--launcher", launcher, "--dry-run"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    script = folder / "launch" / f"{launcher}.sh"
    assert script.is_file()
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], timeout=60).returncode == 0
    loaded, _ = check_all(folder)
    nproc = loaded.config.launch.nproc_per_node
    # torchrun, as the job's Python runs it (`python -m torch.distributed.run`, the same entry point)
    assert f"-m torch.distributed.run --nnodes={loaded.config.launch.nnodes} --nproc-per-node={nproc}" in text
    assert f"-m experiment.train.runner {folder}" in text
    assert ("#SBATCH" in text) == (launcher == "slurm") and ("#PBS" in text) == (launcher == "pbs")
