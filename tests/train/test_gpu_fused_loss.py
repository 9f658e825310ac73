"""The fused output layer + cross-entropy (training.fusions = ["linear-cross-entropy"]) on CPU: per-token
losses and both gradients equal to the plain logits + cross-entropy (several chunks, uneven per-token
gradients as the masked mean gives), and in a tiny GPTModel the same loss, gradients and logits as megatron's
own path with the same weights."""

from __future__ import annotations

import pytest
import torch

from experiment.model import fused_loss


def test_chunked_loss_and_gradients_equal_the_plain_ones():
    torch.manual_seed(0)
    s, b, h, v = 7, 3, 16, 50
    hidden = torch.randn(s, b, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, v, (b, s))
    mask = (torch.rand(b, s) > 0.3).double()  # the kit's masked mean: uneven per-token gradients
    loss = fused_loss.linear_cross_entropy(hidden, weight, labels, chunk=4)  # 21 tokens: 6 chunks
    assert loss.shape == (b, s) and loss.dtype == torch.float32
    (loss.double() * mask).sum().div(mask.sum()).backward()
    dh, dw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logits = (hidden @ weight.t()).transpose(0, 1)  # [b, s, v]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, v), labels.reshape(-1), reduction="none").view(b, s)
    (ref * mask).sum().div(mask.sum()).backward()
    assert torch.allclose(loss.double(), ref, rtol=1e-5)
    assert torch.allclose(dh, hidden.grad, rtol=1e-5, atol=1e-7) and torch.allclose(dw, weight.grad, rtol=1e-5, atol=1e-7)


def test_gpt_model_with_the_fused_loss_matches_megatron(monkeypatch):
    from experiment.model import parallel
    from experiment.model.build import build_gpt_model
    from experiment.model.presets import PRESETS

    monkeypatch.setenv("MASTER_PORT", "29733")
    parallel.initialize(seed=1)
    try:
        shape = PRESETS["tiny"]
        plain = build_gpt_model(shape, 32)
        fused = build_gpt_model(shape, 32, linear_cross_entropy=True)
        assert type(fused).__name__ == "LinearCrossEntropyGPTModel"
        assert plain.state_dict().keys() == fused.state_dict().keys()
        fused.load_state_dict(plain.state_dict())
        tokens = torch.randint(0, shape.vocab_size, (2, 32))
        pos = torch.arange(32).unsqueeze(0).expand(2, -1)
        losses = []
        for model in (plain, fused):
            loss = model(tokens, pos, None, labels=tokens)
            loss.mean().backward()
            losses.append(loss.detach())
        assert torch.allclose(losses[1], losses[0], rtol=1e-5)
        for (name, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters()):
            assert torch.allclose(b.grad, a.grad, rtol=1e-4, atol=1e-6), name
        with torch.no_grad():  # no labels: the logits, through megatron's own output layer
            assert torch.equal(fused(tokens, pos, None), plain(tokens, pos, None))
    finally:
        parallel.shutdown()


def test_the_folder_refuses_it_with_tensor_parallelism():
    from experiment.folder import TrainingSection

    with pytest.raises(ValueError, match="tensor_parallel = 1"):
        TrainingSection(fusions=["linear-cross-entropy"], tensor_parallel=2, train_iters=1)
