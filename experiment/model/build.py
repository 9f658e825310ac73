"""GPTModel from a ModelShape: the one place where the kit's model description becomes megatron.core.

Used by the runner (training) and by checkpoint conversion (import/export/logits check), so the
model that is trained is exactly the model that was converted.
"""

from __future__ import annotations

import torch

from experiment import megatron_import
from experiment.model.layout import ParallelLayout
from experiment.model.presets import ModelShape


def transformer_config(
    shape: ModelShape,
    layout: ParallelLayout = ParallelLayout(),
    *,
    params_dtype: torch.dtype = torch.float32,
    bf16: bool = False,
    deterministic: bool = False,
    on_cpu: bool | None = None,
    perform_initialization: bool = True,
    **extra,
):
    """megatron.core TransformerConfig for a Llama-family decoder (RMSNorm, SwiGLU, RoPE, GQA, no biases).

    Fusions that need CUDA kernels are switched off on CPU; dropout is off (continual pretraining of
    Llama-family models uses none, and it keeps runs bitwise repeatable).
    """
    megatron_import.install()
    from megatron.core.transformer import TransformerConfig

    if on_cpu is None:
        on_cpu = not torch.cuda.is_available()
    return TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_query_groups,
        kv_channels=shape.kv_channels,
        layernorm_epsilon=shape.norm_epsilon,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=shape.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=layout.tensor_parallel,
        pipeline_model_parallel_size=layout.pipeline_parallel,
        sequence_parallel=False,
        params_dtype=params_dtype,
        bf16=bf16,
        pipeline_dtype=params_dtype,
        use_cpu_initialization=on_cpu,
        perform_initialization=perform_initialization,  # off when weights are loaded right after
        bias_activation_fusion=not on_cpu,
        bias_dropout_fusion=not on_cpu,
        masked_softmax_fusion=not on_cpu,
        apply_rope_fusion=False,
        persist_layer_norm=False,  # needs Apex; megatron.core asserts it off for torch norms
        gradient_accumulation_fusion=False,
        deterministic_mode=deterministic,
        init_method_std=0.02,
        **extra,  # the GPU path's recompute and FP8 fields (experiment.train.gpu)
    )


def build_gpt_model(
    shape: ModelShape,
    seq_length: int,
    layout: ParallelLayout = ParallelLayout(),
    *,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    padded_vocab_size: int | None = None,
    layer_spec=None,
    linear_cross_entropy: bool = False,
    **config_kwargs,
):
    """The GPTModel for this rank's pipeline stage. Needs megatron's parallel state initialised
    (``experiment.model.parallel.initialize``). ``layer_spec``: another TE-free spec with the same
    parameters (the runner's SDPA attention, ``experiment.train.attention``); default: the local spec.
    ``linear_cross_entropy``: the output layer and the loss in one chunked pass (``experiment.model.fused_loss``),
    same parameters."""
    megatron_import.install()
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    config = transformer_config(shape, layout, **config_kwargs)
    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage()
    if post_process is None:
        post_process = ps.is_pipeline_last_stage()
    if linear_cross_entropy:
        from experiment.model.fused_loss import model_class

        if layout.tensor_parallel != 1:
            raise ValueError("the fused linear + cross-entropy needs tensor_parallel = 1")
        GPTModel = model_class()  # noqa: N806 - megatron's class, or its subclass with the fused loss
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec or get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=padded_vocab_size or shape.vocab_size,
        max_sequence_length=max(seq_length, 1),
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=shape.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=int(shape.rope_theta),
        rope_scaling=shape.rope_scaling == "llama3",
        rope_scaling_factor=shape.rope_scaling_factor,
    )


def padded_vocab_size(vocab_size: int, tensor_parallel: int, multiple: int = 128) -> int:
    """Megatron pads the vocabulary so each TP rank holds an equal, aligned slice."""
    step = multiple * tensor_parallel
    return ((vocab_size + step - 1) // step) * step
