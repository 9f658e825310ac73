"""What bench/gpu/check.py records and prints: the machine's raw record, each row's windows and medians, and the
table of goals and anchors, every ratio with the two numbers it comes from.

Pure Python (no torch at import), so the dry run renders the same table from made-up rows on a CPU.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEAK_DENSE_BF16 = 989e12  # H100 SXM and H200, FLOP/s (experiment.train.throughput.PEAK_BF16)
# Anchors: tokens/s per GPU, with where each comes from and on which card (compare like cards only)
ANCHORS = {
    "megatron-lm": (46_700, "Megatron-LM local spec + SDPA, Llama-3.2-1B shapes, seq 2048, mbs 4, bf16, one H100 "
                            "(measured for this project, issue 19)"),
    "olmo-bf16": (55_000, "OLMo-core README, its 1B (OLMo-2 shapes, not Llama-3.2's), BF16, H100"),
    "olmo-fp8": (65_000, "OLMo-core README, its 1B, FP8 (torchao Float8), H100"),
}
GOALS = {"mfu": 0.45, "kit_vs_bare": 0.98, "fp8_speedup": 1.25, "fp8_loss": 0.01, "deterministic": 0.10}
WINDOWS = 3


def _run(cmd: list[str], timeout: float = 20) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def commit(given: str | None) -> dict:
    """The kit commit the rows ran (git where the tree has .git; else --commit / GPU_CHECK_COMMIT)."""
    sha = _run(["git", "rev-parse", "HEAD"])
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"])) if sha else None
    try:  # the content hash of the kit's source: which code ran, with or without .git
        from experiment.lock.environment import source_hash

        source = source_hash()
    except Exception:  # noqa: BLE001 - a record, never a reason to stop
        source = None
    return {"commit": sha or given or os.environ.get("GPU_CHECK_COMMIT") or "unknown", "dirty": dirty,
            "commit_from": "git" if sha else ("--commit" if given else "environment or unknown"),
            "kit_source_hash": source}


def machine(given_commit: str | None = None) -> dict:
    """The record every row shares: commit, GPU, card, driver, CUDA, torch/megatron-core/Python versions."""
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "missing"

    rec = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **commit(given_commit),
           "python": platform.python_version(), "torch": version("torch"),
           "megatron_core": version("megatron-core"), "transformer_engine": version("transformer-engine")}
    # the GPU's details from a child process: a CUDA context in the check's own process would hold GPU memory
    # through every row
    probe = _run([sys.executable, str(Path(__file__).resolve()), "--device"], timeout=90)
    try:
        return {**rec, **json.loads(probe.splitlines()[-1])}
    except (IndexError, ValueError):
        return {**rec, "gpu": None, "card": "unknown (the device probe failed)"}


def device() -> dict:
    """This process's GPU: name, card, driver, CUDA, capability, memory (or the CPU)."""
    try:
        import torch
    except ImportError:
        return {"gpu": None, "card": "CPU"}
    if not torch.cuda.is_available():
        return {"gpu": None, "card": f"CPU ({os.cpu_count()} cores)", "cuda": torch.version.cuda}
    name = torch.cuda.get_device_name()
    props = torch.cuda.get_device_properties(0)
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).splitlines()
    card = next((c for c in ("GH200", "H200", "H100", "B200", "A100", "L40S") if c in name), name)
    return {"gpu": name, "card": card, "driver": driver[0] if driver else "unknown",
            "cuda": torch.version.cuda, "capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "memory_gib": round(props.total_memory / 2**30, 1)}


def windows(step_seconds: list[float], tokens_per_step: int, n: int = WINDOWS) -> list[dict]:
    """``step_seconds`` (whole steps, warm-up already left out) cut into ``n`` contiguous windows."""
    size = len(step_seconds) // n
    if size < 1:
        raise ValueError(f"{len(step_seconds)} timed steps cannot make {n} windows")
    out = []
    for i in range(n):
        chunk = step_seconds[i * size:(i + 1) * size] if i < n - 1 else step_seconds[i * size:]
        out.append({"steps": len(chunk), "seconds": round(sum(chunk), 6),
                    "tokens_per_s": round(tokens_per_step * len(chunk) / sum(chunk), 1)})
    return out


def speed(step_seconds: list[float], tokens_per_step: int, flops_per_token: float, peak: float | None) -> dict:
    """Median over the windows: tokens/s/GPU (one GPU), TFLOP/s, MFU, step seconds."""
    w = windows(step_seconds, tokens_per_step)
    tps = statistics.median(x["tokens_per_s"] for x in w)
    return {"windows": w, "tokens_per_s_per_gpu": tps, "step_s": tokens_per_step / tps,
            "window_range": [min(x["tokens_per_s"] for x in w), max(x["tokens_per_s"] for x in w)],
            "tflops_per_gpu": tps * flops_per_token / 1e12, "mfu": tps * flops_per_token / peak if peak else None}


def _num(x, spec=",.0f") -> str:
    return "-" if x is None else format(x, spec)


def rows_table(rows: list[dict]) -> list[str]:
    lines = ["| row | tokens/s/GPU (median of 3 windows; range) | MFU | step s | mbs x gbs | spec / recompute | "
             "peak GiB |", "|---|---:|---:|---:|---|---|---:|"]
    for r in rows:
        if r.get("tokens_per_s_per_gpu") is None:
            lines.append(f"| {r['label']} | {r.get('result', 'not run')} | | | | | |")
            continue
        lo, hi = r["window_range"]
        lines.append(f"| {r['label']} | {r['tokens_per_s_per_gpu']:,.0f} ({lo:,.0f}-{hi:,.0f}) | "
                     f"{_num(r.get('mfu'), '.1%')} | {r['step_s']:.3f} | {r['micro_batch_size']} x "
                     f"{r['global_batch_size']} | {r.get('layer_spec')} / {r.get('recompute')} | "
                     f"{_num(r.get('peak_memory_gib'), '.1f')} |")
    return lines


def ratio(name: str, a: tuple[str, float | None], b: tuple[str, float | None], goal: str = "",
           ok=None) -> str:
    (an, av), (bn, bv) = a, b
    if av is None or bv is None:
        return f"| {name} | - | {an}: {_num(av)} | {bn}: {_num(bv)} | {goal} | not measured |"
    verdict = "" if ok is None else ("MET" if ok(av / bv) else "MISSED")

    def n(v: float) -> str:
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"

    return f"| {name} | {av / bv:.3f} | {an}: {n(av)} | {bn}: {n(bv)} | {goal} | {verdict} |"


def goals_table(rows: list[dict], card: str) -> list[str]:
    """Each goal and anchor as a ratio beside the two numbers it is made of."""
    by = {r["key"]: r for r in rows}

    def tps(key):
        return by.get(key, {}).get("tokens_per_s_per_gpu")

    def step(key):
        return by.get(key, {}).get("step_s")

    lines = ["| ratio | value | numerator | denominator | goal | |", "|---|---:|---|---|---|---|"]
    k1 = next((k for k in ("k8", "k4", "n0") if tps(k)), None)
    if k1:
        mfu = by[k1].get("mfu")
        lines.append(f"| kit BF16 1B MFU ({k1}) | {_num(mfu, '.1%')} | {tps(k1):,.0f} tokens/s x "
                     f"{by[k1]['flops_per_token'] / 1e9:.2f} GFLOP | {PEAK_DENSE_BF16 / 1e12:.0f} TFLOP/s dense peak | "
                     f">= 45% | {'not measured' if mfu is None else 'MET' if mfu >= GOALS['mfu'] else 'MISSED'} |")
    for kit, bare in (("k8", "b8"), ("k4", "b4")):
        if kit in by or bare in by:
            lines.append(ratio(f"kit / bare, same window ({kit}/{bare})", (kit, tps(kit)), (bare, tps(bare)),
                                ">= 0.98", lambda r: r >= GOALS["kit_vs_bare"]))
    for fp8, bf16, size in (("f8", "k8", "1B"), ("f3", "k3", "3B")):
        if fp8 in by or bf16 in by:
            goal = ">= 1.25" if size == "3B" else "measured (goal at 3B)"
            lines.append(ratio(f"FP8 / BF16 tokens/s at {size} ({fp8}/{bf16})", (fp8, tps(fp8)), (bf16, tps(bf16)),
                                goal, (lambda r: r >= GOALS["fp8_speedup"]) if size == "3B" else None))
    loss_f, loss_b = by.get("f8", {}).get("mean_loss"), by.get("k8", {}).get("mean_loss")
    if loss_f is not None or loss_b is not None:
        lines.append(ratio("FP8 / BF16 mean loss, first 100 steps (f8/k8)", ("f8", loss_f), ("k8", loss_b),
                            "within 1%", lambda r: abs(r - 1) <= GOALS["fp8_loss"]))
    if "d8" in by:
        lines.append(ratio("deterministic / default step time (d8/n0)", ("d8 s", step("d8")), ("n0 s", step("n0")),
                            "<= 1.10", lambda r: r <= 1 + GOALS["deterministic"]))
    for key in ("nl", "nc", "nr", "np", "na"):
        if key in by:
            lines.append(ratio(f"fusion {by[key]['label']} / off ({key}/n0)", (key, tps(key)), ("n0", tps("n0")),
                                "> 1.00 to become a default", lambda r: r > 1.0))
    anchor_note = "" if card == "H100" else f" (anchor on an H100, these rows on {card}: not like for like)"
    for key, anchor, what in (("k8", "megatron-lm", "BF16"), ("k4", "megatron-lm", "BF16"),
                              ("k8", "olmo-bf16", "BF16"), ("f8", "olmo-fp8", "FP8")):
        if tps(key):
            value, _ = ANCHORS[anchor]
            lines.append(ratio(f"kit {what} 1B ({key}) / {anchor}{anchor_note}", (key, tps(key)),
                                (anchor, float(value)), "context"))
    return lines


def render(rows: list[dict], record: dict, title: str) -> str:
    head = (f"{title}\n\non {record.get('gpu') or record.get('card')} (card {record.get('card')}, driver "
            f"{record.get('driver', '-')}, CUDA {record.get('cuda', '-')}), torch {record['torch']}, megatron-core "
            f"{record['megatron_core']}, commit {record['commit'][:12]}{' (dirty)' if record.get('dirty') else ''}, "
            f"{record['date']}\n")
    anchors = "\n".join(f"- {k}: {v:,} tokens/s: {src}" for k, (v, src) in ANCHORS.items())
    return "\n".join([head, *rows_table(rows), "", *goals_table(rows, record.get("card", "")), "", "Anchors:",
                      anchors])


def fake_rows(keys: list[str]) -> list[dict]:
    """Made-up rows for the dry run: the table's code runs on a CPU, its numbers mean nothing."""
    out = []
    for i, key in enumerate(keys):
        steps = [0.6 + 0.01 * (i + j % 3) for j in range(30)]
        row = {"key": key, "label": f"{key} (dry run, made-up numbers)", "micro_batch_size": 8,
               "global_batch_size": 16, "layer_spec": "local-sdpa", "recompute": "none", "peak_memory_gib": 1.0,
               "flops_per_token": 7.8e9, "mean_loss": 10.5 + 0.01 * i}
        row.update(speed(steps, 16 * 2048, 7.8e9, PEAK_DENSE_BF16))
        out.append(row)
    return out


if __name__ == "__main__" and sys.argv[1:] == ["--device"]:
    print(json.dumps(device()))
