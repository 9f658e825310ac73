"""Shared fixtures: the real Llama-family SentencePiece tokenizer that ships in mistral-common, and the tiny
project (tests/lock/tinyproject.py) the lockfile and container tests run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def pytest_configure(config):
    """The test process opts in to the kit's megatron import hook, as the CLI and the workers do."""
    from experiment import megatron_import

    megatron_import.install()


def pytest_sessionfinish(session, exitstatus):
    """A session that ran every fault cell rewrites docs/reliability.md's matrix from what it saw."""
    from tests import fault_matrix

    if exitstatus == 0 and fault_matrix.write_page():
        print(f"\nfault matrix written to {fault_matrix.PAGE}")


def require_system_packages(*groups: str) -> None:
    """Fail (never skip) when a declared Debian package a test needs is missing: CI installs every one
    (`.ci/run`), so a skip there would hide exactly the gap a fresh machine hits."""
    from experiment import system_packages

    absent = system_packages.missing(system_packages.names(*groups))
    if absent:
        pytest.fail(f"declared Debian packages missing: {' '.join(absent)}; "
                    f"fix: {system_packages.install_command(absent)}", pytrace=False)


@pytest.fixture(scope="session")
def sp_model_path() -> Path:
    """Mistral's 32k SentencePiece model (Llama-family BPE), from the PyPI package mistral-common."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    assert path.is_file(), f"mistral-common no longer ships {path}"
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def _project_template(tmp_path_factory, sp_model_path) -> Path:
    """Built once per session."""
    from tests.lock.tinyproject import make_project

    return make_project(tmp_path_factory.mktemp("lockproject") / "project", sp_model_path)


@pytest.fixture()
def project(_project_template, tmp_path) -> Path:
    """A fresh copy of the tiny project (tests tamper with it)."""
    dest = tmp_path / "project"
    shutil.copytree(_project_template, dest, symlinks=True)
    return dest


# the sample corpus and its shards: shared by the data tests and the Slurm data tests (session-scoped, built once)
@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """~0.4 MB of real Debian text over 8 sources (en/ja; code-docs, manual, dictionary, legal)."""
    from experiment.demo.corpus import build_sample

    out = tmp_path_factory.mktemp("sample")
    build_sample(out, mb=0.4)
    return out


@pytest.fixture(scope="session")
def sp_shards(sample_dir, sp_model_path, tmp_path_factory) -> Path:
    """The sample tokenized with the Mistral SentencePiece model (auto backend)."""
    from experiment.data.tokenize import TokenizeConfig, run

    out = tmp_path_factory.mktemp("sp_shards")
    run(TokenizeConfig(inputs=[sample_dir], output=out, tokenizer=sp_model_path, progress=False))
    return out


# The real Slurm the cluster tests submit to (experiment/launch/slurm_local.py; tests/launch, tests/container),
# once per session: this host as partition `debug` (the single-node tests) and a virtual cluster of
# $MIDTRAIN_SLURM_NODES nodes (default 2, up to 4), each its own network namespace, hostname and /etc/hosts, as
# partition `nodes` (the multi-node tests). One slurmctld serves both; the tests run one after the other, so the
# cores the partitions share are never asked for twice at once.
SLURM_NODES = int(os.environ.get("MIDTRAIN_SLURM_NODES", "2"))


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A started Slurm; SLURM_CONF points every command (and the jobs, which inherit it) at it. Every process
    it started is stopped by PID and its namespaces and bridge removed at the end, also when a test failed.

    An instance already running in $MIDTRAIN_SLURM_DIR (``nox -s cluster -- start``) is used and left up;
    $MIDTRAIN_SLURM_INSTANCE (0-49) starts one beside another (its own ports, subnet and namespaces)."""
    from experiment.launch.slurm_local import LocalSlurm, LocalSlurmError, configured

    if os.geteuid() != 0:
        pytest.skip("a local Slurm runs its daemons as root (CI runs as root)")
    require_system_packages("slurm")  # declared: a missing package fails, as on a fresh machine without them
    existing = os.environ.get("MIDTRAIN_SLURM_DIR")
    root = Path(existing) if existing else tmp_path_factory.mktemp("slurm")
    cluster = configured(root) if existing else LocalSlurm(root, SLURM_NODES)
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
