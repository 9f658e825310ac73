"""The hash cache cannot be fooled by a same-size edit whose mtime is put back (cp -p, rsync -t, a restore
from backup): its key holds the ctime, which no user tool sets; `reproduce` says per check what was cached."""

from __future__ import annotations

import os
import time
from pathlib import Path

from experiment.lock import lockfile, verify
from experiment.lock.hashing import FileKey, HashCache


def _flip_one_bit_keeping_mtime(path: Path) -> None:
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    time.sleep(0.05)  # past the kernel's coarse timestamp tick, so the ctime moves as on any real edit
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_same_size_same_mtime_edits_of_a_shard_and_base_file_block(project, tmp_path):
    folder_dir = project / "training" / "tiny"
    toml = folder_dir / "experiment.toml"
    toml.write_text(toml.read_text().replace("from_scratch = true", 'base = "../../base"'))
    weights = project / "base" / "iter_0000001" / "model_weights.bin"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(os.urandom(4096))
    (project / "base" / "latest_checkpointed_iteration.txt").write_text("1\n")

    folder = verify.load_folder(folder_dir)
    cache_path = tmp_path / "hashes.sqlite"
    lock = lockfile.read_lock(lockfile.write_run_lock(folder, determinism_env=verify.determinism_now(folder),
                                                 hash_cache=cache_path))
    assert lock.base_checkpoint.files["iter_0000001/model_weights.bin"]

    reads: dict = {}
    assert verify.verify(lock, folder, cache=HashCache(cache_path), reads=reads) == []
    assert reads["data"][1] == 0 and reads["data"][0] == 6 and reads["base"] == (2, 0)  # all from the cache

    shard = sorted((project / "data" / "tiny").glob("en_docs_*.bin"))[0]
    old_key = FileKey.of(shard)
    _flip_one_bit_keeping_mtime(shard)
    _flip_one_bit_keeping_mtime(weights)
    assert FileKey.of(shard).ctime_ns != old_key.ctime_ns

    reads = {}
    findings = verify.verify(lock, folder, cache=HashCache(cache_path), reads=reads)
    named = {(f.area, f.what) for f in findings if f.blocking}
    assert ("data", f"../../data_signatures/tiny.json::{shard.name}") in named
    assert ("base", "../../base/iter_0000001/model_weights.bin") in named
    assert reads["data"] == (5, 1) and reads["base"] == (1, 1)  # exactly the edited files read in full


def test_a_cache_of_the_old_key_format_is_never_trusted(tmp_path):
    import sqlite3

    path = tmp_path / "hashes.sqlite"
    with sqlite3.connect(path) as con:  # a cache written before the ctime was part of the key
        con.execute("CREATE TABLE hashes (path TEXT, algorithm TEXT, size INTEGER, mtime_ns INTEGER, "
                    "inode INTEGER, digest TEXT, PRIMARY KEY (path, algorithm))")
        f = tmp_path / "f.bin"
        f.write_bytes(b"x" * 10)
        k = FileKey.of(f)
        con.execute("INSERT INTO hashes VALUES (?, ?, ?, ?, ?, ?)", (k.path, "blake3", k.size, k.mtime_ns, k.inode, "0" * 64))
    cache = HashCache(path)
    assert cache.get(FileKey.of(f), "blake3") is None and cache.reads == 1
