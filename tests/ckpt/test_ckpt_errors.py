"""Each bad input of the conversion gets an error naming the file/field and the fix; nothing is written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from experiment.ckpt import hf_export, hf_import
from experiment.ckpt.meta import CheckpointError
from experiment.cli import app
from experiment.model.build import ParallelLayout
from tests.ckpt.tiny import make_hf


@pytest.fixture()
def hf(tmp_path, llama_tokenizer_dir):
    return make_hf("llama3.2-tied", tmp_path / "hf", llama_tokenizer_dir)


def _nothing_written(tmp_path, out):
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def _edit_config(hf, **changes):
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update(changes)
    (hf / "config.json").write_text(json.dumps(cfg))


def test_unsupported_architecture(hf, tmp_path):
    _edit_config(hf, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(CheckpointError, match=r"config.json: field 'architectures': unsupported .*GPT2LMHeadModel.*fix"):
        hf_import.plan_import(hf, tmp_path / "out", ParallelLayout())
    _nothing_written(tmp_path, tmp_path / "out")


def test_missing_shard(tmp_path, llama_tokenizer_dir):
    hf = make_hf("qwen2", tmp_path / "hf", llama_tokenizer_dir)
    tensors = load_file(str(hf / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    save_file({k: tensors[k] for k in names[:half]}, str(hf / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in names[half:]}, str(hf / "model-00002-of-00002.safetensors"))
    weight_map = {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(names)}
    (hf / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (hf / "model.safetensors").unlink()
    (hf / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"index.json: shard model-00002-of-00002.safetensors is missing.*fix"):
        hf_import.plan_import(hf, tmp_path / "out", ParallelLayout())
    _nothing_written(tmp_path, tmp_path / "out")


def test_dtype_mismatch(hf, tmp_path):
    tensors = load_file(str(hf / "model.safetensors"))
    tensors["model.norm.weight"] = tensors["model.norm.weight"].half()
    save_file(tensors, str(hf / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"dtype mismatch between tensors \(F16: 1 tensors \(e.g. model.norm.weight\)"):
        hf_import.plan_import(hf, tmp_path / "out", ParallelLayout())


def test_config_dtype_disagrees_with_weights(hf, tmp_path):
    _edit_config(hf, dtype="bfloat16")
    with pytest.raises(CheckpointError, match=r"field 'dtype' = 'bfloat16' but the weights are float32; fix"):
        hf_import.plan_import(hf, tmp_path / "out", ParallelLayout())


def test_tp_must_divide_heads(hf, tmp_path):
    with pytest.raises(CheckpointError, match=r"'num_attention_heads' = 4 is not divisible by --tp 3; fix: use --tp in \[1, 2, 4\]"):
        hf_import.plan_import(hf, tmp_path / "out", ParallelLayout(3, 1))
    _nothing_written(tmp_path, tmp_path / "out")


def test_wrong_tensor_shape(hf, tmp_path):
    _edit_config(hf, intermediate_size=96)
    with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \[128, 64\], config.json implies \[96, 64\]"):
        hf_import.plan_import(hf, tmp_path / "out", ParallelLayout())


def test_existing_checkpoint_is_refused_and_kept(hf, tmp_path, dist1):
    out = tmp_path / "out"
    hf_import.import_checkpoint(hf_import.plan_import(hf, out, ParallelLayout()), out, ParallelLayout(), show_progress=False)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(CheckpointError, match=r"out: already holds a checkpoint .*fix: delete it or choose another OUT_DIR"):
        hf_import.plan_import(hf, out, ParallelLayout())
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # the same through the command line: exit 2, the message, nothing touched
    result = CliRunner().invoke(app, ["ckpt", "import", str(hf), str(out)])
    assert result.exit_code == 2 and "already holds a checkpoint" in " ".join(result.output.split()), result.output
    # export refuses a non-empty target folder too
    with pytest.raises(CheckpointError, match=r"hf: already holds a checkpoint"):
        hf_export.export_checkpoint(out, hf, show_progress=False)


def test_export_of_a_folder_that_is_no_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"kit_checkpoint.json: missing .*fix: create it with `experiment ckpt import"):
        hf_export.export_checkpoint(tmp_path, tmp_path / "hf", show_progress=False)
    assert not (tmp_path / "hf").exists()


def test_killed_import_is_rerun_cleanly(hf, tmp_path, dist1):
    """A killed import leaves only its temporary folder (never OUT); the re-run replaces it."""
    out = tmp_path / "out"
    stale = tmp_path / ".out.importing"
    (stale / "iter_0000001").mkdir(parents=True)
    (stale / "iter_0000001" / "__0_0.distcp").write_bytes(b"half-written")
    assert not out.exists()
    hf_import.import_checkpoint(hf_import.plan_import(hf, out, ParallelLayout()), out, ParallelLayout(), show_progress=False)
    assert not stale.exists() and (out / "kit_checkpoint.json").is_file()
    assert not (out / "iter_0000001" / "__0_0.distcp").read_bytes().startswith(b"half")


def test_a_full_disk_gets_one_message_and_leaves_nothing_behind(hf, tmp_path):
    """`experiment ckpt import` onto a real tmpfs with room for half the checkpoint: one message naming the
    place and the fix (not "check the path and its permissions"), exit 1, and no half-written output."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size // 2}", "tmpfs", str(disk)], check=True,
                   timeout=60)
    try:
        res = subprocess.run([sys.executable, "-m", "experiment.cli", "ckpt", "import", str(hf), str(disk / "out")],
                             capture_output=True, text=True, timeout=300)
        said = " ".join((res.stdout + res.stderr).split())
        assert res.returncode == 1, said
        assert "the disk is full" in said and f"df -h {disk}" in said and "Traceback" not in said, said
        assert not list(disk.iterdir()), "a half-written checkpoint was left behind"
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False, timeout=60)
