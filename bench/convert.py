"""Bench: checkpoint import/export against a plain file copy of the same safetensors (the I/O floor).

    python bench/convert.py [--preset llama3.2-1b] [--layers 16] [--dtype bfloat16] [--out /tmp/bench-convert]

1. Writes a random Hugging Face folder with real Llama shapes (default: Llama-3.2-1B, bf16, 2.5 GB),
   one safetensors shard per layer.
2. In separate processes (so each peak RSS is its own), each round: a `cp`-like copy of the shards
   (copyfile + fsync: the anchor), the same bytes written with O_DIRECT (``experiment.ckpt.direct_writer``,
   the disk's own floor, shown so that the ratios can be read against the disk too), `experiment ckpt
   import` (TP=1: the whole model in one process, the worst case for memory) and `experiment ckpt export`
   of that checkpoint, each once in a child that splits start-up from conversion and once as the real
   command, timed from outside.
3. Prints medians of the --repeat rounds (and their range): the start-up every `experiment ckpt` command
   pays (torch + megatron.core imports, process group), the conversion itself (MB/s, ratio to the copy
   of the same round), the whole command and its ratio to the copy, and peak RSS above the start-up
   against the largest layer (the memory goal's unit).
Each step runs after a `sync` and a 2 s pause: this host's disk and its first touch of guest memory make
single timings swing by 2x, hence medians of alternating rounds. Every step's input is first put in the same
page-cache state (--cache cold: its pages dropped, so all read from disk; --cache warm: read whole first).
"""

from __future__ import annotations

import sys

# run as a script, bench/ is sys.path[0], and bench/tokenize.py would shadow the stdlib module: use the repo root
sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path


def _rss_mb() -> float:
    """Peak RSS of this process (VmHWM; getrusage's ru_maxrss survives exec and would report the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_model(out: Path, preset: str, layers: int | None, dtype: str) -> dict:
    """Random HF Llama folder, one shard per layer, written tensor by tensor (never the whole model)."""
    import torch
    from safetensors.torch import save_file

    from experiment.model.presets import PRESETS

    shape = PRESETS[preset]
    if layers:
        shape = shape.model_copy(update={"num_layers": layers})
    if (out / "config.json").is_file():
        return json.loads((out / "bench_shape.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    h, f, d = shape.hidden_size, shape.ffn_hidden_size, shape.kv_channels
    q, kv = shape.num_attention_heads * d, shape.num_query_groups * d
    tdt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)

    def rnd(*s):
        return (torch.randn(*s, generator=gen) * 0.02).to(tdt)

    weight_map = {}
    shards = [("model.embed_tokens.weight", (shape.vocab_size, h)), ("model.norm.weight", (h,))]
    if not shape.tie_embeddings:
        shards.append(("lm_head.weight", (shape.vocab_size, h)))
    groups = [dict((n, rnd(*s)) for n, s in shards)]
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        groups.append({p + "input_layernorm.weight": rnd(h), p + "post_attention_layernorm.weight": rnd(h),
                       p + "self_attn.q_proj.weight": rnd(q, h), p + "self_attn.k_proj.weight": rnd(kv, h),
                       p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.o_proj.weight": rnd(h, q),
                       p + "mlp.gate_proj.weight": rnd(f, h), p + "mlp.up_proj.weight": rnd(f, h),
                       p + "mlp.down_proj.weight": rnd(h, f)})
        if i == 0:
            layer_bytes = sum(t.numel() * t.element_size() for t in groups[-1].values())
        name = f"model-{i + 2:05d}-of-{shape.num_layers + 1:05d}.safetensors"
        save_file(groups.pop(), str(out / name), metadata={"format": "pt"})
        weight_map |= {k: name for k in _keys_of(out / name)}
    first = f"model-00001-of-{shape.num_layers + 1:05d}.safetensors"
    embed_bytes = sum(t.numel() * t.element_size() for t in groups[0].values())
    save_file(groups.pop(), str(out / first), metadata={"format": "pt"})
    weight_map |= {k: first for k in _keys_of(out / first)}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": f,
        "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_query_groups, "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.max_position_embeddings, "rms_norm_eps": shape.norm_epsilon,
        "tie_word_embeddings": shape.tie_embeddings, "hidden_act": "silu", "dtype": dtype,
        "rope_parameters": ({"rope_type": "llama3", "rope_theta": shape.rope_theta, "factor": shape.rope_scaling_factor,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
                            if shape.rope_scaling == "llama3" else {"rope_type": "default", "rope_theta": shape.rope_theta}),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    info = {"preset": preset, "layers": shape.num_layers, "dtype": dtype, "layer_bytes": layer_bytes,
            "largest_tensor_bytes": shape.vocab_size * h * tdt.itemsize, "embed_group_bytes": embed_bytes}
    (out / "bench_shape.json").write_text(json.dumps(info))
    return info


def _keys_of(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return list(fh.keys())


# ---------------------------------------------------------------- children (one measurement each)

def child(mode: str, src: str, dst: str) -> dict:
    """One measurement. ``startup``: importing torch and megatron.core and starting the process group the
    way the CLI does (``experiment.ckpt.cli._libraries``: the collector paused over the imports), what every
    `experiment ckpt` command pays before touching data; ``seconds``: the conversion after it."""
    import warnings

    warnings.filterwarnings("ignore")
    begin = time.perf_counter()
    if mode.startswith("copy"):
        from experiment.ckpt.direct_writer import DirectWriter
    else:
        from experiment.ckpt.cli import _libraries
        from experiment.model import parallel as distributed
        from experiment.model.build import ParallelLayout

        hf_import, hf_export = _libraries()
        distributed.initialize()
    baseline = _rss_mb()
    start = time.perf_counter()
    if mode == "copy":  # what `cp` does: through the page cache, then fsync
        Path(dst).mkdir(parents=True)
        for f in sorted(Path(src).iterdir()):
            shutil.copyfile(f, Path(dst) / f.name)
            fd = os.open(Path(dst) / f.name, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    elif mode == "copy-direct":  # the disk's own floor: the same bytes with the writer the conversions use
        import mmap

        Path(dst).mkdir(parents=True)
        for f in sorted(Path(src).iterdir()):
            with open(f, "rb") as fh, DirectWriter(Path(dst) / f.name) as out:
                if os.fstat(fh.fileno()).st_size:
                    with mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mapped:
                        out.write(mapped)
    elif mode == "import":
        hf_import.import_checkpoint(hf_import.plan_import(src, dst, ParallelLayout()), dst, ParallelLayout(),
                                    show_progress=False)
    elif mode == "export":
        hf_export.export_checkpoint(src, dst, show_progress=False)
    seconds = time.perf_counter() - start
    startup = 0.0 if mode.startswith("copy") else start - begin
    return {"seconds": seconds, "startup": startup, "peak_rss_mb": _rss_mb(), "baseline_rss_mb": baseline}


def run_command(mode: str, src: Path, dst: Path, cache: str) -> dict:
    """The whole `experiment ckpt import|export SRC DST` command, timed from outside: interpreter, CLI,
    imports, conversion and exit, what a user waits for."""
    _prepare_step(src, dst, cache)
    exe = Path(sys.executable).with_name("experiment")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "experiment.cli"]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "ckpt", mode, str(src), str(dst), "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"experiment ckpt {mode} failed:\n{proc.stderr[-4000:]}")
    return {"wall": wall, "convert_seconds": json.loads(proc.stdout.strip().splitlines()[-1])["convert_seconds"]}


def set_cache(folder: Path, state: str) -> None:
    """Put every file under ``folder`` (a step's input) in one page-cache state, the same for every step:
    ``cold`` drops its pages (clean after the sync: POSIX_FADV_DONTNEED), so the step reads from disk;
    ``warm`` reads it whole first, so the step reads from memory."""
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        fd = os.open(f, os.O_RDONLY)
        try:
            if state == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 16 << 20):
                    pass
        finally:
            os.close(fd)


def _prepare_step(src: Path, dst: Path, cache: str) -> None:
    """The same start for every step: no output, no writeback pending from the step before (the deletion
    included), the input in the page-cache state asked for, 2 s of quiet."""
    shutil.rmtree(dst, ignore_errors=True)
    os.sync()
    set_cache(src, cache)
    time.sleep(2)


def run_child(mode: str, src: Path, dst: Path, cache: str) -> dict:
    _prepare_step(src, dst, cache)
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(src), str(dst)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="llama3.2-1b")
    ap.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-convert"))
    ap.add_argument("--repeat", type=int, default=5, help="rounds of copy, direct copy, import, export; medians")
    ap.add_argument("--cache", choices=("cold", "warm"), default="cold",
                    help="page-cache state of each step's input, the same for all three steps (default: cold)")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "SRC", "DST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    hf = args.out / "hf"
    info = make_model(hf, args.preset, args.layers, args.dtype)
    size = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    steps = [("plain copy (cp + fsync)", "copy", hf, args.out / "copy"),
             ("copy, O_DIRECT (disk floor)", "copy-direct", hf, args.out / "copy-direct"),
             ("experiment ckpt import (TP=1)", "import", hf, args.out / "ckpt"),
             ("experiment ckpt export", "export", args.out / "ckpt", args.out / "back")]
    runs: dict[str, list[dict]] = {name: [] for name, *_ in steps}
    for k in range(args.repeat):
        for name, mode, src, dst in steps:
            r = run_child(mode, src, dst, args.cache)
            if mode in ("import", "export"):  # the same command whole, timed from outside, in the same round
                r |= run_command(mode, src, dst, args.cache)
            runs[name].append(r)
            whole = f", whole command {r['wall']:.2f} s" if "wall" in r else ""
            print(f"round {k + 1} {name}: {r['seconds']:.2f} s (+{r['startup']:.2f} s start-up){whole}, "
                  f"peak {r['peak_rss_mb']:.0f} MB", flush=True)
    median = statistics.median
    copies = [r["seconds"] for r in runs[steps[0][0]]]
    layer_mb, tensor_mb = info["layer_bytes"] / 1e6, info["largest_tensor_bytes"] / 1e6
    table = Table(title=f"{args.preset} ({info['layers']} layers, {args.dtype}): {size / 1e9:.2f} GB of safetensors; "
                        f"one layer {layer_mb:.0f} MB, largest tensor {tensor_mb:.0f} MB; inputs {args.cache} in the "
                        f"page cache; medians of {args.repeat} rounds (range); ratios per round against that "
                        "round's plain copy")
    for col in ("step", "start-up s", "convert s", "MB/s", "vs copy", "whole command s", "whole vs copy",
                "RSS above start-up MB", "above / largest layer"):
        table.add_column(col, justify="right" if col != "step" else "left", overflow="fold")
    largest_layer = max(layer_mb, info["embed_group_bytes"] / 1e6)

    def spread(values, fmt="{:.2f}"):
        return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"

    rows = {}
    for name, *_ in steps:
        rs = runs[name]
        secs = [r["seconds"] for r in rs]
        ratio = [c / r["seconds"] for c, r in zip(copies, rs)]
        above = max(r["peak_rss_mb"] - r["baseline_rss_mb"] for r in rs)
        walls = [r["wall"] for r in rs if "wall" in r]
        whole_ratio = [c / r["wall"] for c, r in zip(copies, rs) if "wall" in r]
        rows[name] = {"seconds": median(secs), "startup": median(r["startup"] for r in rs),
                      "vs_copy": median(ratio), "whole_seconds": median(walls) if walls else None,
                      "whole_vs_copy": median(whole_ratio) if whole_ratio else None, "rss_above_mb": above,
                      "rounds": rs}
        table.add_row(name, spread([r["startup"] for r in rs], "{:.1f}"), spread(secs),
                      f"{size / 1e6 / median(secs):.0f}", spread(ratio) + "x",
                      spread(walls) if walls else "-", spread(whole_ratio) + "x" if whole_ratio else "-",
                      f"{above:.0f}", f"{above / largest_layer:.2f}")
    Console(width=160).print(table)
    print(json.dumps({"bytes": size, "info": info, "rows": rows}))


if __name__ == "__main__":
    main()
