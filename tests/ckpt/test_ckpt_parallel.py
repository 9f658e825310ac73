"""TP=2 and PP=2 imports under torchrun (2 CPU processes, gloo) give the same model as TP=1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from experiment.ckpt import compare, hf_export, hf_import
from experiment.ckpt.meta import read_meta
from experiment.model.build import ParallelLayout
from tests.ckpt.tiny import make_hf, real_text

pytestmark = pytest.mark.slow


def _cli_import(hf, out, tp, pp):
    """`experiment ckpt import --tp/--pp`, which starts torchrun with tp*pp ranks itself."""
    proc = subprocess.run([sys.executable, "-m", "experiment.cli", "ckpt", "import", str(hf), str(out),
                           "--tp", str(tp), "--pp", str(pp)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"TP={tp} PP={pp}" in proc.stderr + proc.stdout


def _tp1_logits(ckpt, tokens):
    model, meta = compare.load_megatron(ckpt, seq_length=len(tokens))
    return compare.megatron_logits(model, meta, [tokens])


@pytest.mark.parametrize("family,tp,pp", [("qwen2", 2, 1), ("llama3.2-tied", 1, 2)])
def test_parallel_import_matches_tp1(family, tp, pp, tmp_path, llama_tokenizer_dir, dist1):
    hf = make_hf(family, tmp_path / "hf", llama_tokenizer_dir)
    ref_ckpt, par_ckpt = tmp_path / "tp1", tmp_path / f"tp{tp}pp{pp}"
    hf_import.import_checkpoint(hf_import.plan_import(hf, ref_ckpt, ParallelLayout()), ref_ckpt, ParallelLayout(),
                                show_progress=False)
    tokens = compare.token_batches(hf, real_text(), 96, 1)[0]
    if tp > 1:  # library import + the forward itself with TP=2 ranks (vocab-parallel logits gathered)
        tok_file, out_file = tmp_path / "tokens.json", tmp_path / "tp_logits.pt"
        tok_file.write_text(json.dumps(tokens))
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(tp),
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0",
                               "tests/ckpt/tp_forward.py", str(hf), str(par_ckpt), str(tok_file), str(out_file)],
                              capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        tp_logits = torch.load(out_file, weights_only=True)
    else:  # through the command line, which starts torchrun itself
        _cli_import(hf, par_ckpt, tp, pp)
    meta = read_meta(par_ckpt)
    assert meta.saved_layout == {"tensor_parallel": tp, "pipeline_parallel": pp}
    assert meta.padded_vocab_size % (128 * tp) == 0
    assert len(list((par_ckpt / "iter_0000001").glob("*.distcp"))) == tp * pp  # each rank wrote its shards

    ref, got = _tp1_logits(ref_ckpt, tokens), _tp1_logits(par_ckpt, tokens)
    assert torch.equal(ref, got)  # the same weights whatever layout saved them
    hf_ref = compare.hf_logits(hf, [tokens])
    assert compare.compare_logits(hf_ref, got).top1_agreement == 1.0

    back = tmp_path / "back"
    hf_export.export_checkpoint(par_ckpt, back, show_progress=False)
    orig, exported = load_file(str(hf / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert orig.keys() == exported.keys() and all(torch.equal(orig[k], exported[k]) for k in orig)

    if tp > 1:
        assert torch.allclose(tp_logits, ref, atol=1e-5, rtol=0), (tp_logits - ref).abs().max()
