"""The one prepared GPU check (issue 19): the kit's runner on a 1B Llama folder against a bare megatron.core
loop, deterministic mode, two runs compared bitwise, and a kill -9 + resume, in one call of a few minutes.

    python bench/gpu/check.py --out OUT [--dry-run] [--only a,b,c,d,e]

Each measurement runs in its own process (a clean CUDA context; the deterministic environment set before CUDA
starts), so one failing step does not stop the others. ``--dry-run`` does everything up to the first CUDA call:
builds the folders and synthetic shards, loads them with the kit's folder loader, imports megatron.core and the
runner, and prints the plan. The table goes to stdout and, as JSON and Markdown, to OUT.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (REPO / "bench", REPO / "bench" / "gpu")]
sys.path.insert(0, str(REPO))

ANCHOR = 46_700  # tokens/s/GPU: Megatron-LM local spec + SDPA, 1B, seq 2048, mbs 4, one H100 (issue 19)
SEQ = 2048
VOCAB = 128256
EOD = 2  # ids below 32000, so the same shards also feed the CPU smoke run's tiny preset
FOLDER_TOML = """name = "{name}"
[data]
signatures = ["{signature}"]
data_ratio = "data_ratio.json"
valid_fraction = 0.0
[model]
preset = "{preset}"
seq_length = {seq}
[training]
micro_batch_size = {mbs}
global_batch_size = {gbs}
train_iters = {iters}
lr = 3e-4
min_lr = 3e-5
lr_warmup_iters = 2
precision = "{precision}"
save_interval = {save_interval}
eval_interval = 100000
eval_iters = 0
log_interval = 1
seed = 1234
deterministic = {deterministic}
[checkpoint]
from_scratch = true
"""


# ------------------------------------------------------------------------------------------ data + folders

def write_shards(root: Path, tokens_per_domain: int = 3_000_000) -> Path:
    """Synthetic shards (random ids, documents of 300-4000 tokens) through the kit's own shard writer."""
    import numpy as np

    from experiment.data.naming import make
    from experiment.data.shards import ShardWriter
    from experiment.data.signature import DataSignature, ShardEntry, TokenizerInfo

    sig_path = root / "signature.json"
    if sig_path.is_file():
        return sig_path
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards = []
    for domain in ("web", "code"):
        lengths = rng.integers(300, 4000, size=tokens_per_domain // 2000)
        flat = rng.integers(3, 32000, size=int(lengths.sum()), dtype=np.int32)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        tmp = root / f".{domain}.partial"
        writer = ShardWriter(tmp, np.int32, EOD)
        writer.append(flat, offsets)
        counts = writer.finish()
        name = make("en", domain, "main", 0).with_counts(counts.docs, counts.sentences, counts.tokens).format()
        for ext in (".bin", ".idx"):
            os.replace(f"{tmp}{ext}", root / f"{name}{ext}")
        shards.append(ShardEntry(prefix=name, language="en", domain=domain, subdomain="main", docs=counts.docs,
                                 sentences=counts.sentences, tokens=counts.tokens,
                                 bin_bytes=(root / f"{name}.bin").stat().st_size,
                                 idx_bytes=(root / f"{name}.idx").stat().st_size, dtype="int32"))
    sig = DataSignature(name="gpu-bench-synthetic", root=".", shards=shards,
                        tokenizer=TokenizerInfo(kind="synthetic", name="random-ids", sha256="none",
                                                vocab_size=VOCAB, eod_id=EOD))
    sig_path.write_text(sig.to_json())
    return sig_path


def make_folder(path: Path, signature: Path, *, preset: str, mbs: int, gbs: int, iters: int,
                deterministic: bool, save_interval: int = 100000, seq: int = SEQ,
                precision: str = "bf16", name: str | None = None) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / "experiment.toml").write_text(FOLDER_TOML.format(
        name=name or path.name, signature=signature, preset=preset, seq=seq, precision=precision, mbs=mbs, gbs=gbs, iters=iters,
        save_interval=save_interval, deterministic=str(deterministic).lower()))
    (path / "data_ratio.json").write_text(json.dumps({"web": 1.0, "code": 1.0}))
    return path


# ------------------------------------------------------------------------------------------ runs

def runner(folder: Path, log: Path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """``python -m experiment.train.runner FOLDER`` as its own process (one GPU, no torchrun needed)."""
    with open(log, "w") as fh:
        return subprocess.run([sys.executable, "-m", "experiment.train.runner", str(folder), *args],
                              cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)


def status(folder: Path) -> dict:
    return json.loads((folder / "logs" / "run_status.json").read_text())


def kit_row(name: str, folder: Path, log: Path, iters: int) -> dict:
    proc = runner(folder, log, "--max-iterations", str(iters), "--no-save")
    if proc.returncode:
        raise RuntimeError(f"runner exited {proc.returncode}; see {log.name}")
    st = status(folder)
    return {"run": name, "tokens_per_s_per_gpu": st["tokens_per_s_per_gpu"], "mfu": st["mfu"],
            "tflops_per_gpu": st["tflops_per_gpu"], "step_s": st["step_s"],
            "peak_memory_gib": st["peak_memory_gib"], "layer_spec": st["layer_spec"], "recompute": st["recompute"]}


def bare_main(folder: Path, iters: int, out: Path) -> None:
    """(c) in its own process: bench/train_step.py's bare megatron.core loop on the same folder."""
    import importlib.util
    import statistics

    import torch

    spec = importlib.util.spec_from_file_location("train_step", REPO / "bench" / "train_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from experiment.folder import load_schema
    from experiment.train.throughput import flops_per_token, peak_flops

    times = mod.bare_round(folder, iters)
    cfg = load_schema(folder).config
    step = statistics.mean(times[1:][-20:])
    seq = cfg.model.seq_length
    tps = cfg.training.global_batch_size * seq / step
    fpt = flops_per_token(cfg.model.shape, seq)
    on_gpu = torch.cuda.is_available()
    peak = peak_flops(torch.cuda.get_device_name()) if on_gpu else None
    out.write_text(json.dumps({"run": "(c) bare megatron.core", "tokens_per_s_per_gpu": tps, "step_s": step,
                               "tflops_per_gpu": tps * fpt / 1e12, "mfu": tps * fpt / peak if peak else None,
                               "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0,
                               "layer_spec": "local-sdpa", "recompute": "none"}))


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of each checkpoint file and of losses.jsonl (what two identical runs must share byte for byte)."""
    out = {}
    for p in sorted((folder / "checkpoints").rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    out["logs/losses.jsonl"] = hashlib.sha256((folder / "logs" / "losses.jsonl").read_bytes()).hexdigest()
    return out


def compare(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def kill_and_resume(folder: Path, log: Path, kill_after_iteration: int) -> None:
    """Start the run, kill -9 it once the checkpoint is complete and a step past it was logged, resume."""
    losses = folder / "logs" / "losses.jsonl"
    ckpt = folder / "checkpoints" / f"iter_{kill_after_iteration:07d}"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "experiment.train.runner", str(folder)], cwd=REPO,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None:
            done = losses.is_file() and len(losses.read_text().splitlines()) > kill_after_iteration
            if ckpt.is_dir() and done:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended (rc {proc.returncode}) before it could be killed; see {log.name}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = runner(folder, log.with_name(log.stem + "-resume.log"))
    if proc.returncode:
        raise RuntimeError(f"resume exited {proc.returncode}")


# ------------------------------------------------------------------------------------------ table

def _f(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def table(rows: list[dict], title: str) -> str:
    """One Markdown table: each timed run beside the bare loop (c) and the anchor; then the bitwise results."""
    bare = next((r for r in rows if r["run"].startswith("(c)") and r.get("tokens_per_s_per_gpu")), None)
    lines = [f"GPU check on {title}", "",
             "| run | tokens/s/GPU | TFLOP/s/GPU | MFU | step s | peak GiB | vs (c) bare | vs 46.7k anchor | spec |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        t = r.get("tokens_per_s_per_gpu")
        if t is None:
            lines.append(f"| {r['run']} | {r.get('result', 'failed')} | | | | | | | |")
            continue
        ratio = t / bare["tokens_per_s_per_gpu"] if bare else None
        lines.append(f"| {r['run']} | {t:,.0f} | {_f(r.get('tflops_per_gpu'), '.0f')} | {_f(r.get('mfu'), '.1%')} | "
                     f"{_f(r.get('step_s'), '.3f')} | {_f(r.get('peak_memory_gib'), '.1f')} | {_f(ratio, '.3f')} | "
                     f"{t / ANCHOR:.3f} | {r.get('layer_spec')}/{r.get('recompute')} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "gpu-bench")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--only", default="a,b,c,d,e")
    p.add_argument("--iters", type=int, default=16, help="timed steps per run (+1 warm-up, left out)")
    p.add_argument("--mbs", type=int, default=4)
    p.add_argument("--gbs", type=int, default=16)
    p.add_argument("--preset", default="llama3.2-1b", help="the measured runs' preset (tiny: CPU smoke run)")
    p.add_argument("--repeat-preset", default="smollm2-135m", help="preset of the bitwise and kill -9 runs")
    p.add_argument("--seq", type=int, default=SEQ)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--bare", nargs=3, metavar=("FOLDER", "ITERS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare:
        bare_main(Path(args.bare[0]), int(args.bare[1]), Path(args.bare[2]))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    sig = write_shards(args.work / "shards")
    iters = args.iters + 1
    train = args.work / "training"
    folders = {
        "a": make_folder(train / "gpu-bench-1b", sig, preset=args.preset, mbs=args.mbs, gbs=args.gbs,
                         iters=1000, deterministic=False, seq=args.seq, precision=args.precision),
        "b": make_folder(train / "gpu-bench-1b-det", sig, preset=args.preset, mbs=args.mbs, gbs=args.gbs,
                         iters=1000, deterministic=True, seq=args.seq, precision=args.precision),
    }
    folders["c"] = folders["a"]
    # (d)/(e) save checkpoints: 12 bytes of optimizer state per parameter make a 1B checkpoint 17 GB, too much
    # disk and time for one short call, so they use the 135M preset (same code path, same seq, 2 saves each)
    for key in ("d1", "d2", "e"):
        folders[key] = make_folder(train / f"gpu-bench-repeat-{key}", sig, preset=args.repeat_preset, mbs=4, gbs=8,
                                   iters=6, deterministic=True, save_interval=3, seq=args.seq, precision=args.precision,
                                   name="gpu-bench-repeat")  # the name is recorded in kit_checkpoint.json
    from experiment.folder import load_schema

    for key, f in folders.items():
        load_schema(f)  # the kit's own validation of every folder
    try:
        import torch
    except ImportError as err:  # a dry run under a Python without torch (CI's 3.12 check of the wheels)
        if not args.dry_run:
            raise
        print(f"dry run: torch does not import here ({err}); folders, shards and wheels checked, the training "
              "path's imports not")
        return 0
    import megatron.core  # noqa: F401

    from experiment.train import runner as _runner  # noqa: F401  (imports the whole training path)

    plan = {"a": "(a) kit runner", "b": "(b) kit runner, deterministic", "c": "(c) bare megatron.core",
            "d": "(d) two runs bitwise", "e": "(e) kill -9 + resume"}
    print(f"plan: {', '.join(plan[k] for k in sorted(only))}; {iters} steps each; folders under {train}", flush=True)
    if args.dry_run:
        print("dry run: folders, shards and imports ready; stopping before the first CUDA call")
        return 0
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    rows: list[dict] = []
    t_start = time.time()

    def step(key: str, fn) -> None:
        t0 = time.time()
        try:
            row = fn()
        except Exception as err:  # noqa: BLE001 - one failing step must not stop the others
            row = {"run": plan[key], "result": f"FAILED: {err}"}
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        print(f"[{time.time() - t_start:5.0f}s] {json.dumps(row)}", flush=True)

    logs = args.out / "logs"  # the device tool brings back 8 files: the logs come back as one tarball
    logs.mkdir(exist_ok=True)
    if "a" in only:
        step("a", lambda: kit_row(plan["a"], folders["a"], logs / "a.log", iters))
    if "b" in only:
        step("b", lambda: kit_row(plan["b"], folders["b"], logs / "b.log", iters))
    if "c" in only:
        def bare():
            out = args.work / "bare.json"
            with open(logs / "c.log", "w") as fh:
                rc = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--bare", str(folders["c"]),
                                     str(iters), str(out)], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                    timeout=150).returncode
            if rc:
                raise RuntimeError(f"bare loop exited {rc}; see c.log")
            return json.loads(out.read_text())
        step("c", bare)
    if "d" in only or "e" in only:
        def repeat():
            for key in ("d1", "d2"):
                if runner(folders[key], logs / f"{key}.log").returncode:
                    raise RuntimeError(f"run {key} failed; see {key}.log")
            diff = compare(tree_digest(folders["d1"]), tree_digest(folders["d2"]))
            n = len(tree_digest(folders["d1"]))
            return {"run": plan["d"], "result": f"{'EQUAL' if not diff else 'DIFFER'}: {n - len(diff)}/{n} files "
                    f"byte-identical (losses.jsonl + 2 checkpoints){'' if not diff else ' ' + ', '.join(diff[:3])}"}
        step("d", repeat)
    if "e" in only:
        def resume():
            kill_and_resume(folders["e"], logs / "e.log", 3)
            diff = compare(tree_digest(folders["d1"]), tree_digest(folders["e"]))
            n = len(tree_digest(folders["d1"]))
            return {"run": plan["e"], "result": f"{'EQUAL' if not diff else 'DIFFER'}: {n - len(diff)}/{n} files "
                    f"byte-identical to the uninterrupted run{'' if not diff else ' ' + ', '.join(diff[:3])}"}
        step("e", resume)
    shutil.make_archive(str(args.out / "logs"), "gztar", logs)
    shutil.rmtree(logs)
    md = table(rows, f"{device}: {args.preset} shapes, seq {args.seq}, micro-batch {args.mbs}, global batch "
                     f"{args.gbs}, {args.precision}, {iters} steps (first left out)")
    print(md)
    (args.out / "gpu_check.md").write_text(md + "\n")
    (args.out / "gpu_check.json").write_text(json.dumps({"device": device, "date": time.strftime("%Y-%m-%d"),
                                                         "anchor_tokens_per_s": ANCHOR, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
