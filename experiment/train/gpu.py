"""How a preset runs on a GPU: which layer spec (TE, TE+FP8, or the TE-free local spec with SDPA, with or
without the kit's FP8 linears), which activation recompute and which micro-batch, from a rough memory count. A
pure function, so the choice is tested on CPU and written into the run's logs before any CUDA work.

Memory per GPU (bytes), Megatron's distributed optimizer, bf16 params:
  weights 2 + fp32 grad buffer 4 + (fp32 main params + Adam moments) 12 / DP, per parameter;
  activations per layer and token with flash/SDPA attention ~34 x hidden (Korthikanti et al. 2022, no
  score matrix), ~2 x hidden with full recompute (only each layer's input is kept);
  logits 6 x vocab per token (bf16 logits and their fp32 copy in the loss); with the fused linear + cross-entropy
  (``training.fusions``) only one chunk of 4096 tokens' fp32 logits and softmax, 8 x vocab each.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADROOM = 0.85  # of the GPU's memory: allocator fragmentation, CUDA context, NCCL buffers
MICRO_BATCHES = (4, 2, 1)  # 1B, seq 2048, H200: micro-batch 8 within noise of 4 (bench/gpu/RESULTS.md)
AUTO_MICRO_BATCHES = (16, 8, 4, 2, 1)  # what micro_batch_size = "auto" times, where each fits and divides
AUTO_TIMED = 3  # the largest that fit: a smaller micro-batch is never faster on these shapes, and each costs time


@dataclass(frozen=True)
class Choice:
    spec: str  # "te" | "te-fp8" | "local-sdpa" | "local" | "local-sdpa-fp8" | "local-fp8"
    recompute: str  # "none" | "selective" | "full"
    micro_batch_size: int
    estimated_gib: float
    reason: str
    candidates: tuple[int, ...] = ()  # micro_batch_size = "auto": the sizes to time, largest first


def parameters(shape) -> int:
    h, kv = shape.hidden_size, shape.num_query_groups * shape.kv_channels
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * shape.ffn_hidden_size + 2 * h
    emb = shape.vocab_size * h * (1 if shape.tie_embeddings else 2)
    return shape.num_layers * per_layer + emb + h


def estimate_bytes(shape, seq: int, mbs: int, recompute: str, *, tp: int = 1, pp: int = 1, dp: int = 1,
                   chunked_logits: bool = False) -> float:
    """Peak bytes on one GPU for this shape, micro-batch and recompute (see the module docstring)."""
    params = parameters(shape) / (tp * pp)
    state = params * (2 + 4 + 12 / dp)
    per_token_layer = {"none": 34, "selective": 34, "full": 2}[recompute] * shape.hidden_size / tp
    layers = shape.num_layers / pp
    tokens = seq * mbs
    # with pipelining the first stage holds up to pp micro-batches in flight
    activations = tokens * layers * per_token_layer * (pp if pp > 1 else 1)
    logits = (min(tokens, 4096) * 8 if chunked_logits else tokens * 6) * shape.vocab_size / tp
    return state + activations + logits


def choose(shape, seq: int, gpu_memory_gib: float, *, te_available: bool, fp8: bool = False,
           attention: str = "sdpa", recompute: str = "auto", micro_batch_size: int | None = None,
           global_batch_size: int | None = None, tp: int = 1, pp: int = 1, dp: int = 1, fusions=()) -> Choice:
    """The spec, recompute and micro-batch for a preset on a GPU of ``gpu_memory_gib``.

    ``micro_batch_size``/``recompute`` given: kept (recompute "auto" is still chosen). The largest micro-batch of
    ``MICRO_BATCHES`` dividing the per-rank batch that fits without recompute wins; if none fits, full recompute.
    ``micro_batch_size = "auto"``: the same choice, and ``candidates``: every size of ``AUTO_MICRO_BATCHES``
    that divides the per-rank batch and fits at the chosen recompute (the runner times them: ``autobatch``).
    ``fp8`` without Transformer Engine: the local spec with the kit's FP8 linears (``experiment.model.fp8``).
    """
    base = "local" if attention == "local" else "local-sdpa"
    spec = ("te-fp8" if fp8 else "te") if te_available else (base + "-fp8" if fp8 else base)
    budget = gpu_memory_gib * 2**30 * HEADROOM
    per_rank = (global_batch_size // dp) if global_batch_size else None
    auto = micro_batch_size == "auto"
    mem = {"tp": tp, "pp": pp, "dp": dp, "chunked_logits": "linear-cross-entropy" in fusions}
    candidates = ([micro_batch_size] if micro_batch_size and not auto else
                  [m for m in MICRO_BATCHES if per_rank is None or per_rank % m == 0] or [1])
    modes = [recompute] if recompute != "auto" else ["none", "full"]
    for mode in modes:
        for mbs in candidates:
            need = estimate_bytes(shape, seq, mbs, mode, **mem)
            if need <= budget:
                timed = tuple(m for m in AUTO_MICRO_BATCHES if (per_rank is None or per_rank % m == 0)
                              and estimate_bytes(shape, seq, m, mode, **mem) <= budget) if auto else ()
                return Choice(spec, mode, mbs, need / 2**30, f"fits in {HEADROOM:.0%} of {gpu_memory_gib:.0f} GiB",
                              timed[:AUTO_TIMED] or ((mbs,) if auto else ()))
    mode, mbs = modes[-1], candidates[-1]
    need = estimate_bytes(shape, seq, mbs, mode, **mem)
    return Choice(spec, mode, mbs, need / 2**30,
                  f"does not fit: ~{need / 2**30:.0f} GiB > {budget / 2**30:.0f} GiB; raise data parallelism "
                  "(the optimizer state shards over it) or tensor_parallel", (mbs,) if auto else ())


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


def layer_spec_for(spec: str, fusions=()):
    """megatron.core layer spec for a choice's ``spec`` (and, local specs only, the compiled RMSNorm)."""
    if spec in ("te", "te-fp8"):
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    from experiment.model import fp8, fused
    from experiment.train.attention import layer_spec

    layer = layer_spec("local" if spec.startswith("local-fp8") or spec == "local" else "sdpa")
    if spec.endswith("-fp8"):
        layer = fp8.with_fp8_linears(layer)
    if "rmsnorm" in fusions:
        layer = fused.with_compiled_rms_norm(layer)
    return layer


def config_extra(choice: Choice, fusions=()) -> dict:
    """TransformerConfig fields of a choice: recompute, Transformer Engine's FP8 recipe, the fusions' fields."""
    from experiment.model import fused

    extra = recompute_config(choice.recompute)
    if choice.spec == "te-fp8":
        extra.update(fp8="hybrid", fp8_recipe="delayed")
    extra.update(fused.config_fields(fusions))
    return extra
