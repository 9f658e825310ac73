"""Import -> export is bit-identical, and Megatron's forward equals the Hugging Face forward, per family."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from experiment.ckpt import compare, hf_export, hf_import
from experiment.ckpt.meta import read_meta
from experiment.model.build import ParallelLayout
from tests.ckpt.tiny import FAMILIES, make_hf, real_text


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= load_file(str(f))
    return out


def _import(hf, out, layout=ParallelLayout()):
    return hf_import.import_checkpoint(hf_import.plan_import(hf, out, layout), out, layout, show_progress=False)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_export_bit_identical_and_logits_match(family, tmp_path, llama_tokenizer_dir, dist1):
    hf = make_hf(family, tmp_path / "hf", llama_tokenizer_dir)
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    _import(hf, ckpt)
    meta = read_meta(ckpt)
    assert meta.padded_vocab_size % 128 == 0 and meta.vocab_size == 32000
    assert (ckpt / "iter_0000001").is_dir() and (ckpt / "latest_checkpointed_iteration.txt").read_text() == "1\n"
    assert (ckpt / "tokenizer" / "tokenizer.json").is_file()

    hf_export.export_checkpoint(ckpt, back, show_progress=False, max_shard_bytes=2_000_000)  # several shards
    orig, got = _tensors(hf), _tensors(back)
    assert sorted(orig) == sorted(got)
    for name, t in orig.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    assert json.loads((back / "model.safetensors.index.json").read_text())["weight_map"].keys() == orig.keys()
    assert (back / "tokenizer.json").read_bytes() == (hf / "tokenizer.json").read_bytes()

    report = compare.check_logits(hf, ckpt, real_text(), seq_length=96, batches=2)
    print(family, report)
    assert report.tokens == 192
    # fp32 rounding: relative to the logit scale, and the distributions agree
    assert report.max_abs_diff <= 2e-5 * max(report.logit_scale, 1.0), report
    assert report.mean_kl < 1e-9 and report.top1_agreement == 1.0, report


def test_rope_scaling_is_applied(tmp_path, llama_tokenizer_dir, dist1):
    """The llama3 check above is meaningful: the same weights without the scaling give other logits."""
    hf = make_hf("llama3.1", tmp_path / "hf", llama_tokenizer_dir)
    ckpt = tmp_path / "ckpt"
    _import(hf, ckpt)
    cfg = json.loads((hf / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_parameters"]["rope_theta"]}
    (hf / "config.json").write_text(json.dumps(cfg))
    report = compare.check_logits(hf, ckpt, real_text(), seq_length=96, batches=1)
    assert report.max_abs_diff > 1e-3, report


def test_bf16_weights_stay_bf16(tmp_path, llama_tokenizer_dir, dist1):
    hf = make_hf("qwen2", tmp_path / "hf", llama_tokenizer_dir, dtype="bfloat16")
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    _import(hf, ckpt)
    assert read_meta(ckpt).dtype == "bfloat16"
    hf_export.export_checkpoint(ckpt, back, show_progress=False)
    orig, got = _tensors(hf), _tensors(back)
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], v) for k, v in orig.items())
    assert json.loads((back / "config.json").read_text())["dtype"] == "bfloat16"


def test_import_skips_the_zip_record_crcs_and_restores_torchs_setting(tmp_path, llama_tokenizer_dir, dist1):
    """The import's torch.save records carry no CRC32 (the CRC cost ~70% of the write's CPU; the lockfile's
    blake3 digests cover the files), only for the import: torch's global switch is back on afterwards, and
    the roundtrip test above loads these files."""
    import struct

    hf = make_hf("llama3.1", tmp_path / "hf", llama_tokenizer_dir)
    assert torch.serialization.get_crc32_options()
    _import(hf, tmp_path / "ckpt")
    assert torch.serialization.get_crc32_options()
    crcs = []  # of each tensor's data record (the small byte items, e.g. extra states, are pickled earlier)
    for f in (tmp_path / "ckpt" / "iter_0000001").glob("*.distcp"):
        data = f.read_bytes()
        at = data.find(b"PK\x01\x02")  # central directory entry: CRC-32 at byte 16, name length at 28, name at 46
        while at != -1:
            name = data[at + 46:at + 46 + struct.unpack_from("<H", data, at + 28)[0]]
            if name.endswith(b"/data/0"):
                crcs.append(struct.unpack_from("<I", data, at + 16)[0])
            at = data.find(b"PK\x01\x02", at + 4)
    assert len(crcs) > 10 and set(crcs) == {0}, crcs[:10]
