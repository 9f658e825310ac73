"""Fixtures: a fresh copy of the tiny project (tests/lock/tinyproject.py) per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.lock.tinyproject import make_project


@pytest.fixture(scope="session")
def _project_template(tmp_path_factory, sp_model_path) -> Path:
    """Built once per session."""
    return make_project(tmp_path_factory.mktemp("lockproject") / "project", sp_model_path)


@pytest.fixture()
def project(_project_template, tmp_path) -> Path:
    """A fresh copy of the tiny project (tests tamper with it)."""
    dest = tmp_path / "project"
    shutil.copytree(_project_template, dest, symlinks=True)
    return dest
