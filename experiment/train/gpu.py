"""How a preset runs on a GPU: which layer spec (TE, TE+FP8, or the TE-free local spec with SDPA), which
activation recompute and which micro-batch, from a rough memory count. A pure function, so the choice is
tested on CPU and written into the run's logs before any CUDA work.

Memory per GPU (bytes), Megatron's distributed optimizer, bf16 params:
  weights 2 + fp32 grad buffer 4 + (fp32 main params + Adam moments) 12 / DP, per parameter;
  activations per layer and token with flash/SDPA attention ~34 x hidden (Korthikanti et al. 2022, no
  score matrix), ~2 x hidden with full recompute (only each layer's input is kept);
  logits 6 x vocab per token (bf16 logits and their fp32 copy in the loss).
"""

from __future__ import annotations

from dataclasses import dataclass

HEADROOM = 0.85  # of the GPU's memory: allocator fragmentation, CUDA context, NCCL buffers
MICRO_BATCHES = (4, 2, 1)  # 1B, seq 2048, H200: micro-batch 8 within noise of 4 (bench/gpu/RESULTS.md)


@dataclass(frozen=True)
class Choice:
    spec: str  # "te" | "te-fp8" | "local-sdpa" | "local"
    recompute: str  # "none" | "selective" | "full"
    micro_batch_size: int
    estimated_gib: float
    reason: str


def parameters(shape) -> int:
    h, kv = shape.hidden_size, shape.num_query_groups * shape.kv_channels
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * shape.ffn_hidden_size + 2 * h
    emb = shape.vocab_size * h * (1 if shape.tie_embeddings else 2)
    return shape.num_layers * per_layer + emb + h


def estimate_bytes(shape, seq: int, mbs: int, recompute: str, *, tp: int = 1, pp: int = 1, dp: int = 1) -> float:
    """Peak bytes on one GPU for this shape, micro-batch and recompute (see the module docstring)."""
    params = parameters(shape) / (tp * pp)
    state = params * (2 + 4 + 12 / dp)
    per_token_layer = {"none": 34, "selective": 34, "full": 2}[recompute] * shape.hidden_size / tp
    layers = shape.num_layers / pp
    tokens = seq * mbs
    # with pipelining the first stage holds up to pp micro-batches in flight
    activations = tokens * layers * per_token_layer * (pp if pp > 1 else 1)
    logits = tokens * shape.vocab_size * 6 / tp
    return state + activations + logits


def choose(shape, seq: int, gpu_memory_gib: float, *, te_available: bool, fp8: bool = False,
           attention: str = "sdpa", recompute: str = "auto", micro_batch_size: int | None = None,
           global_batch_size: int | None = None, tp: int = 1, pp: int = 1, dp: int = 1) -> Choice:
    """The spec, recompute and micro-batch for a preset on a GPU of ``gpu_memory_gib``.

    ``micro_batch_size``/``recompute`` given: kept (recompute "auto" is still chosen). The largest micro-batch of
    ``MICRO_BATCHES`` dividing the per-rank batch that fits without recompute wins; if none fits, full recompute.
    """
    if fp8 and not te_available:
        raise ValueError("training.fp8 = true needs Transformer Engine, which does not import here; "
                         "fix: set fp8 = false or use the GPU image with transformer_engine")
    spec = ("te-fp8" if fp8 else "te") if te_available else ("local" if attention == "local" else "local-sdpa")
    budget = gpu_memory_gib * 2**30 * HEADROOM
    per_rank = (global_batch_size // dp) if global_batch_size else None
    candidates = ([micro_batch_size] if micro_batch_size else
                  [m for m in MICRO_BATCHES if per_rank is None or per_rank % m == 0] or [1])
    modes = [recompute] if recompute != "auto" else ["none", "full"]
    for mode in modes:
        for mbs in candidates:
            need = estimate_bytes(shape, seq, mbs, mode, tp=tp, pp=pp, dp=dp)
            if need <= budget:
                return Choice(spec, mode, mbs, need / 2**30, f"fits in {HEADROOM:.0%} of {gpu_memory_gib:.0f} GiB")
    mode, mbs = modes[-1], candidates[-1]
    need = estimate_bytes(shape, seq, mbs, mode, tp=tp, pp=pp, dp=dp)
    return Choice(spec, mode, mbs, need / 2**30,
                  f"does not fit: ~{need / 2**30:.0f} GiB > {budget / 2**30:.0f} GiB; raise data parallelism "
                  "(the optimizer state shards over it) or tensor_parallel")


def recompute_config(recompute: str) -> dict:
    """TransformerConfig fields for a recompute mode."""
    if recompute == "full":
        return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    if recompute == "selective":
        return {"recompute_granularity": "selective"}
    return {}


def te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA library under it
        return False
    return True


def layer_spec_for(spec: str):
    """megatron.core layer spec for a choice's ``spec``."""
    if spec in ("te", "te-fp8"):
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    from experiment.train.attention import layer_spec

    return layer_spec("local" if spec == "local" else "sdpa")
