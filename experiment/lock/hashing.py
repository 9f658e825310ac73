"""Content hashes of many large files for the lockfile, with a cache keyed by (path, size, mtime, ctime, inode).

Why: a run's lockfile records a hash of every shard, and ``reproduce`` re-checks them. Shards add up to
terabytes, so hashing is the kit's one hasher (``experiment.hashing``: blake3, memory-mapped, on every
core), and a file whose (size, mtime_ns, inode) did not change since it was last hashed is not read
again: a re-check of 10,000 cached shards is a ``stat`` per file.

The cache is a small SQLite file (safe with several processes); the CLI chooses where it lives and
passes the path down. A cache entry is only a shortcut: change a file's bytes and its mtime changes, so
its entry no longer matches and the file is hashed again. The key holds the ctime too: ``cp -p``,
``rsync -t``, a restore from backup or ``os.utime`` can put back a same-size file's mtime, but no user tool
sets the ctime (any write or utime moves it to now), so a same-size, same-mtime edit is still read again.
``HashCache.hits``/``reads`` count what was served from the cache and what was read in full (``reproduce``
reports them per check).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

# The hashing itself is the kit's one hasher; these names stay importable from here.
from experiment.hashing import (  # noqa: E402,F401
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    hash_bytes,
    hash_file,
    hash_paths,
    normalize_algorithm,
    strip_prefix,
)


def default_cache_path() -> Path:
    """Where the commands keep the cache: ``$XDG_CACHE_HOME/midtrain-kit/hashes.sqlite`` or ``~/.cache/...``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path("~/.cache").expanduser()) / "midtrain-kit" / "hashes.sqlite"


@dataclass(frozen=True)
class FileKey:
    """What must be unchanged for a cached hash to be reused."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int = 0  # inode change time: set by the kernel on every write or utime, never by a user tool

    @classmethod
    def of(cls, path: str | os.PathLike, _dirs: dict[str, str] | None = None) -> "FileKey":
        """``_dirs`` memoizes the real path of each folder: one realpath per folder, not per file."""
        path = os.fspath(path)
        head, tail = os.path.split(path)
        if _dirs is None:
            real_dir = os.path.realpath(head)
        elif (real_dir := _dirs.get(head)) is None:
            real_dir = _dirs[head] = os.path.realpath(head)
        real = os.path.join(real_dir, tail)
        st = os.stat(real)  # follows a link to the file: its inode and mtime are the content's
        return cls(real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class HashCache:
    """(path, size, mtime_ns, ctime_ns, inode, algorithm) -> digest, in SQLite; ``None`` path = in memory only."""

    TABLE = "hashes_v2"  # v1 (no ctime) entries are ignored, never trusted

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self._memory: dict[tuple, str] = {}
        self._dirty: dict[tuple, str] = {}
        self._loaded = False
        self.hits = 0   # look-ups answered from the cache
        self.reads = 0  # look-ups that missed: the file is read in full

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60)
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {self.TABLE} (path TEXT, algorithm TEXT, size INTEGER, mtime_ns INTEGER, "
            "ctime_ns INTEGER, inode INTEGER, digest TEXT, PRIMARY KEY (path, algorithm))"
        )
        return con

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.path is None or not self.path.exists():
            return
        try:
            with self._connect() as con:
                for path, algorithm, size, mtime_ns, ctime_ns, inode, digest in con.execute(
                        f"SELECT path, algorithm, size, mtime_ns, ctime_ns, inode, digest FROM {self.TABLE}"):
                    self._memory[(path, algorithm, size, mtime_ns, ctime_ns, inode)] = digest
        except sqlite3.DatabaseError:
            self._memory.clear()  # a damaged cache is only a lost shortcut: start over

    def get(self, key: FileKey, algorithm: str) -> str | None:
        self._load()
        found = self._memory.get((key.path, algorithm, key.size, key.mtime_ns, key.ctime_ns, key.inode))
        if found is None:
            self.reads += 1
        else:
            self.hits += 1
        return found

    def put(self, key: FileKey, algorithm: str, digest: str) -> None:
        self._load()
        row = (key.path, algorithm, key.size, key.mtime_ns, key.ctime_ns, key.inode)
        self._memory[row] = digest
        self._dirty[row] = digest

    def flush(self) -> None:
        """Write new entries (one transaction; readers never see half an update)."""
        if self.path is None or not self._dirty:
            self._dirty.clear()
            return
        try:
            with self._connect() as con:
                con.executemany(
                    f"INSERT OR REPLACE INTO {self.TABLE} (path, algorithm, size, mtime_ns, ctime_ns, inode, digest) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(p, a, s, m, c, i, d) for (p, a, s, m, c, i), d in self._dirty.items()],
                )
        except sqlite3.DatabaseError:
            self.path.unlink(missing_ok=True)  # damaged: drop it, it is rebuilt next time
        self._dirty.clear()


def hash_files(
    paths: Iterable[str | os.PathLike],
    algorithm: str = DEFAULT_ALGORITHM,
    cache: HashCache | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    keys: dict[str, FileKey] | None = None,
    missing: list[str] | None = None,
) -> dict[str, str]:
    """Digest of every file (keyed by the path as given), hashing in parallel what the cache lacks.

    ``progress(nbytes)`` is called after each file, for a progress bar. ``keys`` (if given) receives
    each file's (real path, size, mtime, inode); ``missing`` (if given) receives the paths that do not
    exist instead of raising FileNotFoundError.
    """
    algorithm = normalize_algorithm(algorithm)
    cache = cache if cache is not None else HashCache(None)
    keys = {} if keys is None else keys
    dirs: dict[str, str] = {}
    given = []
    for p in map(os.fspath, paths):
        try:
            keys[p] = FileKey.of(p, dirs)
        except FileNotFoundError:
            if missing is None:
                raise
            missing.append(p)
            continue
        given.append(p)
    out: dict[str, str] = {}
    todo: list[str] = []
    for p in given:
        hit = cache.get(keys[p], algorithm)
        if hit is None:
            todo.append(p)
        else:
            out[p] = hit
            if progress:
                progress(keys[p].size)
    if todo:

        def record(p: str, digest: str) -> None:
            key = keys[p]
            if FileKey.of(p, dirs) == key:  # not changed while we read it
                cache.put(key, algorithm, digest)
            out[p] = digest
            if progress:
                progress(key.size)

        hash_paths(todo, algorithm, workers, sizes={p: keys[p].size for p in todo}, done=record)
        cache.flush()
    return out
