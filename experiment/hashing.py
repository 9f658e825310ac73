"""The kit's one hasher: content hashes of bytes, files and named sets of files, for lockfiles, data
signatures and checkpoints alike.

Why one module: the lockfile re-checks the hashes a data signature recorded, so both must compute them
the same way. blake3 is the default (hex digest of the file's bytes; unchanged since the first
signatures, so old lockfiles and signatures still verify): on 2 cores it reaches ~5-8 GB/s from the page
cache, against ``sha256sum``'s ~0.4 GB/s (bench/hash.py). How:
- a large file is memory-mapped, 64 MiB at a time, and hashed by blake3's own threads (``max_threads``),
  no copy through Python buffers and no more than one window in the resident set;
- many files are hashed side by side, one file per thread, largest first, when there are more files
  than cores (blake3's threads only help inside one file);
- small files are read in one call (mapping costs more than it saves below 1 MiB).
The cache of digests by (path, size, mtime, ctime, inode) lives with the lockfile (``experiment.lock.hashing``).
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

ALGORITHMS = ("blake3", "xxh3-128", "sha256")
DEFAULT_ALGORITHM = "blake3"
_CHUNK = 16 << 20
_MMAP_MIN = 1 << 20  # below this a plain read is faster than mapping
_WINDOW = 64 << 20  # bytes mapped at a time (a multiple of mmap.ALLOCATIONGRANULARITY)
_SPLIT_MIN = 16 << 20  # a file at least this large gets every core (blake3's threads) on its own


def normalize_algorithm(name: str) -> str:
    """Accept the spellings data signatures use ("xxh3_128", "XXH3-128", "blake3")."""
    key = name.lower().replace("_", "-")
    if key in ("xxh3", "xxh128", "xxh3-128"):
        return "xxh3-128"
    if key not in ALGORITHMS:
        raise ValueError(f"unknown hash algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    return key


def strip_prefix(digest: str) -> str:
    """``"blake3:ab12..."`` -> ``"ab12..."`` so hashes written with or without a prefix compare."""
    return digest.split(":", 1)[1] if ":" in digest else digest


def _hasher(algorithm: str, threads: int = 1):
    if algorithm == "blake3":
        import blake3

        return blake3.blake3(max_threads=threads if threads > 0 else blake3.blake3.AUTO)
    if algorithm == "xxh3-128":
        import xxhash

        return xxhash.xxh3_128()
    import hashlib

    return hashlib.sha256()


def hash_bytes(data: bytes, algorithm: str = DEFAULT_ALGORITHM) -> str:
    h = _hasher(normalize_algorithm(algorithm))
    h.update(data)
    return h.hexdigest()


def _update_from_file(h, path: str, size: int, algorithm: str) -> None:
    if algorithm == "blake3" and size >= _MMAP_MIN:
        # mapped a window at a time: a whole-file map (blake3's update_mmap) leaves every page of the file in
        # the process's resident set until the end (+470 MB of RSS while `ckpt import` hashed a 525 MB shard)
        with open(path, "rb", buffering=0) as f:
            for offset in range(0, size, _WINDOW):
                with mmap.mmap(f.fileno(), min(_WINDOW, size - offset), offset=offset, access=mmap.ACCESS_READ) as m:
                    h.update(m)
        return
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def hash_file(path: str | os.PathLike, algorithm: str = DEFAULT_ALGORITHM, threads: int = 0) -> str:
    """Hex digest of one file's bytes. ``threads=0``: blake3 uses every core for a large file."""
    algorithm = normalize_algorithm(algorithm)
    path = os.fspath(path)
    h = _hasher(algorithm, threads)
    _update_from_file(h, path, os.path.getsize(path), algorithm)
    return h.hexdigest()


def hash_paths(
    paths: Iterable[str | os.PathLike], algorithm: str = DEFAULT_ALGORITHM, workers: int | None = None,
    sizes: dict[str, int] | None = None, done: Callable[[str, str], None] | None = None,
) -> dict[str, str]:
    """Digest of every file (keyed by the path as given): files of ``_SPLIT_MIN`` or more one at a time
    with every core inside each; the rest ``workers`` files at a time (default: one per core), largest
    first. ``done(path, digest)`` is called as each finishes (in this thread)."""
    algorithm = normalize_algorithm(algorithm)
    paths = [os.fspath(p) for p in paths]
    sizes = sizes if sizes is not None else {}
    for p in paths:
        if p not in sizes:
            sizes[p] = os.path.getsize(p)
    workers = workers or os.cpu_count() or 1
    out: dict[str, str] = {}

    def finish(p: str, digest: str) -> None:
        out[p] = digest
        if done is not None:
            done(p, digest)

    big = [p for p in paths if sizes[p] >= _SPLIT_MIN and algorithm == "blake3"]
    small = sorted((p for p in paths if p not in set(big)), key=lambda p: -sizes[p])
    for p in big:
        finish(p, hash_file(p, algorithm, threads=0))
    if len(small) <= 1 or workers == 1:
        for p in small:
            finish(p, hash_file(p, algorithm, threads=1))
        return out
    with ThreadPoolExecutor(min(workers, len(small)), thread_name_prefix="hash") as pool:
        for p, digest in zip(small, pool.map(lambda p: hash_file(p, algorithm, threads=1), small)):
            finish(p, digest)
    return out


def content_hash(named_files: Iterable[tuple[str, str | os.PathLike]], threads: int = 0) -> str:
    """``"blake3:" + hex`` over (name, size, bytes) of each file, in the order given: one digest for a set of
    files (a checkpoint's weights) that changes if any name, size or byte does."""
    h = _hasher("blake3", threads)
    for name, path in named_files:
        path = os.fspath(path)
        size = os.path.getsize(path)
        h.update(name.encode() + b"\0" + str(size).encode() + b"\0")
        _update_from_file(h, path, size, "blake3")
    return "blake3:" + h.hexdigest()
