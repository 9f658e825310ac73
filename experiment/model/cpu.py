"""The small CPU compatibility layer: lets megatron.core train and checkpoint without a GPU.

megatron.core assumes CUDA in a handful of places (the current device, the CUDA RNG state that
``tensor_parallel.random`` forks for dropout, ``torch.cuda.synchronize``). On a host without a GPU
we redirect exactly those calls to their CPU equivalents, so a training folder can be smoke-tested
on a laptop with the gloo backend. ``apply()`` is a no-op when CUDA is available.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpu(TorchFunctionMode):
    """Rewrites ``device="cuda"`` (and ``.cuda()``) to the CPU in every torch call.

    megatron.core hard-codes ``device="cuda"`` for small bookkeeping tensors (causal masks, the
    optimizer's found-inf flag, grad-norm buffers) and dispatches on ``tensor.type()`` names; a function mode catches all of them in one place
    instead of patching each call site.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # the optimizers dispatch on "torch.cuda.FloatTensor"-style names
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if _is_cuda(kwargs.get("device")):
            kwargs = {**kwargs, "device": "cpu"}
        if func is torch.Tensor.to and args[1:] and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def needed() -> bool:
    """True when no CUDA device is usable, i.e. when the redirections must be applied."""
    return not torch.cuda.is_available()


def apply() -> bool:
    """Redirect megatron.core's CUDA calls to the CPU. Idempotent; returns whether it patched."""
    global _APPLIED
    if _APPLIED or not needed():
        return _APPLIED
    from megatron.core.tensor_parallel import random as mp_random

    cuda = torch.cuda
    cuda.current_device = lambda: "cpu"
    cuda.synchronize = lambda *a, **k: None
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    cuda.manual_seed_all = lambda seed: None  # torch.manual_seed already seeded the CPU generator
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.device = lambda *a, **k: contextlib.nullcontext()
    mp_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mp_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    _CudaToCpu().__enter__()  # stays active for the life of the process
    _APPLIED = True
    return True
