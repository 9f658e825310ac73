"""`experiment compare A B` on real runs: the same folder run twice is identical; the run with a changed lr
names the lr (a `--set` recorded in its lock) and its first differing step; --rtol accepts it; another model
is said to be one."""

from __future__ import annotations

import pytest

from experiment import compare
from experiment.folder import load_schema
from experiment.lock import lockfile
from tests.tracking.conftest import run_cli

pytestmark = pytest.mark.slow


def test_two_identical_runs_compare_equal(three_runs, tmp_path):
    png = tmp_path / "same.png"
    res = run_cli("compare", str(three_runs["a"]), str(three_runs["a2"] / "run.lock.json"), "--plot", str(png))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "identical: 4 step(s) of losses bit for bit" in out and "same config, blend, data signatures" in out
    assert png.stat().st_size > 5000


def test_changed_lr_names_the_key_and_the_first_differing_step(three_runs, tmp_path):
    c = compare.compare(three_runs["a"], three_runs["b"], plot_path=tmp_path / "lr.png")
    keys = {(d.area, d.key): (d.a, d.b) for d in c.differences}
    assert keys[("config", "training.lr")] == ("0.001", "0.002")
    assert ("config", "tracking.mlflow") in keys and ("config", "overrides") in keys
    assert not c.different_models and not [d for d in c.differences if d.area in ("blend", "signature")]
    lc = c.losses
    assert lc.steps == 4 and lc.first_step == 2  # step 1's loss is computed before the first update
    assert 0 < lc.max_abs and 0 < lc.max_rel < 0.05 and not c.agree
    res = run_cli("compare", str(three_runs["a"]), str(three_runs["b"]), "--plot", str(tmp_path / "x.png"))
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "first differing step 2" in out and "training.lr" in out
    ok = run_cli("compare", str(three_runs["a"]), str(three_runs["b"]), "--rtol", "0.05",
                 "--plot", str(tmp_path / "y.png"))
    assert ok.returncode == 0 and "within rtol 0.05" in ok.stdout + ok.stderr
    tight = run_cli("compare", str(three_runs["a"]), str(three_runs["b"]), "--rtol", "1e-6",
                    "--plot", str(tmp_path / "z.png"))
    assert tight.returncode == 1 and "NOT within rtol" in tight.stdout + tight.stderr


def test_different_models_are_said_so(three_runs, tmp_path):
    other = load_schema(three_runs["a"], require_artifacts=False, overrides=("model.overrides.num_layers=4",))
    lock = lockfile.write_run_lock(other, output=tmp_path / "other.lock.json")
    res = run_cli("compare", str(three_runs["a"] / "run.lock.json"), str(lock), "--plot", str(tmp_path / "m.png"))
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "different models: shape.num_layers" in out, out


def test_not_a_run_is_refused_with_the_fix(tmp_path):
    res = run_cli("compare", str(tmp_path), str(tmp_path))
    out = res.stdout + res.stderr
    assert res.returncode == 2 and "Traceback" not in out and "fix: give training/<name>" in out
