"""Hugging Face <-> Megatron-Core tensor names and transforms for the Llama family, as data.

Why our own table: Megatron-Bridge's AutoBridge (the library for this) imports Transformer Engine at
module load (megatron/bridge/peft/lora_layers.py), which is CUDA-only, so it cannot run on the CPU hosts
this kit converts on. The layouts below follow the two references:

- Megatron-LM ``tools/checkpoint/loader_llama_mistral.py`` / ``saver_core.py``: fused QKV is grouped per
  KV head, ``[q_0 .. q_{h/g-1}, k, v]`` for each group; SwiGLU's fc1 is ``cat(gate, up)``; no RoPE
  permutation is needed for Hugging Face weights (they already use the rotate-half convention).
- Megatron-Bridge ``models/llama/llama_bridge.py`` (``QKVMapping``, ``GatedMLPMapping``, ``AutoMapping``).

Names on the Megatron side are those of ``GPTModel`` built with the local layer spec
(``experiment.model.build.build_gpt_model``); in the distributed checkpoint, per-layer tensors are
stacked under ``decoder.layers.*`` with the layer as a leading axis, and the local spec's norms are
saved under Transformer Engine's names (``linear_qkv.layer_norm_weight``), so checkpoints load with
either spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from experiment.ckpt.meta import CheckpointError
from experiment.model.presets import ModelShape

Kind = Literal["copy", "qkv", "gate_up", "vocab"]
When = Literal["always", "qkv_bias", "untied"]


@dataclass(frozen=True)
class Rule:
    """One Megatron parameter and the Hugging Face tensor(s) it is made of.

    ``mcore``: parameter name in GPTModel (``{i}`` = layer index local to the pipeline stage in the
    module, global in the checkpoint); ``ckpt``: key in the distributed checkpoint (layer axis stacked);
    ``hf``: Hugging Face names (``{i}`` = global layer); ``tp_axis``: the axis tensor parallelism splits
    (None: replicated); ``kind``: how the HF tensors combine (copy, qkv interleave, gate/up concat,
    vocab padding).
    """

    mcore: str
    ckpt: str
    hf: tuple[str, ...]
    kind: Kind
    tp_axis: int | None
    hf_dims: tuple[tuple[str, ...], ...]  # per HF tensor, its dimensions by name (see ``dimensions``)
    when: When = "always"

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.mcore

    def applies(self, shape: ModelShape) -> bool:
        if self.when == "qkv_bias":
            return shape.qkv_bias
        if self.when == "untied":
            return not shape.tie_embeddings
        return True

    def hf_shapes(self, shape: ModelShape) -> tuple[tuple[int, ...], ...]:
        """The shape of each Hugging Face tensor of this rule (one layer's, for per-layer rules)."""
        dims = dimensions(shape)
        return tuple(tuple(dims[d] for d in names) for names in self.hf_dims)

    def ckpt_shape(self, shape: ModelShape, padded_vocab: int) -> tuple[int, ...]:
        """The unsharded Megatron tensor (one layer's, for per-layer rules), derived from the HF shapes by
        ``kind``: copy keeps it, vocab pads the rows, qkv and gate_up stack the parts' rows."""
        parts = self.hf_shapes(shape)
        if self.kind == "copy":
            return parts[0]
        if self.kind == "vocab":
            return (padded_vocab, *parts[0][1:])
        return (sum(p[0] for p in parts), *parts[0][1:])


def dimensions(shape: ModelShape) -> dict[str, int]:
    """The named dimensions the rules' shapes are written in."""
    d = shape.kv_channels
    return {"h": shape.hidden_size, "q": shape.num_attention_heads * d, "kv": shape.num_query_groups * d,
            "f": shape.ffn_hidden_size, "v": shape.vocab_size}


L, HL = "decoder.layers.{i}.", "model.layers.{i}."
RULES: tuple[Rule, ...] = (
    Rule("embedding.word_embeddings.weight", "embedding.word_embeddings.weight",
         ("model.embed_tokens.weight",), "vocab", 0, (("v", "h"),)),
    Rule(L + "input_layernorm.weight", "decoder.layers.self_attention.linear_qkv.layer_norm_weight",
         (HL + "input_layernorm.weight",), "copy", None, (("h",),)),
    Rule(L + "self_attention.linear_qkv.weight", "decoder.layers.self_attention.linear_qkv.weight",
         (HL + "self_attn.q_proj.weight", HL + "self_attn.k_proj.weight", HL + "self_attn.v_proj.weight"), "qkv", 0,
         (("q", "h"), ("kv", "h"), ("kv", "h"))),
    Rule(L + "self_attention.linear_qkv.bias", "decoder.layers.self_attention.linear_qkv.bias",
         (HL + "self_attn.q_proj.bias", HL + "self_attn.k_proj.bias", HL + "self_attn.v_proj.bias"), "qkv", 0,
         (("q",), ("kv",), ("kv",)), when="qkv_bias"),
    Rule(L + "self_attention.linear_proj.weight", "decoder.layers.self_attention.linear_proj.weight",
         (HL + "self_attn.o_proj.weight",), "copy", 1, (("h", "q"),)),
    Rule(L + "pre_mlp_layernorm.weight", "decoder.layers.mlp.linear_fc1.layer_norm_weight",
         (HL + "post_attention_layernorm.weight",), "copy", None, (("h",),)),
    Rule(L + "mlp.linear_fc1.weight", "decoder.layers.mlp.linear_fc1.weight",
         (HL + "mlp.gate_proj.weight", HL + "mlp.up_proj.weight"), "gate_up", 0, (("f", "h"), ("f", "h"))),
    Rule(L + "mlp.linear_fc2.weight", "decoder.layers.mlp.linear_fc2.weight",
         (HL + "mlp.down_proj.weight",), "copy", 1, (("h", "f"),)),
    Rule("decoder.final_layernorm.weight", "decoder.final_layernorm.weight", ("model.norm.weight",), "copy", None,
         (("h",),)),
    Rule("output_layer.weight", "output_layer.weight", ("lm_head.weight",), "vocab", 0, (("v", "h"),),
         when="untied"),
)


@dataclass(frozen=True)
class Family:
    """A Hugging Face architecture the kit converts: the one object a new model family adds.

    From it follow the tensor rules (``rules_for``), every expected shape on both sides
    (``Rule.hf_shapes``/``Rule.ckpt_shape``), the config checks (``check_config``) and the model options
    the layer spec is built with (``ModelShape.qkv_bias``, set by ``shape_from_config``).
    """

    name: str
    architecture: str
    qkv_bias: bool
    rules: tuple[Rule, ...] = RULES
    projection_biases: bool = False  # may the config set attention_bias / mlp_bias (Qwen2's qkv biases)
    must_be_false: tuple[str, ...] = ()  # config flags the mapping does not cover

    def rules_for(self, shape: ModelShape) -> list[Rule]:
        return [r for r in self.rules if r.applies(shape)]

    def check_config(self, config: dict[str, Any], where: str) -> None:
        """Refuse a config whose features the rules do not map, naming the field."""
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"{where}: field 'hidden_act' = {act!r}; fix: only SwiGLU (silu) models are supported")
        for flag in ("attention_bias", "mlp_bias"):
            if not self.projection_biases and config.get(flag):
                raise CheckpointError(
                    f"{where}: field {flag!r} = true: biases on every projection are not in the mapping; "
                    "fix: convert a model without them"
                )
        for flag in self.must_be_false:
            if config.get(flag):
                raise CheckpointError(f"{where}: field {flag!r} = true is not supported; fix: set it false")


# The registry: the single list of families the kit converts (``experiment ckpt import``) and exports.
FAMILIES: dict[str, Family] = {
    f.architecture: f
    for f in (
        Family("llama", "LlamaForCausalLM", qkv_bias=False),      # Llama 2, Llama 3/3.1/3.2, SmolLM2
        Family("mistral", "MistralForCausalLM", qkv_bias=False),
        Family("qwen2", "Qwen2ForCausalLM", qkv_bias=True, projection_biases=True,
               must_be_false=("use_sliding_window",)),
    )
}
FAMILY_NAMES: dict[str, Family] = {f.name: f for f in FAMILIES.values()}

# Megatron's llama3 RoPE scaling has these fixed (megatron/core/models/common/embeddings/rotary_pos_embedding.py)
_LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def family_of(config: dict[str, Any], where: str) -> Family:
    archs = config.get("architectures") or []
    for arch in archs:
        if arch in FAMILIES:
            return FAMILIES[arch]
    raise CheckpointError(
        f"{where}: field 'architectures': unsupported architecture {archs or config.get('model_type')!r}; "
        f"fix: convert one of {sorted(FAMILIES)} (other families: docs/checkpoints.md, 'Adding a model family')"
    )


def _rope(config: dict[str, Any], where: str) -> tuple[float, str, float]:
    """(theta, scaling, factor) from either transformers 5's ``rope_parameters`` or the older fields."""
    params = dict(config.get("rope_parameters") or {})
    legacy = config.get("rope_scaling") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    scaling = {**legacy, **{k: v for k, v in params.items() if k != "rope_theta"}}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type in (None, "default"):
        return float(theta), "none", 8.0
    if rope_type != "llama3":
        raise CheckpointError(
            f"{where}: field 'rope_parameters.rope_type': {rope_type!r} is not supported by Megatron's GPTModel "
            "here; fix: convert a model with default or llama3 RoPE"
        )
    for key, want in _LLAMA3_FIXED.items():
        if key in scaling and float(scaling[key]) != want:
            raise CheckpointError(
                f"{where}: field 'rope_parameters.{key}' = {scaling[key]}, Megatron's llama3 RoPE fixes it to "
                f"{want}; fix: this model's RoPE cannot be reproduced exactly, do not convert it"
            )
    return float(theta), "llama3", float(scaling.get("factor", 8.0))


def shape_from_config(config: dict[str, Any], where: str) -> tuple[Family, ModelShape]:
    """The kit's ModelShape for a Hugging Face config.json, or a CheckpointError naming the field."""
    family = family_of(config, where)

    def need(key: str):
        if key not in config:
            raise CheckpointError(f"{where}: field {key!r} is missing; fix: use the model's original config.json")
        return config[key]

    family.check_config(config, where)
    heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    head_dim = config.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != hidden:
        raise CheckpointError(
            f"{where}: field 'head_dim' = {head_dim} differs from hidden_size/num_attention_heads = {hidden // heads}; "
            "fix: such models are not supported yet (docs/checkpoints.md)"
        )
    theta, scaling, factor = _rope(config, where)
    shape = ModelShape(
        num_layers=int(need("num_hidden_layers")),
        hidden_size=hidden,
        ffn_hidden_size=int(need("intermediate_size")),
        num_attention_heads=heads,
        num_query_groups=int(config.get("num_key_value_heads") or heads),
        vocab_size=int(need("vocab_size")),
        max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
        rope_theta=theta,
        rope_scaling=scaling,
        rope_scaling_factor=factor,
        norm_epsilon=float(config.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=family.qkv_bias,
    )
    return family, shape


def config_from_shape(shape: ModelShape, family: str = "llama") -> dict[str, Any]:
    """A Hugging Face config.json for a model that has none (trained from scratch by the kit)."""
    arch = FAMILY_NAMES[family].architecture
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": shape.rope_theta}
    if shape.rope_scaling == "llama3":
        rope = {**_LLAMA3_FIXED, "rope_type": "llama3", "rope_theta": shape.rope_theta,
                "factor": shape.rope_scaling_factor}
    return {
        "architectures": [arch], "model_type": family, "hidden_act": "silu",
        "hidden_size": shape.hidden_size, "intermediate_size": shape.ffn_hidden_size,
        "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_query_groups, "head_dim": shape.kv_channels,
        "vocab_size": shape.vocab_size, "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": shape.norm_epsilon, "tie_word_embeddings": shape.tie_embeddings, "rope_parameters": rope,
    }


_HF_FIELD = {"num_attention_heads": "num_attention_heads", "num_query_groups": "num_key_value_heads",
             "ffn_hidden_size": "intermediate_size", "num_layers": "num_hidden_layers"}


def check_layout(shape: ModelShape, tp: int, pp: int, where: str) -> None:
    """TP must divide heads, KV groups and the FFN; PP must divide the layers (``layout_mismatches``)."""
    from experiment.model.layout import ParallelLayout, layout_mismatches

    if tp < 1 or pp < 1:
        raise CheckpointError(f"--tp {tp} --pp {pp}: both must be >= 1")
    for m in layout_mismatches(shape, ParallelLayout(tp, pp)):
        flag = "--tp" if m.parallel == "tensor_parallel" else "--pp"
        raise CheckpointError(f"{where}: field {_HF_FIELD[m.field]!r} = {m.value} is not divisible by {flag} "
                              f"{m.size}; fix: use {flag} in {m.divisors}")


def rules_for(shape: ModelShape, family: str = "llama") -> list[Rule]:
    """The tensor rules of ``family`` that apply to ``shape``."""
    return FAMILY_NAMES[family].rules_for(shape)


def expected_hf_shapes(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """Every Hugging Face tensor the model must have, with its shape (derived from ``RULES``)."""
    out: dict[str, tuple[int, ...]] = {}
    for rule in rules_for(shape):
        layers = range(shape.num_layers) if rule.per_layer else [None]
        for i in layers:
            out |= {n.format(i=i): s for n, s in zip(rule.hf, rule.hf_shapes(shape))}
    return out


def hf_names(shape: ModelShape) -> list[str]:
    """Every Hugging Face tensor the model must have."""
    out = []
    for rule in rules_for(shape):
        layers = range(shape.num_layers) if rule.per_layer else [None]
        for i in layers:
            out.extend(n.format(i=i) for n in rule.hf)
    return out


# ---------------------------------------------------------------- transforms (pure tensor functions)

def to_mcore(rule: Rule, tensors: list, shape: ModelShape, padded_vocab: int):
    """The full (TP=1) Megatron tensor from the Hugging Face tensor(s) of ``rule``."""
    import torch

    if rule.kind == "copy":
        return tensors[0]
    if rule.kind == "vocab":
        t = tensors[0]
        if padded_vocab == t.shape[0]:
            return t
        pad = t.new_zeros((padded_vocab - t.shape[0], *t.shape[1:]))
        return torch.cat([t, pad], dim=0)
    if rule.kind == "gate_up":
        return torch.cat(tensors, dim=0)
    # qkv: [groups, (q per group + k + v) * head_dim, ...]
    q, k, v = tensors
    g, d = shape.num_query_groups, shape.kv_channels
    rest = q.shape[1:]
    q = q.reshape(g, -1, *rest)
    k = k.reshape(g, d, *rest)
    v = v.reshape(g, d, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def from_mcore(rule: Rule, tensor, shape: ModelShape, vocab_size: int) -> list:
    """The Hugging Face tensor(s) of ``rule`` from the full Megatron tensor (inverse of ``to_mcore``)."""
    if rule.kind == "copy":
        return [tensor]
    if rule.kind == "vocab":
        return [tensor[:vocab_size]]
    if rule.kind == "gate_up":
        return list(tensor.chunk(2, dim=0))
    g, d = shape.num_query_groups, shape.kv_channels
    per_group = shape.num_attention_heads // g
    rest = tensor.shape[1:]
    grouped = tensor.reshape(g, (per_group + 2) * d, *rest)
    q, k, v = grouped.split([per_group * d, d, d], dim=1)
    return [q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)]


def tp_slice(rule: Rule, full, tp: int, rank: int):
    """This TP rank's part of the full Megatron tensor, laid out as the rank's parameter is in memory.

    fc1 is the exception to a plain slice: each rank holds ``cat(gate_r, up_r)``.
    """
    import torch

    if rule.tp_axis is None or tp == 1:
        return full
    if rule.kind == "gate_up":
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]], dim=0)
    return full.chunk(tp, dim=rule.tp_axis)[rank]


def fill(rule: Rule, tensors: list, param, shape: ModelShape, tp: int, rank: int) -> None:
    """Copy this TP rank's part of the HF tensor(s) straight into ``param`` (no full-size intermediate).

    Equal to ``param.copy_(tp_slice(rule, to_mcore(rule, tensors, ...), tp, rank))``, which the tests
    check, but without allocating the concatenated tensor: import time and peak memory stay near the
    parameter itself.
    """
    import torch

    with torch.no_grad():
        if rule.kind == "copy":
            src = tensors[0] if rule.tp_axis is None or tp == 1 else tensors[0].chunk(tp, dim=rule.tp_axis)[rank]
            param.copy_(src)
        elif rule.kind == "vocab":
            rows, t = param.shape[0], tensors[0]
            start = rank * rows
            real = max(0, min(rows, t.shape[0] - start))
            param[:real].copy_(t[start:start + real])
            param[real:].zero_()
        elif rule.kind == "gate_up":
            half = param.shape[0] // 2
            param[:half].copy_(tensors[0].chunk(tp, dim=0)[rank])
            param[half:].copy_(tensors[1].chunk(tp, dim=0)[rank])
        else:  # qkv
            g, d = shape.num_query_groups, shape.kv_channels
            per, local = shape.num_attention_heads // g, shape.num_query_groups // tp
            rest = tuple(param.shape[1:])
            view = param.view(local, per + 2, d, *rest)
            groups = slice(rank * local, (rank + 1) * local)
            q, k, v = tensors
            view[:, :per].copy_(q.reshape(g, per, d, *rest)[groups])
            view[:, per].copy_(k.reshape(g, d, *rest)[groups])
            view[:, per + 1].copy_(v.reshape(g, d, *rest)[groups])


def row_sources(rule: Rule, rows: int, hf_rows: int, tp: int, rank: int) -> list[tuple[int, int, int, int]] | None:
    """Where this TP rank's parameter rows come from when each is a whole row of one HF tensor:
    ``(first parameter row, row count, index into rule.hf, first HF row)`` per run of rows; rows not
    covered are zeros (vocab padding). None for rules that need a transform (QKV interleave, a split
    along columns). Same result as ``fill``, which the tests check; lets the import read (or map) the
    bytes of the HF file straight into place.

    ``rows``: the parameter's first dimension on this rank; ``hf_rows``: the HF tensor's."""
    if rule.kind == "copy" and (rule.tp_axis is None or tp == 1):
        return [(0, rows, 0, 0)]
    if rule.kind == "copy" and rule.tp_axis == 0:
        return [(0, rows, 0, rank * rows)]
    if rule.kind == "vocab":
        real = max(0, min(rows, hf_rows - rank * rows))
        return [(0, real, 0, rank * rows)] if real else []
    if rule.kind == "gate_up":
        half = rows // 2
        return [(0, half, 0, rank * half), (half, half, 1, rank * half)]
    return None
