"""The real single-node Slurm the cluster tests submit to (experiment/launch/slurm_local.py), once per session."""

from __future__ import annotations

import os

import pytest

from experiment.launch.slurm_local import LocalSlurm, LocalSlurmError
from tests.conftest import require_system_packages


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A started Slurm; SLURM_CONF points every command (and the jobs, which inherit it) at it.

    An instance already running in $MIDTRAIN_SLURM_DIR (``nox -s slurm -- start``) is used and left up."""
    if os.geteuid() != 0:
        pytest.skip("a local Slurm runs its daemons as root (CI runs as root)")
    require_system_packages("slurm")  # declared: a missing package fails, as on a fresh machine without them
    existing = os.environ.get("MIDTRAIN_SLURM_DIR")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm") if not existing else __import__("pathlib").Path(existing))
    owned = not cluster.running()
    try:
        cluster.start()
    except LocalSlurmError as err:
        pytest.fail(str(err))
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    if before is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = before
    if owned:
        cluster.stop()
