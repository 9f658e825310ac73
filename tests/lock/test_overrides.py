"""`experiment run --set section.key=value`: validated by the folder's own models, recorded in the lockfile,
applied again by `reproduce` (the tiny lock project; no training)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from experiment.folder import FolderError, load_schema
from experiment.lock import lockfile, reproduce, verify
from experiment.lock.hashing import HashCache


def test_overrides_round_trip_through_the_lockfile(project):
    path = project / "training" / "tiny"
    sets = ("training.lr=1e-4", "training.min_lr=1e-5", "data.token_budget=2B", "model.overrides.num_layers=2")
    folder = load_schema(path, require_artifacts=False, overrides=sets)
    assert folder.config.training.lr == 1e-4 and folder.config.data.token_budget == "2B"
    assert folder.config.model.shape.num_layers == 2
    written = lockfile.write_run_lock(folder, determinism_env=verify.determinism_now(folder))
    lock = lockfile.read_lock(written)
    assert lock.config.overrides == list(sets)
    assert lock.config.experiment["training"]["lr"] == 1e-4
    assert lock.config.model_shape["num_layers"] == 2
    # experiment.toml itself is untouched: the folder's file hashes still verify
    assert (path / "experiment.toml").read_text().count("lr = 0.001") == 1

    again = verify.locked_overrides(lock)
    assert again == sets
    reloaded = verify.load_folder(path, again)
    assert reloaded.config == folder.config
    findings = verify.verify(lock, reloaded, cache=HashCache(None))
    assert not [f for f in findings if f.blocking], findings
    cmd = reproduce.rerun_command(path, reproduce.ReproduceOptions(lockfile=written, overrides=again))
    assert cmd[-8:] == [a for s in sets for a in ("--set", s)]
    # the launcher is always named (default local): a folder set to slurm would otherwise submit and return
    assert cmd[cmd.index("--launcher") + 1] == "local" and "--wait" not in cmd
    # the re-run's own lock records the same list, so the lock of a reproduction equals the original's
    assert lockfile.config_section(reloaded, None) == lock.config.dump() | {"resolved": {}}


def test_a_lock_without_overrides_reads_as_none(project):
    folder = load_schema(project / "training" / "tiny", require_artifacts=False)
    lock = lockfile.read_lock(lockfile.write_run_lock(folder))
    assert lock.config.overrides == []
    old = lockfile.read_lock(Path(__file__).parent / "fixtures" / "tiny.run.lock.v1.json")  # written before --set
    assert "overrides" not in old.config.dump() and verify.locked_overrides(old) == ()


def _errors(project, *sets) -> str:
    try:
        load_schema(project / "training" / "tiny", require_artifacts=False, overrides=sets)
    except FolderError as err:
        return str(err)
    raise AssertionError(f"{sets} was accepted")


def test_unknown_key_and_wrong_type_name_the_field_and_the_fix(project):
    msg = _errors(project, "training.lrr=1e-4")
    assert "--set training.lrr=1e-4: training.lrr:" in msg and "drop the --set or correct its spelling" in msg
    msg = _errors(project, "training.lr=fast")
    assert "--set training.lr=fast: training.lr:" in msg and "valid number" in msg
    msg = _errors(project, "training.lr=1e-1", "training.min_lr=0.5")  # a cross-field check of the section
    assert "min_lr (0.5) is larger than lr (0.1)" in msg and "--set" in msg
    msg = _errors(project, "training.lr")
    assert "not of the form section.key=value" in msg
    msg = _errors(project, "training.lr.x=1")
    assert "training.lr: [error] is a value, not a table" in msg


def test_cli_refuses_a_bad_override_without_a_traceback(project):
    res = subprocess.run([sys.executable, "-m", "experiment.cli", "run", str(project / "training" / "tiny"),
                          "--dry-run", "--set", "training.warmup=10"], capture_output=True, text=True,
                         timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 2 and "Traceback" not in out
    assert "--set training.warmup=10: training.warmup" in out and "Extra inputs are not permitted" in out
    ok = subprocess.run([sys.executable, "-m", "experiment.cli", "run", str(project / "training" / "tiny"),
                         "--dry-run", "--set", "training.lr=2e-4"], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "--set training.lr=2e-4" in ok.stdout
