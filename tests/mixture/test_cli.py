"""`experiment mix` end to end: every output written atomically, byte-identical under shuffled inputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

from typer.testing import CliRunner

from experiment.cli import app
from tests.mixture.helpers import folder, name, signature

OUTPUTS = {"data_path.args", "data_path.sh", "per_split_data_args.json", "train_data.sh", "mixture.json",
           "report.md", "mixture.png"}


def _inputs(seed: int | None):
    shards = [(name(lang, dom, i, 1000 * (i + 1)), 1000 * (i + 1))
              for i, (lang, dom) in enumerate([("en", "web"), ("en", "code"), ("ar", "news"), ("en", "web"),
                                               ("ar", "web"), ("ar", "news"), ("en", "books")])]
    ratio = {"en": {"web": 1, "code": 2.5, "books": 1}, "ar": {"news": 1.5, "web": 1}}
    prob = {"en": 0.3, "ar": 0.7}
    exclude = [shards[3][0] + ".bin", shards[5][0]]
    if seed is not None:
        rng = random.Random(seed)
        rng.shuffle(shards)
        rng.shuffle(exclude)
        ratio = {k: dict(sorted(v.items(), key=lambda _: rng.random())) for k, v in reversed(ratio.items())}
        prob = dict(reversed(prob.items()))
    return shards, ratio, prob, exclude


def _mix(path: Path) -> dict[str, bytes]:
    result = CliRunner().invoke(app, ["mix", str(path)])
    assert result.exit_code == 0, result.output
    out = path / "mixture"
    assert {p.name for p in out.iterdir()} == OUTPUTS  # no temporary file left behind
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _write(path: Path, seed: int | None) -> Path:
    shards, ratio, prob, exclude = _inputs(seed)
    folder(path, shards, ratio, lang_prob=prob, exclude=exclude)
    sig = json.loads(signature(shards).to_json())
    if seed is not None:  # signature entries in a shuffled order too (to_json would sort them)
        random.Random(seed).shuffle(sig["shards"])
    (path / "sig.json").write_text(json.dumps(sig))
    return path


def test_mix_writes_every_output_deterministically(tmp_path):
    path = _write(tmp_path / "run", None)
    first = _mix(path)
    assert _mix(path) == first
    for seed in (1, 2):
        _write(path, seed)
        assert _mix(path) == first, f"outputs changed with input order (seed {seed})"

    args = first["data_path.args"].decode().split()
    assert args[0] == "--data-path" and len(args) == 1 + 2 * 5  # 7 shards, 2 excluded
    weights = [float(w) for w in args[1::2]]
    assert abs(sum(weights) - 1) < 1e-12
    per_split = json.loads(first["per_split_data_args.json"])
    assert per_split["train"] == args[1:] and per_split["valid"] is None
    bash = first["data_path.sh"].decode()
    assert bash.count("\n0.") == 5 and "DATA_PATH=( --data-path" in bash
    report = first["report.md"].decode()
    assert "| **total** |" in report and "excluded (" in report and "per-sample weight equals" in report
    assert first["mixture.png"].startswith(b"\x89PNG")


def test_data_path_sh_is_sourceable_by_bash(tmp_path):
    import subprocess

    path = _write(tmp_path / "run", None)
    _mix(path)
    script = f'source {path}/mixture/data_path.sh && printf "%s\\n" "${{DATA_PATH[@]}}"'
    words = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                           timeout=60).stdout.split("\n")
    args = (path / "mixture" / "data_path.args").read_text().split()
    assert words[:-1] == args
    script = f'source {path}/mixture/train_data.sh && echo $TRAIN_DATA_PATH'
    listed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                            timeout=60).stdout.split()
    assert len(listed) == 10 and all(p.startswith(str(path)) for p in listed[1::2])


def test_mix_refuses_a_broken_folder(tmp_path):
    path = _write(tmp_path / "run", None)
    (path / "lang_prob.json").write_text(json.dumps({"en": 1.0}))
    result = CliRunner().invoke(app, ["mix", str(path)])
    assert result.exit_code == 1
    assert "1 problem(s)" in result.output
    assert not (path / "mixture").exists()


def test_check_command_reports_mixture_problems(tmp_path):
    path = _write(tmp_path / "run", None)
    (path / "data_ratio.json").write_text(json.dumps({"en": {"web": 1, "code": 2.5}, "ar": {"news": 1.5, "web": 1}}))
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 1
    assert "1 problem(s)" in result.output  # the table itself is test_checks' business


def test_seed000_train_data_sh_lists_the_seed_token_counts(tmp_path):
    """Seed 000 end to end: flat ratios + token_budget = "scaled" -> train_data.sh has the seed's numbers."""
    from tests.mixture.test_plan import SEED000, SEED000_TOTAL

    shards = [(name("en", d, i, v[0]), v[0]) for i, (d, v) in enumerate(SEED000.items())]
    path = folder(tmp_path / "run", shards, {d: v[1] for d, v in SEED000.items()},
                  data_extra='token_budget = "scaled"')
    out = _mix(path)
    lines = [ln for ln in out["train_data.sh"].decode().splitlines() if ln.startswith('TRAIN_DATA_PATH="${')]
    listed = {}
    for ln in lines:  # TRAIN_DATA_PATH="${TRAIN_DATA_PATH} TOKENS PREFIX"
        _, tokens, prefix = ln.rstrip('"').split(" ")
        listed[prefix.rpartition("/")[2].split("_")[1]] = int(tokens)
    assert listed == {d: v[2] for d, v in SEED000.items()}
    assert sum(listed.values()) == SEED000_TOTAL
    assert "| **total** | 6 | " in out["report.md"].decode() and f"{SEED000_TOTAL:,}" in out["report.md"].decode()
