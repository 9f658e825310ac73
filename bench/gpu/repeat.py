"""Issue 19's bitwise checks on a GPU (``bench/gpu/check.py --part repeat``): two runs byte for byte, and a
kill -9 + resume byte-identical to the uninterrupted run; and the synthetic shards every part trains on.

The repeat runs use the 135M preset: a 1B checkpoint with its Adam state is ~17 GB, too much disk and time
for one short call; the code path (NCCL, bf16, distributed optimizer, SDPA, saves) is the same.
"""

from __future__ import annotations

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
fp8 = {fp8}
fusions = {fusions}
save_interval = {save_interval}
eval_interval = 100000
eval_iters = 0
log_interval = {log_interval}
seed = 1234
deterministic = {deterministic}
[checkpoint]
from_scratch = true
"""  # every GPU check folder (this file's and check.py's rows) is this template


def folder_toml(name: str, signature, preset: str, seq: int, mbs=4, gbs: int = 8, iters: int = 6,
                precision: str = "bf16", fp8: bool = False, fusions=(), save_interval: int = 3,
                log_interval: int = 1, deterministic: bool = True) -> str:
    """A check folder's experiment.toml; the defaults are the repeat pair's (6 steps, 2 saves, deterministic)."""
    return FOLDER_TOML.format(name=name, signature=signature, preset=preset, seq=seq, mbs=json.dumps(mbs),
                              gbs=gbs, iters=iters, precision=precision, fp8=str(fp8).lower(),
                              fusions=json.dumps(list(fusions)), save_interval=save_interval,
                              log_interval=log_interval, deterministic=str(deterministic).lower())


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


def runner(folder: Path, log: Path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """``python -m experiment.train.runner FOLDER`` as its own process (one GPU, no torchrun needed)."""
    with open(log, "w") as fh:
        return subprocess.run([sys.executable, "-m", "experiment.train.runner", str(folder), *args],
                              cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)


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


def main(args) -> int:
    """``--part repeat``: (d) two runs bitwise, (e) kill -9 + resume; a table to stdout and OUT."""
    sig = write_shards(args.work / "shards")
    folders = {}
    for key in ("d1", "d2", "e"):
        path = args.work / "training" / f"gpu-bench-repeat-{key}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        (path / "experiment.toml").write_text(folder_toml("gpu-bench-repeat", sig, "smollm2-135m", args.seq))
        (path / "data_ratio.json").write_text(json.dumps({"web": 1.0, "code": 1.0}))
        folders[key] = path
    from experiment.folder import load_schema

    for f in folders.values():
        load_schema(f)
    if args.dry_run:
        print("dry run: repeat folders ready; stopping before the first CUDA call")
        return 0
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    rows = []
    for key in ("d1", "d2"):
        if runner(folders[key], logs / f"{key}.log").returncode:
            rows.append(f"run {key} failed; see {key}.log")
    if not rows:
        d1 = tree_digest(folders["d1"])
        diff = compare(d1, tree_digest(folders["d2"]))
        rows.append(f"(d) two runs: {'EQUAL' if not diff else 'DIFFER'}: {len(d1) - len(diff)}/{len(d1)} files "
                    f"byte-identical {diff[:3] if diff else ''}")
        try:
            kill_and_resume(folders["e"], logs / "e.log", 3)
            diff = compare(d1, tree_digest(folders["e"]))
            rows.append(f"(e) kill -9 + resume: {'EQUAL' if not diff else 'DIFFER'}: {len(d1) - len(diff)}/{len(d1)} "
                        f"files byte-identical to the uninterrupted run {diff[:3] if diff else ''}")
        except Exception as err:  # noqa: BLE001
            rows.append(f"(e) kill -9 + resume FAILED: {err}")
    shutil.make_archive(str(args.out / "logs_repeat"), "gztar", logs)
    shutil.rmtree(logs)
    print("\n".join(rows))
    (args.out / "gpu_check_repeat.md").write_text("\n".join(rows) + "\n")
    return 0
