"""The kit's CPU image, built once per session for every test of this folder that runs it (test_image.py's
two fresh-store builds; test_container_slurm.py runs the first build's image on the virtual nodes)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

TAG = "localhost/midtrain-kit:cpu-test"


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    """Two builds of the CPU image in fresh stores (``<root>/storage``, ``<root>/run``): (roots, entries).

    Needs root (the base is made with mmdebstrap --mode=root) and the container group of the declared
    packages (a missing one fails, it is not skipped: CI installs them)."""
    if os.geteuid() != 0:
        pytest.skip("building the base with mmdebstrap --mode=root needs root")
    from experiment.lock import image
    from tests.conftest import require_system_packages

    require_system_packages("container")
    roots = [tmp_path_factory.mktemp(f"store{i}") for i in (1, 2)]
    first = image.build("cpu", "buildah", root=str(roots[0]), lock_path=None, tag=TAG)
    # the same inputs (wheelhouse, kit wheel, commit) in a fresh store: only the build itself can differ
    second = image.build("cpu", "buildah", root=str(roots[1]), lock_path=None, tag=TAG, inputs=first["kit_state"])
    entries = [first, second]
    yield roots, entries
    for r in roots:  # the stores hold root-owned overlay layers: remove them with the engine's own command
        subprocess.run(["buildah", "--root", f"{r}/storage", "--runroot", f"{r}/run", "rmi", "--all", "--force"],
                       capture_output=True, env=image.engine_env(), timeout=300)


def storage_conf(root: Path, driver: str, path: Path) -> Path:
    """A containers-storage.conf naming a build's store, for ``CONTAINERS_STORAGE_CONF``."""
    path.write_text(f'[storage]\ndriver = "{driver}"\ngraphroot = "{root}/storage"\nrunroot = "{root}/run"\n')
    return path
