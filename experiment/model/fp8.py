"""FP8 linears for the Transformer-Engine-free local spec: megatron's column/row-parallel linears whose matmul
is ``torch._scaled_mm`` on float8 operands with dynamic per-tensor scales.

The recipe is the "tensorwise" one of torchao's Float8 training (what torchtitan and OLMo-core run without
Transformer Engine), written here for megatron's parallel linears, which torchao's ``nn.Linear`` swap does not
reach: each step, every operand's scale comes from its own absolute maximum (no amax history to keep or
checkpoint, so resume and determinism stay as in bf16); the input and the weight go to E4M3 (max 448) in the
forward pass, the output gradient to E5M2 (max 57344, the range gradients need) in the backward pass; the three
matmuls (output, input gradient, weight gradient) run on FP8 tensor cores and write bf16. Weights, optimizer state
and checkpoints stay as they are (bf16 weights, fp32 main params): only the matmuls change.

Where a dimension is not a multiple of 16 (``_scaled_mm``'s rule; the tiny preset), or a feature the FP8 path
does not handle is on (sequence parallel, gradient-accumulation fusion, frozen weights), megatron's own
matmul runs instead.
"""

from __future__ import annotations

import functools

E4M3_MAX = 448.0
E5M2_MAX = 57344.0
MIN_CAPABILITY = (8, 9)  # Ada (L4, L40S), Hopper (H100, H200), Blackwell: FP8 tensor cores


def fp8_problem(capability: tuple[int, int] | None, device_name: str | None = None) -> str | None:
    """Why FP8 cannot run on this device (None: it can). ``capability``: CUDA compute capability, None on CPU."""
    if capability is None:
        return "FP8 needs a GPU with FP8 tensor cores, and this run has no GPU"
    if tuple(capability) < MIN_CAPABILITY:
        return (f"{device_name or 'this GPU'} (compute capability {capability[0]}.{capability[1]}) has no FP8 tensor "
                "cores (8.9 or later: L4/L40S, H100/H200, B200)")
    return None


def quantize(x, dtype):
    """``x`` as ``dtype`` (a float8 type) scaled so its absolute maximum meets the type's maximum, and the
    inverse scale (fp32 scalar) that ``torch._scaled_mm`` multiplies the product by."""
    import torch

    fmax = E4M3_MAX if dtype == torch.float8_e4m3fn else E5M2_MAX
    amax = x.detach().abs().max().float().clamp(min=1e-12)
    scale = fmax / amax
    q = (x.float() * scale).clamp(-fmax, fmax).to(dtype)
    return q, scale.reciprocal()


def dequantize(q, inverse_scale, dtype):
    return (q.float() * inverse_scale).to(dtype)


def _fits(*dims: int) -> bool:
    return all(d % 16 == 0 for d in dims)


def _scaled_mm(a, b, sa, sb, out_dtype, fast_accum: bool = False):
    import torch

    return torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=out_dtype, use_fast_accum=fast_accum)


@functools.cache
def _compiled_quantize():
    import torch

    return torch.compile(quantize, dynamic=True)


def _quantize(x, dtype):
    """``quantize``; on a GPU through ``torch.compile`` (amax, scale and cast fused into two kernels instead of
    six passes over the tensor: torchao compiles the same step)."""
    return _compiled_quantize()(x, dtype) if x.is_cuda else quantize(x, dtype)


@functools.cache
def _matmul_function():
    import torch

    class FP8Matmul(torch.autograd.Function):
        """y = x w^T with x, w in E4M3; dx = dy w and dw = dy^T x with dy in E5M2; each scaled per tensor."""

        @staticmethod
        def forward(ctx, x, weight):
            x2 = x.reshape(-1, x.shape[-1])
            xq, xs = _quantize(x2, torch.float8_e4m3fn)
            wq, ws = _quantize(weight, torch.float8_e4m3fn)
            # _scaled_mm: the first operand row-major, the second column-major (wq.t() of a row-major wq is);
            # fast accumulation in the forward matmul only, as torchao's tensorwise recipe
            out = _scaled_mm(xq, wq.t(), xs, ws, x.dtype, fast_accum=True)
            ctx.save_for_backward(xq, xs, wq, ws)  # the FP8 copies: half the bytes of the bf16 input
            ctx.x_shape, ctx.w_dtype = x.shape, weight.dtype
            return out.view(*x.shape[:-1], weight.shape[0])

        @staticmethod
        def backward(ctx, grad):
            xq, xs, wq, ws = ctx.saved_tensors
            g2 = grad.reshape(-1, grad.shape[-1])
            gq, gs = _quantize(g2, torch.float8_e5m2)
            dx = _scaled_mm(gq, wq.t().contiguous().t(), gs, ws, grad.dtype)  # [m, n] x [n, k]
            dw = _scaled_mm(gq.t().contiguous(), xq.t().contiguous().t(), gs, xs, ctx.w_dtype)  # [n, m] x [m, k]
            return dx.view(ctx.x_shape), dw

    return FP8Matmul


def fp8_linear(x, weight):
    """``x @ weight.T`` through FP8 (see the module docstring); plain ``F.linear`` where a dimension is not a
    multiple of 16."""
    import torch.nn.functional as F

    m = x.numel() // x.shape[-1]
    if not _fits(m, x.shape[-1], weight.shape[0]):
        return F.linear(x, weight)
    return _matmul_function().apply(x, weight)


def emulated_linear(x, weight):
    """The FP8 forward computed in fp32 from the quantized operands: what the kernel must equal (up to its
    accumulation order), for tests on machines without ``_scaled_mm``."""
    import torch

    x2 = x.reshape(-1, x.shape[-1])
    xq, xs = quantize(x2, torch.float8_e4m3fn)
    wq, ws = quantize(weight, torch.float8_e4m3fn)
    out = (xq.float() @ wq.float().t()) * (xs * ws)
    return out.to(x.dtype).view(*x.shape[:-1], weight.shape[0])


@functools.cache
def linear_classes():
    """(FP8ColumnParallelLinear, FP8RowParallelLinear): megatron's linears with the FP8 matmul."""
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

    def forward_impl(self, parent, input, weight, *args, **kwargs):
        plain = kwargs.get("sequence_parallel") or kwargs.get("gradient_accumulation_fusion")
        if plain or not weight.requires_grad or args:
            return parent._forward_impl(self, input, weight, *args, **kwargs)
        if kwargs.get("allreduce_dgrad"):  # column-parallel under TP: the input gradient is summed over TP ranks
            input = copy_to_tensor_model_parallel_region(input, group=kwargs.get("tp_group"))
        out = fp8_linear(input, weight)
        bias = kwargs.get("bias")
        return out if bias is None else out + bias

    class FP8ColumnParallelLinear(ColumnParallelLinear):
        """ColumnParallelLinear with the FP8 matmul (same parameters, same checkpoint)."""

        def _forward_impl(self, input, weight, *args, **kwargs):
            return forward_impl(self, ColumnParallelLinear, input, weight, *args, **kwargs)

    class FP8RowParallelLinear(RowParallelLinear):
        """RowParallelLinear with the FP8 matmul (same parameters, same checkpoint)."""

        def _forward_impl(self, input, weight, *args, **kwargs):
            return forward_impl(self, RowParallelLinear, input, weight, *args, **kwargs)

    return FP8ColumnParallelLinear, FP8RowParallelLinear


def with_fp8_linears(spec):
    """A copy of a local GPT layer spec whose attention and MLP linears are the FP8 ones (the output layer,
    built by GPTModel itself, stays bf16, as in torchao's and Transformer Engine's recipes)."""
    import copy

    column, row = linear_classes()
    spec = copy.deepcopy(spec)
    attn, mlp = spec.submodules.self_attention.submodules, spec.submodules.mlp.submodules
    attn.linear_qkv, attn.linear_proj = column, row
    mlp.linear_fc1, mlp.linear_fc2 = column, row
    return spec
