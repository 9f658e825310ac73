"""The real Slurm the cluster tests submit to (experiment/launch/slurm_local.py), once per session: this host
as partition `debug` (the single-node tests) and a virtual cluster of $MIDTRAIN_SLURM_NODES nodes (default 2,
up to 4), each its own network namespace, hostname and /etc/hosts, as partition `nodes` (the multi-node tests).
One slurmctld serves both; the tests run one after the other, so the cores the partitions share are never
asked for twice at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiment.launch.slurm_local import LocalSlurm, LocalSlurmError, configured
from tests.conftest import require_system_packages

NODES = int(os.environ.get("MIDTRAIN_SLURM_NODES", "2"))


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A started Slurm; SLURM_CONF points every command (and the jobs, which inherit it) at it. Every process
    it started is stopped by PID and its namespaces and bridge removed at the end, also when a test failed.

    An instance already running in $MIDTRAIN_SLURM_DIR (``nox -s cluster -- start``) is used and left up;
    $MIDTRAIN_SLURM_INSTANCE (0-49) starts one beside another (its own ports, subnet and namespaces)."""
    if os.geteuid() != 0:
        pytest.skip("a local Slurm runs its daemons as root (CI runs as root)")
    require_system_packages("slurm")  # declared: a missing package fails, as on a fresh machine without them
    existing = os.environ.get("MIDTRAIN_SLURM_DIR")
    root = Path(existing) if existing else tmp_path_factory.mktemp("slurm")
    cluster = configured(root) if existing else LocalSlurm(root, NODES)
    owned = not cluster.running()
    try:
        cluster.start()
    except LocalSlurmError as err:
        cluster.stop()
        pytest.fail(str(err))
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        if owned:
            cluster.stop()


@pytest.fixture(scope="session")
def cluster(slurm):
    """The same Slurm, for the tests that need at least two virtual nodes (partition ``nodes``)."""
    if slurm.nodes < 2:
        pytest.fail(f"the running Slurm in {slurm.root} has {slurm.nodes} virtual node(s); the multi-node tests "
                    "need 2 or more: `nox -s cluster -- stop`, then `nox -s cluster -- start --nodes 2`")
    return slurm
