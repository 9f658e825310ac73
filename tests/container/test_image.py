"""The CPU image for real: built twice in fresh stores (same digest), the tiny folder trained inside it,
and `experiment reproduce` of the host run's lockfile re-run inside the image, compared to the byte.

Needs podman + buildah + mmdebstrap (fails naming the missing package; `.ci/run` installs them) and
root (skipped without). The builds are tests/container/conftest.py's session fixture `builds` (shared with
test_container_slurm.py). The first build makes the Debian base with mmdebstrap when build/base-bookworm.tar is
missing (always on CI); the second imports the same tarball into a fresh store.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiment.lock import lockfile
from tests.container.conftest import TAG, storage_conf

pytestmark = [pytest.mark.slow, pytest.mark.container]

if os.geteuid() != 0:
    pytestmark.append(pytest.mark.skip(reason="building the base with mmdebstrap --mode=root needs root"))


@pytest.fixture(scope="module", autouse=True)
def _engine_installed():
    """The container group of the declared packages: a failure, not a skip, when one is missing."""
    from tests.conftest import require_system_packages

    require_system_packages("container")

ROOT = Path(__file__).resolve().parents[2]


def test_two_builds_in_fresh_stores_give_the_same_digest(builds):
    _, (first, second) = builds
    assert first["image_id"].startswith("sha256:") and first["image_id"] == second["image_id"]
    assert first["digest"] == second["digest"]
    assert first["base"]["image_id"] == second["base"]["image_id"]
    assert first["storage_driver"] == second["storage_driver"]


def test_host_run_reproduced_inside_the_image(builds, project, tmp_path, monkeypatch):
    roots, (entry, _) = builds
    storage = storage_conf(roots[0], entry["storage_driver"], tmp_path / "storage.conf")
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(storage))
    folder = project / "training" / "tiny"
    cli = [sys.executable, "-m", "experiment.cli"]
    # with a --set override: the lock carries it, and the re-run inside the image applies it again
    host = subprocess.run([*cli, "run", str(folder), "--set", "training.lr=0.002"], capture_output=True, text=True,
                          timeout=900)
    assert host.returncode == 0, host.stdout[-3000:] + host.stderr[-3000:]
    lock = lockfile.read_lock(folder / "run.lock.json").dump()
    assert lock["environment"]["containerized"] is False and lock["config"]["overrides"] == ["training.lr=0.002"]

    rep = subprocess.run([*cli, "reproduce", str(folder / "run.lock.json"), "--container", "--image", TAG,
                          "--out", str(tmp_path / "rerun"), "--ignore"], capture_output=True, text=True,
                         timeout=1200)
    out = rep.stdout + rep.stderr
    relock_path = tmp_path / "rerun" / "training" / "tiny" / "run.lock.json"
    assert relock_path.is_file(), out[-4000:]
    relock = json.loads(relock_path.read_text())
    env = relock["environment"]
    assert env["containerized"] is True and env["image"]["ref"] == TAG
    assert env["image"]["digest"] == entry["image_id"] and env["torch"] == lock["environment"]["torch"]
    # host and image run the same versions: every pin of env/cpu.lock.txt, as each run's lock recorded it
    from experiment.lock.envlock import pins

    def canon(dists: dict) -> dict:
        return {re.sub(r"[-_.]+", "-", k).lower(): v.split("+")[0] for k, v in dists.items()}

    wanted = canon(pins((ROOT / "env" / "cpu.lock.txt").read_text()))
    host, image = canon(lock["environment"]["distributions"]), canon(env["distributions"])
    assert {n: (host.get(n), image.get(n)) for n in wanted if not host.get(n) == image.get(n) == wanted[n]} == {}
    # what this machine kind gives (README, container section): per-step losses, grad norms and lr, every
    # tensor and every tensor file (.distcp, common.pt) bit-identical to the host run; the one bookkeeping
    # file that may differ is kit_manifest.json, which records the byte size of torch DCP's pickled
    # .metadata, and that pickle's bytes differ between the host's Python build and Debian's 3.11.2
    assert rep.returncode == 0, out[-4000:]
    assert relock["outputs"]["losses"] == lock["outputs"]["losses"]
    for name, ckpt in lock["outputs"]["checkpoints"].items():
        again = relock["outputs"]["checkpoints"][name]
        assert again["tensors"] == ckpt["tensors"]
        assert {f for f in ckpt["files"] if ckpt["files"][f] != again["files"].get(f)} <= {"kit_manifest.json"}
    # only where it ran differs: the environment (image vs host), at most the kit's git state, and the record of
    # each save, whose raw-byte hashes include that .metadata pickle (a resume checks the bytes it reads)
    assert {k for k in relock if relock[k] != lock[k]} <= {"environment", "kit", "outputs", "checkpoint_record"}
    assert relock["config"] == lock["config"] and "applied again: --set training.lr=0.002" in out
    saves, again = lock["checkpoint_record"]["saves"], relock["checkpoint_record"]["saves"]
    assert [s["iteration"] for s in saves] == [s["iteration"] for s in again]
    assert [{f: h for f, h in s["files"].items() if f != ".metadata"} for s in saves] == \
        [{f: h for f, h in s["files"].items() if f != ".metadata"} for s in again]
    from tests import fault_matrix

    fault_matrix.record("container", "--set override", survived="everything (a new run)", resumed="from the base",
                        reproduced="yes: `experiment reproduce --container` (inside the image) exit 0; losses and every "
                        "tensor equal the host run's", message="overrides recorded in the lock, applied again: --set "
                        "training.lr=0.002", test="tests/container/test_image.py::test_host_run_reproduced_inside_the_image")
