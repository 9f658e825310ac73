"""The local FP8 linear on CPU: torch 2.13's CPU ``torch._scaled_mm`` takes float8 operands, so the real
kernel call (the same one the GPU runs) is checked here: its scales, its forward against an fp32 emulation
of the quantized operands and against the bf16 matmul, its backward against autograd's, and the FP8 spec in a
tiny megatron GPTModel (loss and every gradient near the bf16/fp32 model's). The GPU check (bench/gpu/check.py
part 1, row f8) asserts the CUDA kernel's numbers by the loss over 100 steps against BF16's."""

from __future__ import annotations

import pytest
import torch

from experiment.model import fp8


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_quantize_meets_the_type_maximum_and_round_trips():
    x = torch.randn(64, 128) * 3
    q, inv = fp8.quantize(x, torch.float8_e4m3fn)
    assert q.dtype == torch.float8_e4m3fn
    assert q.float().abs().max().item() == pytest.approx(fp8.E4M3_MAX)  # the amax element lands on 448
    assert inv.item() == pytest.approx(x.abs().max().item() / fp8.E4M3_MAX, rel=1e-6)
    assert rel(fp8.dequantize(q, inv, torch.float32), x) < 0.04  # 3 mantissa bits: ~2-3% rms error
    g, ginv = fp8.quantize(x * 1e-6, torch.float8_e5m2)  # tiny gradients keep their range through the scale
    assert g.dtype == torch.float8_e5m2 and rel(fp8.dequantize(g, ginv, torch.float32), x * 1e-6) < 0.08
    z, zinv = fp8.quantize(torch.zeros(16, 16), torch.float8_e4m3fn)  # all zeros: no division by zero
    assert torch.isfinite(zinv) and z.float().abs().max() == 0


def test_forward_is_the_emulated_fp8_matmul_and_near_bf16():
    torch.manual_seed(0)
    x, w = torch.randn(2, 32, 256, dtype=torch.bfloat16), torch.randn(384, 256, dtype=torch.bfloat16) * 0.02
    out = fp8.fp8_linear(x, w)
    assert out.shape == (2, 32, 384) and out.dtype == torch.bfloat16
    assert rel(out, fp8.emulated_linear(x, w)) < 0.01  # the kernel is the quantized math (bf16 output rounding)
    assert rel(out, torch.nn.functional.linear(x, w)) < 0.06  # and near the bf16 matmul


def test_backward_matches_autograd_of_the_bf16_matmul():
    torch.manual_seed(1)
    x = torch.randn(64, 128, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(96, 128, dtype=torch.bfloat16) * 0.05).requires_grad_()
    g = torch.randn(64, 96, dtype=torch.bfloat16)
    fp8.fp8_linear(x, w).backward(g)
    dx, dw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    torch.nn.functional.linear(x, w).backward(g)
    assert dx.dtype == dw.dtype == torch.bfloat16
    assert rel(dx, x.grad) < 0.08 and rel(dw, w.grad) < 0.08  # E5M2 gradients: 2 mantissa bits


def test_shapes_not_multiple_of_16_fall_back_to_the_plain_matmul():
    x, w = torch.randn(3, 40), torch.randn(24, 40)
    assert torch.equal(fp8.fp8_linear(x, w), torch.nn.functional.linear(x, w))


def test_device_rule_names_the_gpu_and_the_fix():
    assert fp8.fp8_problem((9, 0), "NVIDIA H100") is None and fp8.fp8_problem((8, 9)) is None
    assert "no GPU" in fp8.fp8_problem(None)
    msg = fp8.fp8_problem((8, 0), "NVIDIA A100-SXM4-80GB")
    assert "A100" in msg and "8.0" in msg and "8.9" in msg


def test_fp8_spec_in_a_tiny_gpt_model_tracks_the_plain_one(tmp_path, monkeypatch):
    """The FP8 spec builds megatron's GPTModel with the same parameters (same checkpoint keys) and its loss
    and gradients stay near the plain model's with the same weights."""
    from experiment.model import parallel
    from experiment.model.build import build_gpt_model
    from experiment.model.presets import PRESETS
    from experiment.train.gpu import layer_spec_for

    monkeypatch.setenv("MASTER_PORT", "29731")
    env = parallel.initialize(seed=1)
    try:
        shape = PRESETS["tiny"]  # hidden 64, ffn 176, qkv 128: every linear's dims are multiples of 16
        plain = build_gpt_model(shape, 32, layer_spec=layer_spec_for("local-sdpa"))
        quant = build_gpt_model(shape, 32, layer_spec=layer_spec_for("local-sdpa-fp8"))
        assert type(quant.decoder.layers[0].mlp.linear_fc1).__name__ == "FP8ColumnParallelLinear"
        assert type(quant.decoder.layers[0].self_attention.linear_proj).__name__ == "FP8RowParallelLinear"
        assert plain.state_dict().keys() == quant.state_dict().keys()
        quant.load_state_dict(plain.state_dict())
        tokens = torch.randint(0, shape.vocab_size, (2, 32))
        pos = torch.arange(32).unsqueeze(0).expand(2, -1)
        calls, real = [], torch._scaled_mm
        monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
        losses = []
        for model in (plain, quant):
            loss = model(tokens, pos, None, labels=tokens).float().mean()
            loss.backward()
            losses.append(loss.item())
        # 4 FP8 linears per layer x 2 layers, each 1 forward + 2 backward matmuls; the plain model none
        assert len(calls) == 4 * 2 * 3
        assert losses[1] != losses[0] and losses[1] == pytest.approx(losses[0], rel=0.01)
        for (name, a), (_, b) in zip(plain.named_parameters(), quant.named_parameters()):
            assert rel(b.grad, a.grad) < 0.15, name
    finally:
        parallel.shutdown()
        del env
