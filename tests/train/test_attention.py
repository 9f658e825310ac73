"""The runner's SDPA attention computes what megatron's local DotProductAttention computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_sdpa_matches_the_local_spec(repo_root):
    script = Path(__file__).with_name("attention_check.py")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(repo_root)}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["logits_max_diff"] <= 1e-5 * max(1.0, r["logits_scale"]), r
    assert r["grad_max_diff"] <= 1e-4 * max(1e-6, r["grad_scale"]) + 1e-9, r
