"""Bench: whole `experiment ckpt import` commands with and without the read-ahead during start-up.

    python bench/prefetch.py [--base REV] [--cache cold] [--read-mbps 400] [--rounds 4] [--modes import]

A/B by commit: REV (default: the parent of the commit that added experiment/ckpt/prefetch.py, i.e. the
same code without the read-ahead) is checked out in a git worktree, and each round runs the same command
from it and from this checkout, alternately, on the same input in the same page-cache state
(bench/convert.py's model and step preparation: sync, input cold or warm, 2 s of quiet).

--read-mbps N throttles the commands' reads to N MB/s with the kernel's block-I/O controller (cgroup v1
blkio or v2 io.max, root only) on the disk holding the input: the speed of a shared cluster filesystem
per client or of a SATA SSD, where a cold input costs more than the start-up. 0 (default): the disk as it
is (this VM's virtio disk reads ~2-4 GB/s from the host's cache).
--modes import,export adds `ckpt export` (no read-ahead since it measured slower on the fast disk: with the
default --base both sides run the same export code, a control of the rounds' noise).
"""

from __future__ import annotations

import sys

sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # bench/tokenize.py shadows a stdlib module

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUP = "midtrain-bench-read"


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def default_base() -> str:
    added = _git("log", "--diff-filter=A", "--format=%H", "--", "experiment/ckpt/prefetch.py").splitlines()
    if not added:
        raise SystemExit("experiment/ckpt/prefetch.py is not committed yet; fix: pass --base REV")
    return _git("rev-parse", "--short", added[-1] + "^")


def _disk(path: Path) -> str:
    """MAJ:MIN of the whole disk holding ``path`` (the block controller throttles disks, not partitions)."""
    dev = os.stat(path).st_dev
    sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if (sys_dev / "partition").is_file():
        return (sys_dev.resolve().parent / "dev").read_text().strip()
    return f"{os.major(dev)}:{os.minor(dev)}"


@contextmanager
def read_throttle(path: Path, mbps: int):
    """A cgroup whose reads from ``path``'s disk are capped at ``mbps`` MB/s; yields its tasks file."""
    if not mbps:
        yield None
        return
    disk, bps = _disk(path), mbps * 1_000_000
    v1, v2 = Path("/sys/fs/cgroup/blkio"), Path("/sys/fs/cgroup")
    if v1.is_dir():
        group = v1 / GROUP
        group.mkdir(exist_ok=True)
        (group / "blkio.throttle.read_bps_device").write_text(f"{disk} {bps}")
    elif "io" in (v2 / "cgroup.controllers").read_text().split():
        (v2 / "cgroup.subtree_control").write_text("+io")
        group = v2 / GROUP
        group.mkdir(exist_ok=True)
        (group / "io.max").write_text(f"{disk} rbps={bps}")
    else:
        raise SystemExit("--read-mbps: no block-I/O cgroup controller here; fix: run without it")
    try:
        yield group / ("tasks" if v1.is_dir() else "cgroup.procs")
    finally:
        try:
            group.rmdir()
        except OSError:
            pass  # still has a task for a moment; the next run reuses it


def run(checkout: Path, mode: str, src: Path, dst: Path, tasks: Path | None) -> float:
    """The whole command from ``checkout``, timed from outside (in the throttled group when given)."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cmd = [sys.executable, "-m", "experiment.cli", "ckpt", mode, str(src), str(dst), "--json"]
    if tasks is not None:
        cmd = ["sh", "-c", f'echo $$ > {tasks} && exec "$@"', "sh", *cmd]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{mode} from {checkout} failed:\n{proc.stderr[-4000:]}")
    return wall


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    import bench.convert as convert  # noqa: PLC0415 (the model and the step preparation)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None, help="commit without the read-ahead (default: before prefetch.py)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-convert"), help="bench/convert.py's folder")
    ap.add_argument("--cache", choices=("cold", "warm"), default="cold")
    ap.add_argument("--read-mbps", type=int, default=0, help="cap reads at N MB/s (cgroup, root); 0: no cap")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--modes", default="import", help="import[,export]")
    args = ap.parse_args()

    base_rev = args.base or default_base()
    base = Path(tempfile.gettempdir()) / "midtrain-bench-prefetch-base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    _git("worktree", "add", "--detach", str(base), base_rev)
    hf = args.out / "hf"
    convert.make_model(hf, "llama3.2-1b", None, "bfloat16")
    ckpt = args.out / "ckpt"
    if not (ckpt / "latest_checkpointed_iteration.txt").is_file():
        run(ROOT, "import", hf, ckpt, None)
    inputs = {"import": (hf, args.out / "prefetch-ckpt"), "export": (ckpt, args.out / "prefetch-back")}
    modes = args.modes.split(",")
    walls: dict[tuple[str, str], list[float]] = {(m, who): [] for m in modes for who in ("base", "new")}
    try:
        with read_throttle(hf, args.read_mbps) as tasks:
            for k in range(args.rounds):
                for mode in modes:
                    src, dst = inputs[mode]
                    for who, checkout in (("base", base), ("new", ROOT)):
                        convert._prepare_step(src, dst, args.cache)
                        walls[mode, who].append(run(checkout, mode, src, dst, tasks))
                        print(f"round {k + 1} {mode} {who}: {walls[mode, who][-1]:.2f} s", flush=True)
    finally:
        _git("worktree", "remove", "--force", str(base))

    median = statistics.median
    size = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    speed = f"reads capped at {args.read_mbps} MB/s" if args.read_mbps else "the disk uncapped"
    table = Table(title=f"whole `experiment ckpt` commands, {size / 1e9:.2f} GB, inputs {args.cache}, {speed}; "
                        f"medians of {args.rounds} alternating rounds (range); base = {base_rev}")
    for col in ("command", "without read-ahead s", "with read-ahead s", "new / base per round: median (range)",
                "medians: new / base", "reads alone s"):
        table.add_column(col, justify="left" if col == "command" else "right")
    result = {}
    for mode in modes:
        b, n = walls[mode, "base"], walls[mode, "new"]
        ratios = [y / x for x, y in zip(b, n)]
        floor = f"{size / (args.read_mbps * 1e6):.1f}" if args.read_mbps else "-"
        table.add_row(mode, f"{median(b):.2f} ({min(b):.2f}-{max(b):.2f})", f"{median(n):.2f} ({min(n):.2f}-{max(n):.2f})",
                      f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                      f"{median(n) / median(b):.2f} (= {median(n):.2f} / {median(b):.2f})", floor)
        result[mode] = {"base": b, "new": n}
    Console(width=160).print(table)
    print(json.dumps({"base": base_rev, "cache": args.cache, "read_mbps": args.read_mbps, "walls": result}))


if __name__ == "__main__":
    main()
