"""The checks `.ci/fresh_machine.py` runs on the demo's outputs after the container's `nox -s demo` (the
end-to-end assertions that were tests/test_demo.py's), on a hand-made minimal folder laid out as the demo
leaves it: every check holds on it, each broken output fails its own check by name and no other, and a folder
without any output fails every check without a traceback."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path("training") / "demo"
ENGLISH = ("en/code-docs", "en/dictionary", "en/legal", "en/manual")


def _fresh_machine():
    spec = importlib.util.spec_from_file_location("fresh_machine", ROOT / ".ci" / "fresh_machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fm = _fresh_machine()
NAMES = {
    "checkpoints": "the lockfile lists the run's checkpoints",
    "reproduced": "the re-run's outputs equal the lock's",
    "target": "eval loss: ja/manual (the new language) improves",
    "replay": "eval loss: no English domain rises by 0.1 or more",
    "readme": "README.md's demo output is what the demo printed",
    "rows": "lm-eval: base and the last checkpoint, target ja/manual",
    "gain": "lm-eval: ja/manual perplexity falls, gain > 0",
    "report": "report.html shows the lm-eval section",
    "export": "the Hugging Face export",
    "plots": "the plots",
}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _lock(outputs: dict) -> str:
    return json.dumps({"kit": {}, "outputs": outputs})


def _evals(losses: dict[str, tuple[float, float]]) -> str:
    """eval.jsonl as the trainer writes it: a line per domain at iterations 0 and 8, losses as float hex."""
    return "".join(json.dumps({"iteration": it, "domain": d, "loss": float(pair[i]).hex()}) + "\n"
                   for i, it in enumerate((0, 8)) for d, pair in losses.items())


def _eval_json(base_ppl: float, trained_ppl: float, gain: float, iteration: int = 8) -> str:
    rows = [{"label": "base", "iteration": 0, "ppl": {"ja/manual": base_ppl, "en/manual": 20.0}, "mc": {},
             "gain": 0.0, "replay_loss": 0.0, "tasks": {}},
            {"label": f"iter_{iteration:07d}", "iteration": iteration, "mc": {}, "tasks": {},
             "ppl": {"ja/manual": trained_ppl, "en/manual": 20.5}, "gain": gain, "replay_loss": 0.02}]
    return json.dumps({"targets": ["ja/manual"], "reference": "base", "rows": rows})


OUTPUTS = {"losses": {"steps": [[i, "0x1.0p+1"] for i in range(1, 9)]},
           "checkpoints": {"iter_0000008": {"files": {"common.pt": "ab12"}, "tensors": {"w": "cd34"}}}}
LOSSES = {"ja/manual": (4.0, 3.5), **{d: (3.0, 3.05) for d in ENGLISH}}


def _readme(losses: dict[str, tuple[float, float]]) -> str:
    """README.md's demo block as the README writes it (one line per domain, 4 decimals)."""
    rows = "".join(f"  valid loss {d:<18} {a:.4f} -> {b:.4f}\n" for d, (a, b) in sorted(losses.items()))
    return f"# kit\n\nWhat it printed here (2 cores):\n\n```\nrun demo: finished\n{rows}```\n\n## next\n"


def _demo(root: Path) -> Path:
    """A minimal finished demo under ``root``: what the checks read, and nothing else."""
    demo = root / DEMO
    _write(root / "README.md", _readme(LOSSES))
    _write(demo / "run.lock.json", _lock(OUTPUTS))
    _write(demo / ".reproduce" / DEMO / "run.lock.json", _lock(OUTPUTS))
    _write(demo / "logs" / "eval.jsonl", _evals(LOSSES))
    _write(demo / "logs" / "eval" / "eval.json", _eval_json(60.0, 45.0, 0.29))
    _write(demo / "report.html", "<html><h2>lm-eval on the checkpoints</h2><table></table></html>")
    _write(root / "work" / "demo" / "hf-out" / "config.json", "{}")
    _write(demo / "logs" / "loss.png", "png")
    _write(demo / "mixture" / "mixture.png", "png")
    return root


def test_every_check_holds_on_a_finished_demo(tmp_path, capsys):
    results = fm.demo_checks(_demo(tmp_path))
    assert [name for name, _, _ in results] == list(NAMES.values())
    assert all(held for _, held, _ in results), results
    assert fm.main(["--check-only", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(f"PASS  {name}" in out for name in NAMES.values())
    assert f"fresh-machine test: PASS: {len(NAMES)} of {len(NAMES)} checks hold" in out


def _rerun_differs(root):
    _write(root / DEMO / ".reproduce" / DEMO / "run.lock.json",
           _lock({**OUTPUTS, "losses": {"steps": [[1, "0x1.0000000000001p+1"]]}}))


def _no_checkpoints(root):
    _write(root / DEMO / "run.lock.json", _lock({**OUTPUTS, "checkpoints": {}}))
    _write(root / DEMO / ".reproduce" / DEMO / "run.lock.json", _lock({**OUTPUTS, "checkpoints": {}}))


EVALS, EVAL_JSON = DEMO / "logs" / "eval.jsonl", DEMO / "logs" / "eval" / "eval.json"
BREAKS = {
    "checkpoints": _no_checkpoints,
    "reproduced": _rerun_differs,
    "target": lambda root: (_write(root / EVALS, _evals({**LOSSES, "ja/manual": (4.0, 4.0)})),
                            _write(root / "README.md", _readme({**LOSSES, "ja/manual": (4.0, 4.0)}))),
    "replay": lambda root: (_write(root / EVALS, _evals({**LOSSES, "en/legal": (3.0, 3.1)})),
                            _write(root / "README.md", _readme({**LOSSES, "en/legal": (3.0, 3.1)}))),
    "readme": lambda root: _write(root / "README.md", _readme({**LOSSES, "en/legal": (3.0, 3.0501)})),
    "rows": lambda root: _write(root / EVAL_JSON, _eval_json(60.0, 45.0, 0.29, iteration=4)),
    "gain": lambda root: _write(root / EVAL_JSON, _eval_json(60.0, 61.0, -0.01)),
    "report": lambda root: _write(root / DEMO / "report.html", "<html><h2>Losses</h2></html>"),
    "export": lambda root: (root / "work" / "demo" / "hf-out" / "config.json").unlink(),
    "plots": lambda root: (root / DEMO / "mixture" / "mixture.png").unlink(),
}


@pytest.mark.parametrize("broken", list(BREAKS))
def test_each_broken_output_fails_its_own_check_by_name(tmp_path, broken, capsys):
    root = _demo(tmp_path)
    BREAKS[broken](root)
    failed = [name for name, held, _ in fm.demo_checks(root) if not held]
    assert failed == [NAMES[broken]]
    assert fm.main(["--check-only", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  {NAMES[broken]}" in out
    assert f"fresh-machine test: FAIL: {len(NAMES) - 1} of {len(NAMES)} checks hold; failed: {NAMES[broken]}" in out


def test_english_rising_by_0_1_fails_and_a_demo_without_english_domains_fails(tmp_path):
    root = _demo(tmp_path)
    _write(root / EVALS, _evals({**LOSSES, "en/manual": (3.0, 3.1)}))
    detail = {name: (held, d) for name, held, d in fm.demo_checks(root)}[NAMES["replay"]]
    assert detail[0] is False and "en/manual" in detail[1], detail
    _write(root / EVALS, _evals({"ja/manual": LOSSES["ja/manual"]}))
    held, why = {name: (held, d) for name, held, d in fm.demo_checks(root)}[NAMES["replay"]]
    assert not held and "no en/ domain" in why


def test_a_folder_without_outputs_fails_every_check_naming_the_file(tmp_path):
    results = fm.demo_checks(tmp_path)
    assert [name for name, _, _ in results] == list(NAMES.values())
    assert not any(held for _, held, _ in results)
    details = dict((name, d) for name, _, d in results)
    assert "run.lock.json" in details[NAMES["checkpoints"]] and "eval.jsonl" in details[NAMES["target"]]
    assert "eval.json" in details[NAMES["gain"]] and "report.html" in details[NAMES["report"]]
    assert "missing: work/demo/hf-out/config.json" in details[NAMES["export"]]


def test_the_real_readme_block_is_read(tmp_path):
    """The check reads this repository's README.md as written (its heading and block), not only the test's
    own: an eval.jsonl made from the README's numbers passes it, one digit off fails it."""
    import re

    text = (ROOT / "README.md").read_text()
    shown = re.findall(r"valid loss (\S+)\s+(\d+\.\d+) -> (\d+\.\d+)", text.split("What it printed", 1)[1])
    assert len(shown) == 5, shown
    _write(tmp_path / "README.md", text)
    losses = {d: (float(a), float(b)) for d, a, b in shown}
    _write(tmp_path / EVALS, _evals(losses))
    held = {name: (ok, d) for name, ok, d in fm.demo_checks(tmp_path)}[NAMES["readme"]]
    assert held[0], held
    d, (a, b) = next(iter(losses.items()))
    _write(tmp_path / EVALS, _evals({**losses, d: (a, b + 0.0001)}))
    held = {name: (ok, d) for name, ok, d in fm.demo_checks(tmp_path)}[NAMES["readme"]]
    assert not held[0] and d in held[1], held
