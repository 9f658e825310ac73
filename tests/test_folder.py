"""The training-folder schema: a valid folder loads; a broken one reports every problem at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiment.data import naming
from experiment.data.signature import DataSignature, ShardEntry, TokenizerInfo
from experiment.folder import FolderError
from experiment.mixture.checks import check_all, load_checked

VALID = """
name = "t"
[data]
signatures = ["sig.json"]
data_ratio = "data_ratio.json"
[model]
preset = "tiny"
seq_length = 64
[training]
train_iters = 4
global_batch_size = 4
micro_batch_size = 2
[checkpoint]
from_scratch = true
[launch]
nproc_per_node = 2
"""


def _folder(tmp_path: Path, toml: str = VALID) -> Path:
    (tmp_path / "experiment.toml").write_text(toml)
    (tmp_path / "data_ratio.json").write_text(json.dumps({"web": 1.0}))
    shard = naming.make("en", "web", "cc", 0).with_counts(10, 10, 5000)
    sig = DataSignature(
        name="t", root="shards", tokenizer=TokenizerInfo(kind="sentencepiece", name="t.model", sha256="0",
                                                          vocab_size=32000, eod_id=2),
        shards=[ShardEntry(prefix=shard.format(), language="en", domain="web", subdomain="cc", docs=10,
                           sentences=10, tokens=5000, bin_bytes=10000, idx_bytes=200, dtype="uint16")],
    )
    (tmp_path / "sig.json").write_text(sig.to_json())
    return tmp_path


def test_valid_folder_loads(tmp_path):
    folder = _folder(tmp_path)
    _, problems = check_all(folder)
    # the schema and file checks pass; semantic checks of other modules may still speak about sig.json
    assert not [p for p in problems if p.file.endswith("experiment.toml")]


def test_every_schema_problem_is_reported_at_once(tmp_path):
    bad = VALID.replace('preset = "tiny"', 'preset = "tiny"\nnum_layerz = 3').replace(
        "train_iters = 4", "train_iters = 4\nlr = -1"
    ).replace("[launch]", "[image]\nflavor = 'tpu'\n[launch]").replace("from_scratch = true", "from_scratch = false")
    _, problems = check_all(_folder(tmp_path, bad))
    fields = {p.field for p in problems}
    assert "model.num_layerz" in fields
    assert "training.lr" in fields
    assert "checkpoint" in fields  # neither base nor from_scratch
    assert "image.flavor" in fields
    assert all(p.file.endswith("experiment.toml") and p.fix for p in problems)


def test_cross_field_rules(tmp_path):
    bad = VALID.replace("train_iters = 4", "train_iters = 4\ntrain_tokens = '1B'")
    _, problems = check_all(_folder(tmp_path, bad))
    assert any("exactly one of train_iters or train_tokens" in p.message for p in problems)


def test_parallel_layout_is_checked(tmp_path):
    bad = VALID.replace("[training]", "[training]\ntensor_parallel = 3")
    _, problems = check_all(_folder(tmp_path, bad))
    assert any("tensor_parallel=3 does not divide" in p.message for p in problems)


def test_missing_files_and_broken_json(tmp_path):
    folder = _folder(tmp_path, VALID.replace('"sig.json"', '"nope.json"'))
    (folder / "data_ratio.json").write_text("{not json")
    _, problems = check_all(folder)
    by_field = {p.field: p for p in problems}
    assert "nope.json" in by_field["data.signatures[0]"].message
    assert by_field["data.signatures[0]"].missing_artifact  # made by `experiment data signature`
    assert any(p.file.endswith("data_ratio.json") and "not valid JSON" in p.message for p in problems)


def test_base_checkpoint_must_exist(tmp_path):
    bad = VALID.replace("from_scratch = true", 'base = "base_ckpt"')
    _, problems = check_all(_folder(tmp_path, bad))
    assert any(p.field == "checkpoint.base" and "latest_checkpointed_iteration.txt" in p.message for p in problems)


def test_load_raises_with_all_problems(tmp_path):
    with pytest.raises(FolderError) as err:
        load_checked(tmp_path / "absent")
    assert "is not a folder" in str(err.value)


def test_toml_syntax_error_names_the_file(tmp_path):
    (tmp_path / "experiment.toml").write_text("name = ")
    _, problems = check_all(tmp_path)
    assert problems[0].file.endswith("experiment.toml") and "not valid TOML" in problems[0].message


def test_absent_artifact_warns_but_blocks_a_run(tmp_path):
    folder = _folder(tmp_path, VALID.replace("from_scratch = true", 'base = "base_ckpt"'))
    _, problems = check_all(folder)
    base = [p for p in problems if p.field == "checkpoint.base"]
    assert base and base[0].missing_artifact
    with pytest.raises(FolderError, match="base_ckpt"):
        load_checked(folder)
    assert load_checked(folder, require_artifacts=False).config.checkpoint.base == "base_ckpt"
