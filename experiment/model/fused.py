"""Fused or compiled kernels for the local spec without Transformer Engine or Apex, one switch each
(``training.fusions``): RMSNorm and RoPE through ``torch.compile``, the cross-entropy through megatron's native
fused vocab-parallel cross-entropy.

megatron.core 0.16.1 without TE/Apex: ``persist_layer_norm`` needs Apex (and is asserted off for torch norms),
``apply_rope_fusion`` needs TE (``TransformerConfig`` refuses it), ``cross_entropy_loss_fusion`` with
``cross_entropy_fusion_impl = "native"`` needs neither (its pieces are ``jit_fuser``, i.e. ``torch.compile``).
Each is measured on and off by ``bench/gpu/check.py --part 2`` before any becomes a default.
"""

from __future__ import annotations

import functools

FUSIONS = ("rmsnorm", "rope", "cross-entropy", "linear-cross-entropy")  # the last: experiment.model.fused_loss


def config_fields(fusions) -> dict:
    """TransformerConfig fields for the chosen fusions (only the cross-entropy is a config field)."""
    if "cross-entropy" in fusions:
        return {"cross_entropy_loss_fusion": True, "cross_entropy_fusion_impl": "native"}
    return {}


@functools.cache
def _compiled_rms_norm():
    import torch
    import torch.nn.functional as F

    def rms_norm(x, weight, eps: float):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)

    return torch.compile(rms_norm, dynamic=False)


@functools.cache
def compiled_rms_norm_class():
    """A drop-in for the local spec's ``WrappedTorchNorm`` (RMSNorm): same ``weight`` parameter, so the same
    checkpoint; one compiled function shared by every layer (guards on shape and dtype only)."""
    import torch

    class CompiledRMSNorm(torch.nn.RMSNorm):
        def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_):
            super().__init__(normalized_shape=hidden_size, eps=eps)

        def forward(self, x):
            return _compiled_rms_norm()(x, self.weight, self.eps)

    return CompiledRMSNorm


def with_compiled_rms_norm(spec):
    """A copy of a local GPT layer spec whose two per-layer norms are the compiled RMSNorm."""
    import copy

    spec = copy.deepcopy(spec)
    norm = compiled_rms_norm_class()
    spec.submodules.input_layernorm = norm
    spec.submodules.pre_mlp_layernorm = norm
    return spec


def install_compiled_rope() -> None:
    """megatron's rotary embedding (``_apply_rotary_pos_emb_bshd``, the path ``apply_rope_fusion = False``
    takes) through ``torch.compile``, for this process. Idempotent."""
    import torch
    from megatron.core.models.common.embeddings import rope_utils

    fn = rope_utils._apply_rotary_pos_emb_bshd
    if not getattr(fn, "_kit_compiled", False):
        compiled = torch.compile(fn, dynamic=False)
        compiled._kit_compiled = True
        rope_utils._apply_rotary_pos_emb_bshd = compiled
