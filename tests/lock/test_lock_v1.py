"""Locks written before the typed records (version 1, by the kit at a9dbe79) still read, re-serialise to the
same bytes and verify.

``tiny.run.lock.v1.json``: ``write_run_lock`` on the tiny project (tests/lock/tinyproject.py), no run yet.
``trained.run.lock.v1.json``: the lock of an 8-step DP=2 run (tests/train/corpus.py), with losses and the
per-tensor hashes of two checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from experiment.lock import lockfile, verify
from experiment.lock.hashing import HashCache
from experiment.lock.records import RunLock

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["tiny.run.lock.v1.json", "trained.run.lock.v1.json"])
def test_v1_lock_reads_and_reserialises_byte_identically(name):
    path = FIXTURES / name
    lock = lockfile.read_lock(path)
    assert isinstance(lock, RunLock) and lock.lock_version == 1
    assert lockfile.dumps(lock) == path.read_text()


def test_v1_trained_lock_is_typed_down_to_the_tensors():
    lock = lockfile.read_lock(FIXTURES / "trained.run.lock.v1.json")
    assert [row[0] for row in lock.outputs.losses.steps] == list(range(1, 9))
    assert all(isinstance(row[1], str) and float.fromhex(row[1]) > 0 for row in lock.outputs.losses.steps)
    ckpt = lock.outputs.checkpoints["iter_0000008"]
    assert ckpt.tensors and all(len(h) == 64 for h in ckpt.tensors.values())
    assert lock.launch.world_size == 2 and lock.launch.data_parallel == 2
    assert lock.launch.layer_spec is None  # not recorded before the runner reported its spec
    assert lock.data.blend.available and lock.data.blend.entries


def test_v1_lock_verifies_against_a_fresh_project(project):
    """Everything but the kit's own source (which this change edits) matches the old lock."""
    lock = lockfile.read_lock(FIXTURES / "tiny.run.lock.v1.json")
    folder = verify.load_folder(project / "training" / "tiny")
    findings = verify.verify(lock, folder, cache=HashCache(None), environ={})
    blocking = [f for f in findings if f.blocking and f.area not in ("code", "environment")]
    assert blocking == [], blocking


def test_a_damaged_lock_names_the_field(tmp_path):
    text = (FIXTURES / "tiny.run.lock.v1.json").read_text().replace('"containerized": false', '"containerized": "maybe"')
    bad = tmp_path / "run.lock.json"
    bad.write_text(text)
    with pytest.raises(lockfile.LockError, match=r"field environment\.containerized"):
        lockfile.read_lock(bad)
