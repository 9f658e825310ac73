"""bench/gpu/check.py --dry-run on this CPU machine: the prepared GPU check builds its five training folders
(the 1B one with its synthetic shards), passes the kit's own folder validation and imports everything, then
stops before the first CUDA call, so the one run on a lent GPU does not fail on something a CPU could catch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_prepares_every_folder(tmp_path):
    work = tmp_path / "work"
    r = subprocess.run([sys.executable, "bench/gpu/check.py", "--out", str(tmp_path / "out"), "--work", str(work),
                        "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "stopping before the first CUDA call" in r.stdout
    folders = sorted(p.name for p in (work / "training").iterdir())
    assert folders == ["gpu-bench-1b", "gpu-bench-1b-det", "gpu-bench-repeat-d1", "gpu-bench-repeat-d2",
                       "gpu-bench-repeat-e"]
    assert all((work / "training" / f / "experiment.toml").is_file() for f in folders)
