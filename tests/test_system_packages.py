"""The declared Debian packages (experiment/system_packages.py) drive .ci/run, the README's set-up block,
the corpus sources and the demo's prerequisite check; a missing one stops with the exact command."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from experiment import system_packages
from experiment.data.errors import DataError
from experiment.demo.corpus import Source, build_sample, default_sources

ROOT = Path(__file__).resolve().parent.parent
ABSENT = system_packages.SystemPackage("midtrain-kit-no-such-package", "corpus", "a test's missing package")


def _fresh_machine():
    spec = importlib.util.spec_from_file_location("fresh_machine", ROOT / ".ci" / "fresh_machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_corpus_source_names_a_declared_package_and_every_corpus_package_is_read():
    named = {s.package for s in default_sources() if s.package}
    assert named <= set(system_packages.names("corpus")), named - set(system_packages.names("corpus"))
    assert set(system_packages.names("corpus")) <= named  # nothing declared that no source reads


def test_ci_run_installs_every_declared_package_then_runs_the_tests_and_the_fresh_machine_test():
    printed = subprocess.run([sys.executable, "-m", "experiment.system_packages"], cwd=ROOT, capture_output=True,
                             text=True, check=True, timeout=120).stdout.split()
    assert printed == system_packages.names() and {"dict-gcide", "slurm-wlm", "munge", "chromium"} <= set(printed)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m experiment.system_packages |" in ci and 'apt-get install -y -q --no-install-recommends "${packages[@]}"' in ci
    assert ci.index("nox -s tests") < ci.index(".ci/fresh_machine.py")


def test_readme_setup_block_names_the_corpus_packages_and_is_what_the_fresh_machine_test_runs():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- setup:begin -->", 1)[1].split("<!-- setup:end -->", 1)[0]
    assert system_packages.install_command(system_packages.names("corpus")) in block
    commands = _fresh_machine().setup_commands(readme)
    assert any("pip install" in c and "nox" in c for c in commands), commands
    assert all(c in block for c in commands)


def test_a_missing_corpus_source_is_an_error_naming_its_package(tmp_path):
    gone = Source("en", "dictionary", "gcide", tmp_path / "no-dictd", lambda root: iter(()), "dict-gcide", "x")
    with pytest.raises(DataError) as err:
        build_sample(tmp_path / "out", mb=0.01, sources=[*default_sources()[:1], gone])
    assert "dict-gcide" in err.value.message and "apt-get install" in err.value.fix and "dict-gcide" in err.value.fix
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_without_root_a_missing_package_stops_with_the_exact_command(monkeypatch):
    monkeypatch.setattr(system_packages, "PACKAGES", (*system_packages.PACKAGES, ABSENT))
    monkeypatch.setattr(__import__("os"), "geteuid", lambda: 1000)
    assert system_packages.missing(system_packages.names("corpus")) == [ABSENT.name]
    with pytest.raises(system_packages.SystemPackagesMissing) as err:
        system_packages.ensure(("corpus",))
    assert err.value.packages == [ABSENT.name]
    assert err.value.fix == f"sudo apt-get update && sudo apt-get install -y --no-install-recommends {ABSENT.name}"


def test_the_demo_checks_its_prerequisites_before_stage_one(monkeypatch, tmp_path):
    from experiment.demo import run_demo

    monkeypatch.setattr(system_packages, "PACKAGES", (*system_packages.PACKAGES, ABSENT))
    monkeypatch.setattr(__import__("os"), "geteuid", lambda: 1000)
    with pytest.raises(system_packages.SystemPackagesMissing, match=ABSENT.name):
        run_demo(tmp_path)
    assert list(tmp_path.iterdir()) == []  # stopped before any stage wrote anything
    assert system_packages.demo_groups(True) == ("corpus", "container")
