"""What a user sees: progress that moves while encoding, and summaries (stdout table or --json) that tell
the command's wall time and cut nothing at 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiment.data.encoders import load_encoder
from experiment.data.tokenizer_spec import resolve_tokenizer


@pytest.fixture(scope="module")
def multi_mb_texts(sample_dir) -> list[str]:
    """~4 MB of real text: the sample's documents, repeated."""
    from experiment.data import sources

    texts = [t for p in sources.find_inputs([sample_dir]) for b in sources.read_batches(p) for t in b.to_pylist() if t]
    out, size = [], 0
    while size < 4e6:
        out.extend(texts)
        size += sum(len(t.encode()) for t in texts)
    return out


@pytest.mark.parametrize("backend", ["gigatoken", "reference"])
def test_progress_fires_more_than_once_on_a_multi_mb_input(backend, multi_mb_texts, sp_model_path):
    import pyarrow as pa

    encoder = load_encoder(resolve_tokenizer(sp_model_path), backend).encoder
    encoder._chunk_bytes = None  # as in a run's first encode (the encoder is shared with other tests)
    texts = pa.array(multi_mb_texts, type=pa.large_string())
    calls: list[int] = []
    flat, offsets = encoder.encode(texts, progress=calls.append)
    assert len(calls) > 1 and sum(calls) == sum(len(t.encode()) for t in multi_mb_texts)  # every text byte, in steps
    whole_flat, whole_offsets = encoder.encode(texts)  # chunking changes no id
    assert np.array_equal(flat, whole_flat) and np.array_equal(offsets, whole_offsets)


def test_whole_files_are_encoded_in_groups_that_report_as_they_go(sample_dir, tmp_path):
    """gigatoken gives no callback: whole files go in groups sized from the rate so far, each reported."""
    from experiment.data import whole_files

    paths = sorted(sample_dir.glob("*.jsonl"))
    seen: list[list[Path]] = []
    enc = whole_files.GroupEncoder(lambda group: seen.append(group) or (np.zeros(0), np.zeros(1)), paths, 1 << 30)
    groups = []
    while (item := enc.next_group()) is not None:
        groups.append(item[0])
        enc.written()
    assert [p for g in groups for p in g] == paths and len(groups) > 1 and groups[-1] == paths[-1:]


def _cli(args: list[str], columns: int = 80, delay: float = 0.0) -> subprocess.CompletedProcess:
    """``experiment ARGS`` as its own process (``delay``: seconds of start-up before the command runs)."""
    env = dict(os.environ, COLUMNS=str(columns), PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    code = f"import sys, time; time.sleep({delay}); sys.argv[0] = 'experiment'; from experiment.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def _first_column(table_text: str) -> str:
    """The first column of a rich table as printed, its lines joined: a folded name reads whole again."""
    return "".join(line.split("│")[1].strip() for line in table_text.splitlines() if line.count("│") >= 2)


def test_tokenize_summary_json_and_table_wall_time_and_80_columns(sample_dir, sp_model_path, tmp_path):
    args = ["data", "tokenize", str(sample_dir), "-o", str(tmp_path / "out"), "-t", str(sp_model_path),
            "--cache-dir", str(tmp_path / "cache")]
    began = time.monotonic()
    done = _cli([*args, "--json"], delay=1.0)
    outer = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout holds the result alone
    # the command's wall time, from the process's start (the 1 s of start-up included), not an inner timer
    assert 1.0 < result["wall_seconds"] <= outer
    assert result["tokens_per_second"] == pytest.approx(result["new_tokens"] / result["wall_seconds"], rel=1e-3)
    names = [row["shard"] for row in result["rows"]]
    assert names and all(Path(tmp_path / "out" / n).with_suffix(".bin").exists() or (tmp_path / "out" / f"{n}.bin").exists() for n in names)
    assert sum(r["tokens"] for r in result["rows"]) == result["total"]["tokens"]
    assert abs(sum(r["share"] for r in result["rows"]) - 100) < 1e-6

    # the same run again: every shard skipped; the table at 80 columns shows every name whole (folded)
    table = _cli(args)
    assert table.returncode == 0, table.stderr
    assert max(map(len, table.stdout.splitlines())) <= 80
    joined = _first_column(table.stdout)
    for name in names:
        assert name in joined
    assert "skipped (done)" in table.stdout and "…" not in table.stdout


def test_json_equals_the_table(sample_dir, sp_model_path, tmp_path):
    """Both come from the same rows: each JSON value, formatted as its column says, is the table's cell."""
    from experiment.data.tokenize import TokenizeConfig, run
    from experiment.data.tokenize_report import summary

    report = run(TokenizeConfig(inputs=[sample_dir], output=tmp_path / "out", tokenizer=sp_model_path, progress=False))
    result = summary(report)
    parsed = json.loads(json.dumps(result.to_dict()))
    table = result.table()
    cells = [list(col.cells) for col in table.columns]
    rows = parsed["rows"] + [parsed["total"]]
    for i, row in enumerate(rows):
        expected = [c.fmt(row[c.name]) for c in result.columns]
        assert expected == [cells[j][i] for j in range(len(result.columns))]
    assert all(col.overflow == "fold" for col in table.columns)


def test_summaries_use_the_commands_wall_time(sample_dir, sp_model_path, tmp_path, monkeypatch):
    """The rate is over the time since the command started (start-up included), not over the encode."""
    from experiment import summary as summaries
    from experiment.data.tokenize import TokenizeConfig, run

    monkeypatch.setattr(summaries, "_command_start", None)  # restored afterwards: other tests time their own calls
    start = time.monotonic()
    summaries.start_command()
    time.sleep(0.5)  # start-up the command paid before tokenizing
    t0 = time.monotonic()
    report = run(TokenizeConfig(inputs=[sample_dir], output=tmp_path / "out", tokenizer=sp_model_path, progress=False))
    end = time.monotonic()
    # from the command's start to the summary: the start-up before the call counts, and nothing after the call
    assert t0 - start <= report.seconds <= end - start
    assert report.seconds >= 0.5 + max(s.seconds for s in report.shards)


def test_other_commands_print_their_result_on_stdout_as_table_or_json(sp_shards, tmp_path):
    """`data count` and `mix`: the table on stdout (nothing cut at 80 columns), the same rows with --json."""
    import shutil

    from tests.mixture.test_cli import _write

    copy = tmp_path / "shards"
    shutil.copytree(sp_shards, copy)
    folder = _write(tmp_path / "folder", None)
    for args in (["data", "count", str(copy), "--dry-run"], ["mix", str(folder)]):
        table, as_json = _cli(args), _cli([*args, "--json"])
        assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
        result = json.loads(as_json.stdout)
        assert result["rows"] and max(map(len, table.stdout.splitlines())) <= 80 and "…" not in table.stdout
        first_column = _first_column(table.stdout)
        for row in result["rows"]:
            assert str(next(iter(row.values()))) in first_column  # every name whole, folded or not
