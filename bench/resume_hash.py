"""Bench: a resume's hash check (``integrity.inspect``) against the load of the same checkpoint (issue 29).

    python bench/resume_hash.py [--layers 21] [--repeat 3] [--workdir bench/out/resume_hash] [--keep]

1. Builds once (cached in --workdir, git-ignored) a ~2.5 GB checkpoint folder ``iter_0000001/`` in the
   kit's layout: fp32 tensors shaped like a ~630M-parameter Llama (megatron names: embedding, per layer
   QKV with GQA, projection, SwiGLU fc1/fc2, norms; output layer), written by
   ``torch.distributed.checkpoint.save(..., FileSystemWriter(folder, thread_count=1), no_dist=True)`` as
   the kit's save strategy does (one bucket, one thread: one ``__0_0.distcp`` and ``.metadata``), its
   ``.metadata`` normalized and a ``kit_manifest.json`` made with ``integrity.listing`` and
   ``integrity.file_hashes`` exactly as ``checkpointing.save`` makes it. A real megatron model and
   optimizer of this size would take too long to build on 2 CPU cores: these are torch DCP files of the
   same total size, and the hash check's cost depends on the number of bytes only.
2. Times, over --repeat rounds (order reversed every other round), with the page cache warm (files read
   once before) and cold (``sync; echo 3 > /proc/sys/vm/drop_caches`` before each timed op, as root;
   otherwise POSIX_FADV_DONTNEED on each file, said in the output):
   - ``read``: the files read once into a reused buffer (the anchor: raw read speed),
   - ``check``: ``integrity.inspect(folder)`` (sizes against the manifest, then blake3 of every file
     on every core: the resume's hash check),
   - ``load``: ``torch.distributed.checkpoint.load`` into preallocated tensors of the same shapes with
     ``FileSystemReader`` (what megatron's ``dist_checkpointing.load`` runs underneath for torch_dist),
   - ``check + load``: both, in that order, as a resume runs them (the check leaves the pages warm for the
     load when they fit in memory).
3. Prints min / median per op and cache state, GB/s, the ratios check / load and check / read, and what
   the check adds to a resume (``check + load`` against ``load``); writes the raw times as JSON to --workdir.
The checkpoint is deleted at the end unless --keep.
"""

from __future__ import annotations

import sys

# run as a script, bench/ is sys.path[0], and bench/tokenize.py would shadow the stdlib module: use the repo root
sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

ITER_NAME = "iter_0000001"
OPS = ("read", "check", "load", "check + load")


def llama_shapes(layers: int, hidden: int, ffn: int, heads: int, kv_heads: int, vocab: int) -> dict[str, tuple]:
    """Megatron GPT parameter names and shapes of a Llama (GQA, SwiGLU, untied output layer)."""
    head = hidden // heads
    shapes: dict[str, tuple] = {"embedding.word_embeddings.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"decoder.layers.{i}."
        shapes[p + "self_attention.linear_qkv.layer_norm_weight"] = (hidden,)
        shapes[p + "self_attention.linear_qkv.weight"] = ((heads + 2 * kv_heads) * head, hidden)
        shapes[p + "self_attention.linear_proj.weight"] = (hidden, hidden)
        shapes[p + "mlp.linear_fc1.layer_norm_weight"] = (hidden,)
        shapes[p + "mlp.linear_fc1.weight"] = (2 * ffn, hidden)
        shapes[p + "mlp.linear_fc2.weight"] = (hidden, ffn)
    shapes["decoder.final_layernorm.weight"] = (hidden,)
    shapes["output_layer.weight"] = (vocab, hidden)
    return shapes


def build(folder: Path, shapes: dict[str, tuple], seed: int) -> dict:
    """Write the checkpoint as ``checkpointing.save`` leaves it (DCP files + normalized metadata + manifest)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    from experiment.atomic import write_atomic
    from experiment.train import checkpointing, integrity

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    partial.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    state = {name: torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02 for name, shape in shapes.items()}
    first, last = next(iter(shapes)), list(shapes)[-1]
    sums = {first: float(state[first].double().sum()), last: float(state[last].double().sum())}
    t1 = time.perf_counter()
    dcp.save(state, storage_writer=FileSystemWriter(str(partial), thread_count=1), no_dist=True)
    del state
    t2 = time.perf_counter()
    checkpointing._normalize_dcp_metadata(partial, folder.name, 1)
    files = integrity.listing(partial)
    write_atomic(partial / integrity.MANIFEST_NAME, json.dumps(
        {"iteration": 1, "files": files, "hashes": integrity.file_hashes(partial, files)},
        indent=1, sort_keys=True))
    t3 = time.perf_counter()
    os.replace(partial, folder)
    subprocess.run(["sync"], check=False)
    print(f"built {folder}: random tensors {t1 - t0:.1f} s, dcp.save {t2 - t1:.1f} s, manifest (listing + "
          f"blake3, as save) {t3 - t2:.1f} s", flush=True)
    return sums


def data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def read_all(paths: list[Path], buf: bytearray) -> int:
    view, total = memoryview(buf), 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total


class Cache:
    """Puts the checkpoint's pages in a state: ``warm`` (read whole) or ``cold`` (dropped)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.buf = bytearray(16 << 20)
        self.method = "drop_caches"
        try:
            subprocess.run(["sync"], check=False)
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError as err:
            self.method = f"POSIX_FADV_DONTNEED per file (drop_caches not possible: {err.strerror})"

    def put(self, state: str) -> None:
        if state == "warm":
            read_all(self.paths, self.buf)
            return
        subprocess.run(["sync"], check=False)
        if self.method == "drop_caches":
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        else:
            for p in self.paths:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "out" / "resume_hash")
    ap.add_argument("--layers", type=int, default=21, help="Llama layers (default 21: 627M params, 2.51 GB fp32)")
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache", choices=("warm", "cold", "both"), default="both")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint for the next run")
    args = ap.parse_args()

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # no_dist=True says so already

    from experiment.train import integrity

    shapes = llama_shapes(args.layers, args.hidden, args.ffn, args.heads, args.kv_heads, args.vocab)
    params = sum(int(torch.Size(s).numel()) for s in shapes.values())
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = args.workdir / ITER_NAME
    spec_path = args.workdir / "spec.json"
    spec = {"shapes": {k: list(v) for k, v in shapes.items()}, "seed": args.seed, "dtype": "float32"}
    cached = (spec_path.is_file() and json.loads(spec_path.read_text()).get("spec") == spec
              and integrity.inspect_sizes(folder).ok)
    if cached:
        sums = json.loads(spec_path.read_text())["sums"]
        print(f"using the cached checkpoint {folder}", flush=True)
    else:
        spec_path.unlink(missing_ok=True)
        sums = build(folder, shapes, args.seed)
        spec_path.write_text(json.dumps({"spec": spec, "sums": sums}))

    paths = data_files(folder)
    size = sum(p.stat().st_size for p in paths)
    hashed = sum((folder / n).stat().st_size for n in integrity.read_manifest(folder)["hashes"])
    dest = {name: torch.zeros(shape, dtype=torch.float32) for name, shape in shapes.items()}  # pages touched once
    cache = Cache(paths)
    states = ["warm", "cold"] if args.cache == "both" else [args.cache]

    def op_read():
        assert read_all(paths, cache.buf) == size

    def op_check():
        verdict = integrity.inspect(folder)
        assert verdict.ok, verdict.why

    def op_load():
        dcp.load(dest, storage_reader=FileSystemReader(str(folder)), no_dist=True)

    def op_both():
        op_check()
        op_load()

    fns = {"read": op_read, "check": op_check, "load": op_load, "check + load": op_both}
    now = datetime.datetime.now().astimezone()
    uname = platform.uname()
    print(f"{now:%Y-%m-%d %H:%M %Z}; {uname.node} {uname.machine}, nproc {os.cpu_count()}, torch {torch.__version__}; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    print(f"checkpoint: {len(paths)} files, {size / 1e9:.3f} GB ({size:,} bytes; {hashed / 1e9:.3f} GB hashed), "
          f"{len(shapes)} fp32 tensors, {params / 1e6:.0f}M parameters; cold = {cache.method}", flush=True)
    print("note: torch DCP files of a Llama's shapes and total size, not a megatron model + optimizer (too slow "
          "to build on 2 cores); the hash check's cost depends on the bytes only", flush=True)

    times: dict[str, dict[str, list[float]]] = {s: {op: [] for op in OPS} for s in states}
    for r in range(args.repeat):
        order = list(OPS) if r % 2 == 0 else list(reversed(OPS))
        for state in states:
            for op in order:
                cache.put(state)
                t0 = time.perf_counter()
                fns[op]()
                times[state][op].append(time.perf_counter() - t0)
            print(f"round {r + 1} {state}: " + ", ".join(f"{op} {times[state][op][-1]:.2f} s" for op in OPS), flush=True)
    for name, total in sums.items():  # the load really brought the bytes back
        assert abs(float(dest[name].double().sum()) - total) <= 1e-6 * max(1.0, abs(total)), name

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"resume of a {size / 1e9:.2f} GB checkpoint ({params / 1e6:.0f}M fp32 params, torch DCP), "
                        f"{now:%Y-%m-%d}, nproc {os.cpu_count()}, {args.repeat} alternating rounds")
    for col in ("cache", "op", "min s", "median s", "GB/s (median)", "/ load (median)", "/ read (median)"):
        table.add_column(col, justify="left" if col in ("cache", "op") else "right")
    summary: dict[str, dict] = {}
    for state in states:
        med = {op: statistics.median(times[state][op]) for op in OPS}
        per_round = [c / lo for c, lo in zip(times[state]["check"], times[state]["load"])]
        added = [(b - lo) / lo for b, lo in zip(times[state]["check + load"], times[state]["load"])]
        summary[state] = {
            "median_s": med, "min_s": {op: min(times[state][op]) for op in OPS},
            "check_over_load_median": med["check"] / med["load"], "check_over_load_per_round": per_round,
            "check_over_read_median": med["check"] / med["read"],
            "resume_added_median": med["check + load"] / med["load"] - 1, "resume_added_per_round": added,
        }
        for op in OPS:
            table.add_row(state, op, f"{min(times[state][op]):.2f}", f"{med[op]:.2f}", f"{size / med[op] / 1e9:.2f}",
                          f"{med[op] / med['load']:.2f}", f"{med[op] / med['read']:.2f}")
        table.add_section()
    Console(width=160).print(table)
    for state in states:
        s = summary[state]
        print(f"{state}: check / load {s['check_over_load_median']:.2f} (per round "
              f"{min(s['check_over_load_per_round']):.2f}-{max(s['check_over_load_per_round']):.2f}); check / read "
              f"{s['check_over_read_median']:.2f}; check + load is load {100 * s['resume_added_median']:+.0f}% "
              f"(per round {100 * min(s['resume_added_per_round']):+.0f}% to {100 * max(s['resume_added_per_round']):+.0f}%)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")

    out = args.workdir / f"results-{now:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({
        "date": now.isoformat(), "node": uname.node, "machine": uname.machine, "nproc": os.cpu_count(),
        "torch": torch.__version__, "bytes": size, "bytes_hashed": hashed, "files": len(paths), "params": params,
        "tensors": len(shapes), "cold_method": cache.method, "repeat": args.repeat, "times_s": times,
        "summary": summary,
    }, indent=1))
    print(f"raw times: {out}")
    if not args.keep:
        shutil.rmtree(folder)
        spec_path.unlink(missing_ok=True)
        print(f"deleted {folder} (--keep keeps it)")


if __name__ == "__main__":
    main()
