"""The mapping's pure parts: transforms invert, the per-rank fill equals slicing the full tensor, config errors."""

from __future__ import annotations

import pytest
import torch

from experiment.ckpt import mapping
from experiment.ckpt.meta import CheckpointError
from experiment.model.presets import ModelShape

SHAPE = ModelShape(num_layers=2, hidden_size=48, ffn_hidden_size=64, num_attention_heads=6, num_query_groups=2,
                   vocab_size=1000, max_position_embeddings=64, qkv_bias=True)


def _hf(rule, shape, gen):
    h, d, f = shape.hidden_size, shape.kv_channels, shape.ffn_hidden_size
    q, kv = shape.num_attention_heads * d, shape.num_query_groups * d
    dims = {"q_proj.weight": (q, h), "k_proj.weight": (kv, h), "v_proj.weight": (kv, h), "q_proj.bias": (q,),
            "k_proj.bias": (kv,), "v_proj.bias": (kv,), "o_proj.weight": (h, q), "gate_proj.weight": (f, h),
            "up_proj.weight": (f, h), "down_proj.weight": (h, f), "embed_tokens.weight": (shape.vocab_size, h),
            "lm_head.weight": (shape.vocab_size, h)}
    out = []
    for name in rule.hf:
        key = ".".join(name.split(".")[-2:])
        out.append(torch.randn(dims.get(key, (h,)), generator=gen))
    return out


@pytest.mark.parametrize("tp", [1, 2])
def test_fill_equals_slice_of_full_and_export_inverts(tp):
    gen = torch.Generator().manual_seed(0)
    padded = 1024 * tp
    for rule in mapping.rules_for(SHAPE.model_copy(update={"tie_embeddings": False})):
        hf = _hf(rule, SHAPE, gen)
        full = mapping.to_mcore(rule, hf, SHAPE, padded)
        back = mapping.from_mcore(rule, full, SHAPE, SHAPE.vocab_size)
        assert all(torch.equal(a, b) for a, b in zip(hf, back)), rule.mcore
        for rank in range(tp):
            want = mapping.tp_slice(rule, full, tp, rank)
            param = torch.full_like(want, float("nan"))
            mapping.fill(rule, hf, param, SHAPE, tp, rank)
            assert torch.equal(param, want), (rule.mcore, rank)
            runs = mapping.row_sources(rule, want.shape[0], hf[0].shape[0], tp, rank)
            if runs is not None:  # the row-copy description the import reads with, same result
                param = torch.zeros_like(want)
                for row, n, which, hf_row in runs:
                    param[row:row + n] = hf[which][hf_row:hf_row + n]
                assert torch.equal(param, want), (rule.mcore, rank, runs)


def test_qkv_layout_is_grouped_per_kv_head():
    """Megatron's fused QKV: for each KV group, its query heads, then its key, then its value."""
    rule = next(r for r in mapping.RULES if r.kind == "qkv" and r.when == "always")
    d, g, per = SHAPE.kv_channels, SHAPE.num_query_groups, SHAPE.num_attention_heads // SHAPE.num_query_groups
    q = torch.arange(SHAPE.num_attention_heads * d).float().unsqueeze(1)
    k, v = -1 - torch.arange(g * d).float().unsqueeze(1), 1000 + torch.arange(g * d).float().unsqueeze(1)
    fused = mapping.to_mcore(rule, [q, k, v], SHAPE, 0)
    rows = (per + 2) * d
    assert torch.equal(fused[:per * d], q[:per * d])
    assert torch.equal(fused[per * d:(per + 1) * d], k[:d]) and torch.equal(fused[(per + 1) * d:rows], v[:d])
    assert torch.equal(fused[rows:rows + per * d], q[per * d:2 * per * d])


@pytest.mark.parametrize("change,message", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "'yarn' is not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 2.0}},
     "low_freq_factor' = 2.0"),
    ({"head_dim": 32}, "field 'head_dim' = 32 differs"),
    ({"hidden_act": "gelu"}, "field 'hidden_act' = 'gelu'"),
    ({"attention_bias": True}, "'attention_bias' = true"),
    ({"num_hidden_layers": None}, "num_hidden_layers"),
])
def test_config_errors_name_the_field(change, message):
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}
    config.update(change)
    if change.get("num_hidden_layers", 0) is None:
        del config["num_hidden_layers"]
    with pytest.raises(CheckpointError, match=message):
        mapping.shape_from_config(config, "config.json")


def test_llama3_rope_scaling_read_from_both_config_styles():
    base = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": 100}
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    _, new = mapping.shape_from_config({**base, "rope_parameters": {**scaling, "rope_theta": 500000.0}}, "c")
    _, old = mapping.shape_from_config({**base, "rope_theta": 500000.0, "rope_scaling": scaling}, "c")
    assert new == old and new.rope_scaling == "llama3" and new.rope_scaling_factor == 32.0 and new.rope_theta == 5e5


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_config_from_shape_round_trips(family):
    """A from-scratch checkpoint (no HF config recorded) exports a config that maps back to its shape."""
    shape = SHAPE.model_copy(update={"qkv_bias": family == "qwen2", "rope_scaling": "llama3", "rope_theta": 5e5})
    if family == "qwen2":
        shape = shape.model_copy(update={"rope_scaling": "none"})
    _, back = mapping.shape_from_config(mapping.config_from_shape(shape, family), "config.json")
    assert back == shape


@pytest.mark.parametrize("family", sorted(mapping.FAMILY_NAMES))
def test_family_shapes_are_those_of_the_transformers_model(family):
    """The one shape table (the rules' named dimensions) gives exactly the tensors transformers builds for
    the family, and each Megatron tensor is the rows of its Hugging Face parts."""
    import torch
    import transformers

    from experiment.model.presets import PRESETS

    fam = mapping.FAMILY_NAMES[family]
    shape = PRESETS["tiny"].model_copy(update={"qkv_bias": fam.qkv_bias, "tie_embeddings": False})
    config = transformers.AutoConfig.for_model(**{**mapping.config_from_shape(shape, family),
                                                  "attention_bias": fam.qkv_bias})
    with torch.device("meta"):
        model = getattr(transformers, fam.architecture)(config)
    built = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    if family == "qwen2":  # Qwen2 has q/k/v biases but no o_proj bias
        assert not any(k.endswith("o_proj.bias") for k in built)
    assert mapping.expected_hf_shapes(shape) == built
    for rule in fam.rules_for(shape):
        parts = rule.hf_shapes(shape)
        assert rule.ckpt_shape(shape, 512)[1:] == parts[0][1:]
