"""The kit's one hasher gives the digests the kit always wrote (old lockfiles and signatures still verify),
whatever path it takes (mapped or read, one thread or many, one file or many side by side)."""

from __future__ import annotations

import hashlib
import os

import blake3
import pytest
import xxhash

from experiment import hashing

SIZES = (0, 1, 4095, (1 << 20) - 1, 1 << 20, (3 << 20) + 17)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hash")
    out = []
    for i, size in enumerate(SIZES):
        p = root / f"f{i}.bin"
        p.write_bytes(os.urandom(size))
        out.append(p)
    return out


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_file_digests_are_the_libraries_own(files, threads):
    for p in files:
        data = p.read_bytes()
        assert hashing.hash_file(p, "blake3", threads) == blake3.blake3(data).hexdigest()
        assert hashing.hash_file(p, "xxh3", threads) == xxhash.xxh3_128_hexdigest(data)
        assert hashing.hash_file(p, "sha256", threads) == hashlib.sha256(data).hexdigest()


def test_many_files_side_by_side_and_large_files_alone_give_the_same_digests(files, monkeypatch):
    expected = {str(p): blake3.blake3(p.read_bytes()).hexdigest() for p in files}
    seen = []
    assert hashing.hash_paths(files, done=lambda p, d: seen.append(p)) == expected
    assert sorted(seen) == sorted(expected)
    monkeypatch.setattr(hashing, "_SPLIT_MIN", 1 << 20)  # the larger files now take every core, one at a time
    assert hashing.hash_paths(files, workers=2) == expected


def test_lock_and_signature_use_the_same_hasher(files):
    from experiment.lock import hashing as lock_hashing

    assert lock_hashing.hash_file is hashing.hash_file
    for p in files:  # the signature's builder hashes with hashing.hash_paths, the lock with hash_files
        assert hashing.hash_paths([str(p)], "blake3")[str(p)] == lock_hashing.hash_files([p])[str(p)] \
            == hashing.hash_file(p)


def test_content_hash_is_the_one_checkpoints_recorded(files):
    """The formula ckpt/source.py and train/checkpointing.py each wrote by hand before."""
    h = blake3.blake3()
    for p in files:
        h.update(p.name.encode() + b"\0" + str(p.stat().st_size).encode() + b"\0" + p.read_bytes())
    old = "blake3:" + h.hexdigest()
    assert hashing.content_hash((p.name, p) for p in files) == old
    assert hashing.content_hash(((p.name, p) for p in files), threads=1) == old


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        hashing.hash_file(__file__, "md5")
