"""Export reads only "model" from a training checkpoint (optimizer, scheduler, RNG, counters beside it), and
an imported checkpoint loads into the runner's model (SDPA layer spec, DDP, distributed optimizer)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from experiment.ckpt import compare, hf_export, hf_import
from experiment.ckpt.meta import read_meta
from experiment.model.build import ParallelLayout, build_gpt_model
from tests.ckpt.tiny import make_hf, real_text

pytestmark = pytest.mark.slow


def test_export_of_a_training_checkpoint(tmp_path, llama_tokenizer_dir, dist1):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from experiment.folder import TrainingSection
    from experiment.train import checkpointing
    from experiment.train.attention import layer_spec
    from experiment.train.optim import build_optimizer, build_scheduler

    hf = make_hf("llama3.1", tmp_path / "hf", llama_tokenizer_dir)
    base = tmp_path / "base"
    hf_import.import_checkpoint(hf_import.plan_import(hf, base, ParallelLayout()), base, ParallelLayout(),
                                show_progress=False)
    meta = read_meta(base)

    # the runner's way: its layer spec, weights from the base, DDP + distributed optimizer
    gpt = build_gpt_model(meta.shape, 96, padded_vocab_size=meta.padded_vocab_size, layer_spec=layer_spec("sdpa"))
    checkpointing.load_base(base, gpt)
    tokens = compare.token_batches(hf, real_text(), 96, 1)[0]
    gpt.eval()
    report = compare.compare_logits(compare.hf_logits(hf, [tokens]), compare.megatron_logits(gpt, meta, [tokens]))
    assert report.top1_agreement == 1.0 and report.max_abs_diff <= 2e-5 * max(report.logit_scale, 1), report

    training = TrainingSection(train_iters=10, lr=1e-4, min_lr=1e-5)
    ddp = DistributedDataParallel(gpt.config, DistributedDataParallelConfig(use_distributed_optimizer=True), gpt)
    optimizer = build_optimizer(ddp, training, bf16=False)
    scheduler = build_scheduler(optimizer, training, 10)
    # one real training step, so the checkpoint holds trained weights and a non-empty optimizer state
    gpt.train()
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    ids = torch.tensor([tokens])
    mask = torch.triu(torch.ones(len(tokens), len(tokens), dtype=torch.bool), diagonal=1)[None, None]
    ddp(ids, torch.arange(len(tokens)).unsqueeze(0), mask, labels=ids).float().mean().backward()
    ddp.finish_grad_sync()
    assert optimizer.step()[0]
    gpt.eval()
    runs = tmp_path / "run"
    checkpointing.save(runs, gpt, optimizer, scheduler, checkpointing.TrainState(7, 56), meta_json=meta.to_json())
    assert (runs / "iter_0000007").is_dir() and read_meta(runs).padded_vocab_size == meta.padded_vocab_size

    back = tmp_path / "back"
    hf_export.export_checkpoint(runs, back, show_progress=False)  # latest: iteration 7
    orig, got = load_file(str(hf / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert orig.keys() == got.keys() and not torch.equal(orig["model.norm.weight"], got["model.norm.weight"])
    # the exported Hugging Face model is the trained Megatron model
    trained = compare.compare_logits(compare.hf_logits(back, [tokens]), compare.megatron_logits(gpt, meta, [tokens]))
    assert trained.top1_agreement == 1.0 and trained.max_abs_diff <= 2e-5 * max(trained.logit_scale, 1), trained
