"""``experiment data tokenize --tasks N``: datatrove's executors run the tokenizer over shares of the inputs;
the shards are exactly those of one process."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import dill
import pytest

from experiment.data import tokenize_tasks
from experiment.data.errors import DataError
from experiment.data.shards import read_shard
from experiment.data.tokenize import TokenizeConfig, run
from experiment.data.tokenize_tasks import SlurmOptions, assign, run_tasks, slurm_executor


def _shards(folder: Path) -> dict[str, str]:
    """Every finished shard file of a folder by name, with its content hash."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.suffix in (".bin", ".idx")}


def test_assign_gives_every_input_to_one_task_largest_first():
    inputs = [Path(f"f{i}") for i in range(7)]
    sizes = [50, 10, 40, 10, 30, 5, 5]
    shares = assign(inputs, sizes, 3)
    assert sorted(p for share in shares for p in share) == sorted(inputs)
    loads = [sum(sizes[inputs.index(p)] for p in share) for share in shares]
    assert loads == [50, 50, 50]  # 50 | 40+10 | 30+10+5+5
    assert all(share == sorted(share) for share in shares)
    assert assign(inputs, sizes, 3) == shares  # every task computes the same split
    assert assign(inputs[:2], sizes[:2], 4)[2:] == [[], []]  # more tasks than inputs: some idle


def test_local_tasks_write_the_bytes_of_one_process(sample_dir, sp_model_path, sp_shards, tmp_path):
    out = tmp_path / "out"
    cfg = TokenizeConfig(inputs=[sample_dir], output=out, tokenizer=sp_model_path, progress=False)
    report = run_tasks(cfg, tasks=3, workers=2)
    assert _shards(out) == _shards(sp_shards)
    single = run(replace(cfg, output=sp_shards))  # all skipped: the reference counts
    assert [(s.input, s.prefix.name, s.docs, s.tokens) for s in report.shards] == [
        (s.input, s.prefix.name, s.docs, s.tokens) for s in single.shards]
    assert not any(s.skipped for s in report.shards)
    assert "gigatoken" in report.backend_note
    assert report.cpu_seconds > 0  # summed over the tasks' processes

    # A re-run finds every shard done; a lost shard is redone alone, to the same bytes.
    victim = sorted(out.glob("*.bin"))[2]
    victim.unlink()
    again = run_tasks(cfg, tasks=3, workers=2)
    assert [s.prefix.name for s in again.shards if not s.skipped] == [victim.name[:-4]]
    assert _shards(out) == _shards(sp_shards)


def test_split_ids_count_over_all_inputs(sample_dir, sp_model_path, tmp_path):
    """With --language/--domain the split id is the input's place in the whole run, not in a task's share."""
    kw = dict(inputs=[sample_dir], tokenizer=sp_model_path, progress=False, language="en", domain="mixed")
    run(TokenizeConfig(output=tmp_path / "one", **kw))
    run_tasks(TokenizeConfig(output=tmp_path / "tasks", **kw), tasks=4, workers=1)
    assert _shards(tmp_path / "tasks") == _shards(tmp_path / "one")


def test_slurm_array_tasks_run_the_pickled_executor(sample_dir, sp_model_path, sp_shards, tmp_path):
    """What each Slurm array task runs: datatrove's launch_pickled_pipeline loads the executor with dill and
    runs its pipeline for its rank. Submitting (sbatch) and datatrove's node setup (scontrol) need a
    cluster; the unpickled executor's steps run here as the task would run them."""
    out = tmp_path / "out"
    cfg = TokenizeConfig(inputs=[sample_dir], output=out, tokenizer=sp_model_path, progress=False)
    options = SlurmOptions(partition="cpu", time="02:00:00", cpus_per_task=2, mem_per_cpu_gb=1.5,
                           env_command="source /opt/kit/.venv/bin/activate")
    executor = slurm_executor(cfg, 2, options)
    script = executor.get_launch_file_contents(executor.get_sbatch_args(2), "launch_pickled_pipeline executor.pik")
    for line in ("#SBATCH --cpus-per-task=2", "#SBATCH --partition=cpu", "#SBATCH --time=02:00:00", "#SBATCH --array=0-1",
                 "source /opt/kit/.venv/bin/activate", "launch_pickled_pipeline"):
        assert line in script, line
    loaded = dill.loads(dill.dumps(executor))
    assert loaded.world_size == 2
    for rank in range(2):
        data = None
        for step in loaded.pipeline:
            data = step(data, rank, loaded.world_size)
        for _ in data or ():
            pass
    assert _shards(out) == _shards(sp_shards)
    assert sorted(p.name for p in (out / tokenize_tasks.LOGS / "reports").glob("*.json")) == ["00000.json", "00001.json"]


def test_a_bad_line_in_one_task_names_its_file_and_line(sample_dir, sp_model_path, tmp_path):
    """The task's DataError comes back from its process whole (file, line, fix); whatever finished is whole,
    and once the line is fixed a re-run completes the folder."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = sorted(sample_dir.glob("*.jsonl"))[:3]
    for p in good:
        (inputs / p.name).write_bytes(p.read_bytes())
    bad = inputs / "en_web_bad_split_0000.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "unterminated\n')
    cfg = TokenizeConfig(inputs=[inputs], output=tmp_path / "out", tokenizer=sp_model_path, progress=False)
    with pytest.raises(DataError) as info:
        run_tasks(cfg, tasks=2, workers=2)
    assert (info.value.file, info.value.line) == (str(bad), 2) and "malformed JSON" in info.value.message
    # The pool stops the other task wherever it was: a shard under its final name is whole, and once the line
    # is fixed a re-run finishes every shard and leaves no temporary file.
    for idx in (tmp_path / "out").glob("*.idx"):
        read_shard(idx.with_suffix(""))
    bad.write_bytes(b'{"text": "fine"}\n{"text": "terminated"}\n')
    report = run_tasks(cfg, tasks=2, workers=2)
    assert len(report.shards) == 4 and len(list((tmp_path / "out").glob("*.idx"))) == 4
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]


def test_bad_task_counts_are_refused(sample_dir, sp_model_path, tmp_path):
    cfg = TokenizeConfig(inputs=[sample_dir], output=tmp_path / "out", tokenizer=sp_model_path, progress=False)
    with pytest.raises(DataError, match="--tasks"):
        run_tasks(cfg, tasks=0)
    with pytest.raises(DataError, match="unknown executor"):
        run_tasks(cfg, tasks=2, executor="ray-ish")


def test_cli_tasks_and_threads(sample_dir, sp_model_path, sp_shards, tmp_path):
    from typer.testing import CliRunner

    from experiment.cli import app

    out = tmp_path / "out"
    args = ["data", "tokenize", str(sample_dir), "-o", str(out), "-t", str(sp_model_path)]
    result = CliRunner().invoke(app, [*args, "--tasks", "2", "--workers", "2"])  # with the progress bar
    assert result.exit_code == 0, result.output
    assert "tokenized with gigatoken" in result.output and "total" in result.output  # the merged summary table
    assert _shards(out) == _shards(sp_shards)
    result = CliRunner().invoke(app, [*args, "--no-progress", "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output and "at least 1" in result.output
