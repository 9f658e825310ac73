"""``experiment eval`` on a real run (the tracking fixture's run B: torchrun, megatron.core, 4 steps, held-out
split, MLflow + W&B switched on with ``--set``): real lm-evaluation-harness on the exported checkpoints, the
kit's local tasks (held-out perplexity per domain, multiple choice per language), the table, the PNG, and the
numbers mirrored to MLflow. Plus the bad input: lm-eval missing gives the install line."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from tests.tracking import wandb_offline
from tests.tracking.conftest import run_cli


def _hf_tokenizer(sp_model: Path, dest: Path) -> Path:
    """The run's SentencePiece model as a Hugging Face tokenizer folder (from-scratch runs export none)."""
    from transformers import LlamaTokenizer

    src = dest.with_name("sp")
    src.mkdir()
    shutil.copy(sp_model, src / "tokenizer.model")
    LlamaTokenizer.from_pretrained(str(src)).save_pretrained(str(dest))
    return dest


@pytest.mark.slow
def test_eval_table_png_and_trackers_on_a_real_run(three_runs, sp_model_path, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(three_runs["b"].parent.parent, root, symlinks=True)  # the fixture's files stay as they are
    folder = root / "training" / "tiny"
    tok = _hf_tokenizer(sp_model_path, tmp_path / "tokenizer")
    task_dir = _own_task(tmp_path / "my-tasks")
    r = run_cli("eval", str(folder), "--tokenizer", str(tok), "--limit", "16", "--max-docs", "8", "--json",
                "--task-dir", str(task_dir), "--task", "my_continuation")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    out = json.loads(r.stdout)
    rows = {row["label"]: row for row in out["rows"]}
    assert list(rows) == ["iter_0000002", "iter_0000004"]  # --checkpoints all; from scratch: no base
    runner = {}  # the runner's own held-out loss per (iteration, domain)
    for line in (folder / "logs" / "eval.jsonl").read_text().splitlines():
        rec = json.loads(line)
        runner[rec["iteration"], rec["domain"]] = float.fromhex(rec["loss"])
    for label, row in rows.items():
        assert set(row["ppl"]) == {"code", "docs"} and set(row["mc"]) == {"en", "ja"}
        for domain, ppl in row["ppl"].items():
            assert math.isfinite(ppl) and ppl > 1
            # the same held-out documents, tokens and model: ln(perplexity) is the runner's held-out loss
            # (the runner packs documents into 32-token samples and scores EOD too: a small tolerance)
            assert abs(math.log(ppl) - runner[row["iteration"], domain]) < 0.05, (label, domain, ppl)
        for acc in row["mc"].values():
            assert 0.0 <= acc <= 1.0
        # the user's own lm-eval task ran through lm-eval's include_path, on the same items as the kit's mc/en
        assert row["tasks"]["my_continuation"]["acc"] == pytest.approx(row["mc"]["en"])
    ref = rows["iter_0000002"]
    assert ref["gain"] == 0.0 and (ref["replay_loss"] in (0.0, None))
    last = rows["iter_0000004"]
    targets = set(out["targets"])
    assert targets and targets < {"code", "docs"}
    want = sum(math.log(ref["ppl"][d]) - math.log(last["ppl"][d]) for d in targets) / len(targets)
    assert last["gain"] == pytest.approx(want)
    png = folder / "logs" / "eval" / "gain.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert json.loads((folder / "logs" / "eval" / "eval.json").read_text())["rows"] == out["rows"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'logs' / 'mlflow.db'}")
    run_id = json.loads((folder / "logs" / "tracking.json").read_text())["mlflow_run_id"]
    for domain in ("code", "docs"):
        history = {m.step: m.value for m in client.get_metric_history(run_id, f"eval/ppl/{domain}")}
        assert history == pytest.approx({row["iteration"]: row["ppl"][domain] for row in rows.values()})
    assert {m.step for m in client.get_metric_history(run_id, "eval/mc_acc/ja")} == {2, 4}
    # and the same numbers in the W&B offline run files (the training's, then eval's resumed one)
    logged: dict[int, dict[str, float]] = {}
    for run_file in sorted((folder / "logs" / "wandb").glob("offline-run-*/run-*.wandb")):
        for step, values in wandb_offline.history(run_file).items():
            logged.setdefault(step, {}).update(values)
    for row in rows.values():
        for domain in ("code", "docs"):
            assert logged[row["iteration"]][f"eval/ppl/{domain}"] == pytest.approx(row["ppl"][domain])
        assert logged[row["iteration"]]["eval/mc_acc/ja"] == pytest.approx(row["mc"]["ja"])

    # the two exports ran side by side (one process each on this CPU); one after the other in this process
    # gives the same figures, bit for bit
    from experiment.evaluate import harness

    assert harness.cpu_workers(2)[0] == min(2, len(os.sched_getaffinity(0)))
    eval_dir = folder / "logs" / "eval"
    docs = {p.stem.removeprefix("heldout_"): p for p in sorted((eval_dir / "tasks").glob("heldout_*.jsonl"))}
    (alone,) = harness.evaluate_all(None, [eval_dir / "export" / "iter_0000004"], tok, docs, eval_dir / "hf-datasets",
                                    4, 16, 512, ["my_continuation"], task_dir)
    assert {d: alone[f"ppl/{d}"]["token_perplexity"] for d in ("code", "docs")} == last["ppl"]
    assert {lang: alone[f"mc/{lang}"]["acc"] for lang in ("en", "ja")} == last["mc"]

    # the run report shows the same table and the gain plot
    rep = run_cli("report", str(folder))
    assert rep.returncode == 0, rep.stderr[-3000:]
    page = (folder / "report.html").read_text()
    assert "<h2>lm-eval on the checkpoints</h2>" in page and 'alt="target gain vs replay loss"' in page
    assert f"{rows['iter_0000004']['ppl']['code']:.3f}" in page and "my_continuation" in page


@pytest.mark.slow
def test_max_tokens_caps_each_domains_held_out_text(three_runs, sp_model_path, tmp_path):
    """``--max-tokens N``: at most N of the shards' tokens per domain (the last document cut there), since the
    eval's cost is its tokens; without it, all of ``--max-docs``."""
    from transformers import AutoTokenizer

    from experiment.evaluate import heldout
    from experiment.mixture.checks import load_checked

    root = tmp_path / "b"
    shutil.copytree(three_runs["b"].parent.parent, root, symlinks=True)
    folder = load_checked(root / "training" / "tiny")
    tok = AutoTokenizer.from_pretrained(str(_hf_tokenizer(sp_model_path, tmp_path / "tokenizer")))

    def tokens(max_tokens):
        paths = heldout.write_documents(folder, tok, tmp_path / f"out-{max_tokens}", 8, max_tokens)
        return {key: [json.loads(line)["tokens"] for line in path.read_text().splitlines()]
                for key, path in paths.items()}

    whole, capped = tokens(None), tokens(40)
    assert set(whole) == set(capped) == {"code", "docs"}
    for key in whole:
        assert sum(whole[key]) > 60  # the fixture's documents are longer than the cap
        assert 30 <= sum(capped[key]) <= 44, capped  # re-tokenizing the cut text may move the count a little
        assert len(capped[key]) <= len(whole[key])


def _own_task(folder: Path) -> Path:
    """A user's own lm-eval YAML task with local data: the kit's English multiple choice under another name."""
    from experiment.evaluate.harness import TASKS

    folder.mkdir()
    template = (TASKS / "continuation_mc.yaml").read_text()
    (folder / "my_continuation.yaml").write_text(
        f"task: my_continuation\ndataset_kwargs:\n  data_files:\n    test: {TASKS / 'mc_en.jsonl'}\n"
        f"  cache_dir: {folder / 'hf-datasets'}\n" + template)
    return folder


@pytest.mark.parametrize("task, says", [
    ("no_such_task_xyz", "lm-eval knows no task of that name"),
    ("arc_easy", "its dataset is not on this machine"),  # a standard task: its data is not in the local cache
])
def test_a_task_that_cannot_run_here_is_one_clear_message_before_any_export(task, says, tmp_path):
    r = run_cli("eval", str(tmp_path / "no-folder"), "--task", task)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"--task {task}: {says}" in r.stderr
    if task == "arc_easy":
        assert "HF_DATASETS_CACHE" in r.stderr  # the fix: where to put the dataset


def test_lm_eval_missing_names_the_install_line(tmp_path):
    code = ("import sys; sys.modules['lm_eval'] = None\n"
            "from experiment.cli import main\n"
            f"sys.argv = ['experiment', 'eval', {str(tmp_path)!r}]\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "lm-evaluation-harness is not installed" in r.stderr and "pip install 'midtrain-kit[eval]'" in r.stderr


Entry = namedtuple("Entry", "prefix language weight")


class _Plan:
    def __init__(self, rows):
        self.entries = [Entry(p, lang, w) for p, lang, w in rows]
        self._keys = {f"{lang}/{p}": [p] for p, lang, _ in rows}

    def sources(self):
        return self._keys


def test_targets_rule():
    from experiment.evaluate.heldout import targets

    demo = _Plan([("manual-ja", "ja", 0.7), ("manual-en", "en", 0.1), ("code-en", "en", 0.1), ("dict-en", "en", 0.1)])
    assert targets(demo) == {"ja/manual-ja"}  # the language above 1/L: all its domains
    assert targets(demo, ["en/code-en"]) == {"en/code-en"}  # --target wins
    one = _Plan([("a", "en", 0.6), ("b", "en", 0.2), ("c", "en", 0.2)])
    assert targets(one) == {"en/a"}  # one language: the rule over domains
