"""bench/gpu/check.py --dry-run on this CPU machine, both parts in one call: every row's training folder (the
1B and 3B ones, FP8, the fusions, deterministic, micro_batch_size = "auto") passes the kit's own folder
validation, the training path imports, each kit row's layer spec is built (the FP8 linears and the compiled
RMSNorm included) and the results table renders from made-up rows; then it stops before the first CUDA call,
so the one run on a lent GPU does not fail on something a CPU could catch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_prepares_both_parts(tmp_path):
    work = tmp_path / "work"
    r = subprocess.run([sys.executable, "bench/gpu/check.py", "--out", str(tmp_path / "out"), "--work", str(work),
                        "--part", "1,2", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "stopping before the first CUDA call" in r.stdout
    folders = sorted(p.name for p in (work / "training").iterdir())
    assert folders == sorted(f"gpu-{k}" for k in ("k8", "f8", "k4", "k3", "f3", "n0", "d8", "nl", "nc", "nr", "np", "na"))
    assert "f8: kit FP8 (local, tensorwise) 1B, mbs 8 (100 steps): spec local-sdpa-fp8" in r.stdout
    assert "p8: FP8 linear on this GPU: kernel vs emulation and bf16, timed: on CPU: kernel checks OK" in r.stdout
    assert "k3: kit BF16 3B, mbs auto: spec local-sdpa, recompute none, micro-batch auto" in r.stdout
    md = (work / "dry_run_table.md").read_text()
    for ratio in ("kit / bare, same window (k8/b8)", "FP8 / BF16 tokens/s at 3B (f3/k3)",
                  "FP8 / BF16 mean loss, first 100 steps (f8/k8)", "deterministic / default step time (d8/n0)",
                  "kit BF16 1B (k8) / megatron-lm"):
        assert ratio in md, ratio


def test_check_windows_and_ratios_show_their_numbers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_table", ROOT / "bench" / "gpu" / "gpu_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    w = table.windows([1.0] * 4 + [2.0] * 4 + [1.0] * 5, 100)  # 13 steps: windows of 4, 4 and the last 5
    assert [x["steps"] for x in w] == [4, 4, 5] and [x["tokens_per_s"] for x in w] == [100.0, 50.0, 100.0]
    s = table.speed([1.0] * 4 + [2.0] * 4 + [1.0] * 5, 100, 1e9, 1e12)
    assert s["tokens_per_s_per_gpu"] == 100.0 and s["window_range"] == [50.0, 100.0] and s["mfu"] == 0.1
    line = table.ratio("kit / bare", ("k8", 50_939.0), ("b8", 50_381.0), ">= 0.98", lambda r: r >= 0.98)
    assert "1.011" in line and "k8: 50,939" in line and "b8: 50,381" in line and "MET" in line
