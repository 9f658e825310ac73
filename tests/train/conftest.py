"""Fixtures for the training tests: a real tokenized corpus (built once) and a torchrun helper."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from experiment import determinism
from experiment.launch.local import Launch, local_argv
from tests.train.corpus import build_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, sp_model_path) -> Path:
    """signature.json of two real-text domains (Python docs, Debian Reference), ~240k tokens."""
    return build_corpus(tmp_path_factory.mktemp("corpus"), sp_model_path)


def torchrun_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.update(determinism.environment(True))
    return env


def torchrun(folder: Path, nproc: int = 2, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run the runner under real torchrun (free rendezvous port), return its output."""
    argv = local_argv(Launch(folder, 1, nproc, runner_args=tuple(args)))
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=torchrun_env())


def start_torchrun(folder: Path, nproc: int = 2) -> subprocess.Popen:
    """The same, in the background and in its own process group (so the test can SIGKILL all of it)."""
    argv = local_argv(Launch(folder, 1, nproc))
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=torchrun_env(), start_new_session=True)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root (relative name -> content)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def reference(corpus, tmp_path_factory) -> Path:
    """An uninterrupted DP=2 run from scratch through `experiment run` (local launcher): 8 iterations,
    checkpoints at 4 and 8, then the run's lockfile. Once per session: every fault test compares its
    ending with these bytes."""
    from typer.testing import CliRunner

    from experiment.cli import app
    from tests.train.corpus import make_folder

    folder = make_folder(tmp_path_factory.mktemp("ref") / "run", corpus, iters=8)
    res = CliRunner().invoke(app, ["run", str(folder)])  # torchrun's own output goes to the real fds
    assert res.exit_code == 0, res.output
    return folder
