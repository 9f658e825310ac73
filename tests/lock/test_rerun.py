"""A real run of the tiny folder (torchrun, megatron.core) and `experiment reproduce` of its lockfile:
the re-run gives the same per-step losses, the same checkpoint bytes, and a byte-identical lockfile."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from experiment.lock import environment, lockfile

pytestmark = pytest.mark.slow


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    # 900 s: a run or a reproduction of the tiny folder (torchrun, 4 steps): a minute or two, loaded
    return subprocess.run([sys.executable, "-m", "experiment.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=900)


def test_run_then_reproduce_is_byte_identical(project):
    folder = project / "training" / "tiny"
    run = _cli("run", str(folder))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lock_path = folder / "run.lock.json"
    lock = lockfile.read_lock(lock_path)
    assert [s[0] for s in lock.outputs.losses.steps] == [1, 2, 3, 4]
    assert set(lock.outputs.checkpoints) == {"iter_0000004"}  # the last one by default
    assert lock.outputs.checkpoints["iter_0000004"].tensors
    assert lock.determinism["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

    rep = _cli("reproduce", str(lock_path), "--out", str(project / "rerun"))
    out = rep.stdout + rep.stderr
    code_moved = environment.source_hash() != lock.kit.source_hash
    if code_moved:  # someone edited the kit while the test ran: reproduce must say so, and only that
        assert rep.returncode == 1 and "BLOCKS code" in out
        rep = _cli("reproduce", str(lock_path), "--out", str(project / "rerun"), "--ignore")
        out = rep.stdout + rep.stderr
    assert rep.returncode == 0, out[-4000:]
    assert "4 step(s) of losses" in out and "identical" in out
    relock = project / "rerun" / "training" / "tiny" / "run.lock.json"
    again = json.loads(relock.read_text())
    assert again["outputs"] == lock.dump()["outputs"]  # losses, grad norms, checkpoint files and tensors
    if not code_moved:
        assert relock.read_bytes() == lock_path.read_bytes()
        assert "byte-identical" in out
