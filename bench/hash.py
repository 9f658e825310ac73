"""Bench: the lockfile's data check against `sha256sum` on the same shards, page cache warm.

    python bench/hash.py [--gb 1] [--shards 10000] [--out bench/out/hash]

1. ~1 GB of shards (16 .bin/.idx pairs of random bytes) listed in a real data signature: `sha256sum`,
   Python's hashlib sha256, xxh3-128 and blake3 (one thread) read the same files; then, in alternating
   rounds (median and best of --repeat): blake3's raw figure (one hasher, ``max_threads=AUTO``,
   ``update_mmap`` over every file: the most blake3 itself gets from this machine), the kit's hasher
   (``experiment.hashing.hash_paths``: every file's own digest) and the kit's check
   (``experiment.lock.lockfile.data_section``: walk the signature, stat, hash, compare with the signature)
   uncached; and the check again with the (path, size, mtime, inode) cache warm.
2. 10,000 shards (20,000 small files): the cached re-check, in a fresh cache object (as a new process
   would), goal < 1 s.
Prints the tables: the first's ratios are against `sha256sum` measured in the same run; the alternating rounds'
against blake3 raw, as the median of the per-round ratios and as the ratio of the medians (both printed).
"""

from __future__ import annotations

import os.path
import sys

# run as a script, bench/ is sys.path[0]: its modules (bench/tokenize.py) must not shadow the stdlib
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _BENCH]
sys.path.insert(0, os.path.dirname(_BENCH))

import argparse  # noqa: E402
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from experiment.data.signature import DataSignature  # noqa: E402
from experiment.folder import TrainingFolder, TrainingFolderConfig  # noqa: E402
from experiment.hashing import hash_paths  # noqa: E402
from experiment.lock.hashing import HashCache, hash_file  # noqa: E402
from experiment.lock.lockfile import data_section  # noqa: E402


def make_shards(root: Path, n: int, bin_bytes: int, idx_bytes: int, random: bool) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    block = os.urandom(1 << 20)
    for i in range(n):
        prefix = f"en_web_main_split_{i:05d}_text_document_dc=1_sc=1_tc={bin_bytes // 2}"
        for ext, size in ((".bin", bin_bytes), (".idx", idx_bytes)):
            p = root / (prefix + ext)
            if not p.is_file() or p.stat().st_size != size:
                with open(p, "wb") as f:
                    left = size
                    while left:
                        chunk = os.urandom(min(left, 1 << 20)) if random else block[:min(left, 1 << 20)]
                        f.write(chunk)
                        left -= len(chunk)
        entries.append(dict(prefix=prefix, language="en", domain="web", subdomain="main", docs=1, sentences=1,
                            tokens=bin_bytes // 2, bin_bytes=bin_bytes, idx_bytes=idx_bytes, dtype="uint16",
                            bin_hash=None, idx_hash=None))
    return entries


def make_folder(base: Path, name: str, entries: list[dict], hashes: bool) -> TrainingFolder:
    data_root = base / name / "data"
    if hashes:
        for e in entries:
            e["bin_hash"] = hash_file(data_root / (e["prefix"] + ".bin"))
            e["idx_hash"] = hash_file(data_root / (e["prefix"] + ".idx"))
    sig = DataSignature.model_validate({
        "name": name, "root": "data", "hash_algorithm": "blake3",
        "tokenizer": {"kind": "sentencepiece", "name": "tok", "sha256": "0" * 64, "vocab_size": 32000, "eod_id": 2},
        "shards": entries})
    (base / name / "sig.json").write_text(sig.to_json())
    cfg = TrainingFolderConfig.model_validate({
        "name": name, "data": {"signatures": ["../sig.json"]}, "training": {"train_iters": 1},
        "checkpoint": {"from_scratch": True}})
    (base / name / "folder").mkdir(exist_ok=True)
    return TrainingFolder(base / name / "folder", cfg)


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def read_all(paths, make):
    for p in paths:
        h = make()
        with open(p, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    console = Console()
    base = args.out or Path(tempfile.mkdtemp(prefix="bench-hash-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        n_big = 16
        bin_bytes = int(args.gb * (1 << 30)) // n_big - (64 << 10)
        big_entries = make_shards(base / "big" / "data", n_big, bin_bytes, 64 << 10, random=True)
        big = make_folder(base, "big", big_entries, hashes=True)
        paths = sorted(str(p) for p in (base / "big" / "data").iterdir())
        total = sum(os.path.getsize(p) for p in paths)
        subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        gb = total / 1e9
        rows = []
        t_sha = timed(lambda: subprocess.run(["sha256sum", *paths], stdout=subprocess.DEVNULL, check=True),
                      args.repeat)
        rows.append(("sha256sum (anchor)", t_sha))
        rows.append(("python hashlib sha256", timed(lambda: read_all(paths, hashlib.sha256), args.repeat)))
        import xxhash

        rows.append(("xxh3-128 (1 thread)", timed(lambda: read_all(paths, xxhash.xxh3_128), args.repeat)))
        rows.append(("blake3 (1 thread, mmap)", timed(lambda: [hash_file(p, threads=1) for p in paths], args.repeat)))

        def kit_check(cache):
            sec = data_section(big, cache)
            assert not sec["signature_disagreements"], sec["signature_disagreements"]

        import statistics

        import blake3

        def raw_blake3():
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            for p in paths:
                h.update_mmap(p)
            h.hexdigest()

        alternating = {"blake3 raw (all threads, mmap)": raw_blake3, "kit hasher (hash_paths)": lambda: hash_paths(paths),
                       "kit data check, uncached": lambda: kit_check(HashCache(None))}
        rounds: dict[str, list[float]] = {name: [] for name in alternating}
        for _ in range(max(5, args.repeat)):  # alternating: the machine's load moves by the second
            for name, fn in alternating.items():
                t = time.perf_counter()
                fn()
                rounds[name].append(time.perf_counter() - t)
        cache_file = base / "cache.sqlite"
        cache_file.unlink(missing_ok=True)
        kit_check(HashCache(cache_file))
        rows.append(("kit data check, cached re-check", timed(lambda: kit_check(HashCache(cache_file)), args.repeat)))

        # 10,000 shards: cached re-check (a fresh cache object reads the SQLite file, as a new process would)
        small_entries = make_shards(base / "many" / "data", args.shards, 4096, 64, random=False)
        many = make_folder(base, "many", small_entries, hashes=False)
        many_cache = base / "many-cache.sqlite"
        many_cache.unlink(missing_ok=True)
        t0 = time.perf_counter()
        data_section(many, HashCache(many_cache))
        t_first = time.perf_counter() - t0
        t_many = timed(lambda: data_section(many, HashCache(many_cache)), args.repeat)

        table = Table(title=f"hashing {gb:.2f} GB in {len(paths)} files (page cache warm), {os.cpu_count()} cores, "
                            f"load average {os.getloadavg()[0]:.1f}")
        for col in ("method", "seconds", "GB/s", "x sha256sum"):
            table.add_column(col, justify="right" if col != "method" else "left", overflow="fold")
        for name, t in rows:
            table.add_row(name, f"{t:.3f}", f"{gb / t:.2f}", f"{t_sha / t:.1f}x")
        console.print(table)
        raw = rounds["blake3 raw (all threads, mmap)"]
        # Two different ratios: the median of the per-round ratios (each run against blake3's run in the same
        # round) and the ratio of the two medians of GB/s; they need not agree, so both are printed.
        t3 = Table(title=f"alternating rounds ({len(raw)}): median (min-max) GB/s; / blake3 raw: median of the per-round "
                         "ratios, and the ratio of the medians with its two numbers")
        for col in ("method", "GB/s median", "GB/s range", "best", "per round / raw, median", "median / raw median"):
            t3.add_column(col, justify="right" if col != "method" else "left", overflow="fold")
        raw_median = statistics.median(gb / t for t in raw)
        for name, times in rounds.items():
            speeds = sorted(gb / t for t in times)
            ratios = sorted(r / t for r, t in zip(raw, times))
            median = statistics.median(speeds)
            t3.add_row(name, f"{median:.2f}", f"{speeds[0]:.2f}-{speeds[-1]:.2f}", f"{speeds[-1]:.2f}",
                       f"{statistics.median(ratios):.2f}", f"{median / raw_median:.2f} (= {median:.2f} / {raw_median:.2f})")
        console.print(t3)
        t2 = Table(title=f"{args.shards:,} shards ({2 * args.shards:,} files): walk + stat + compare")
        for col in ("check", "seconds", "goal"):
            t2.add_column(col)
        t2.add_row("first check (hash everything, fill the cache)", f"{t_first:.3f}", "")
        t2.add_row("cached re-check", f"{t_many:.3f}", "< 1 s: " + ("met" if t_many < 1 else "NOT met"))
        console.print(t2)
    finally:
        if args.out is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
