"""Tiny random Hugging Face models of each supported family, saved with a real tokenizer."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

# name -> (transformers config class, model class, config overrides)
FAMILIES = {
    # Llama 2: multi-head attention (kv heads = heads), untied
    "llama2": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4, tie_word_embeddings=False)),
    # Llama 3.1: GQA, rope theta 500k, llama3 rope scaling, untied
    "llama3.1": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=16384,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    # Llama 3.2 / SmolLM2: GQA, tied embeddings
    "llama3.2-tied": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_key_value_heads=2, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=False,
                                                            sliding_window=None)),
    # Qwen2: bias on q/k/v
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen2-tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True)),
}

BASE = dict(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=512, rms_norm_eps=1e-5, initializer_range=0.1)


def make_hf(family: str, out: Path, tokenizer_dir: Path, *, dtype: str = "float32", seed: int = 0, **overrides) -> Path:
    """A randomly initialised model of ``family`` saved with ``save_pretrained`` (+ tokenizer files).

    Norm weights and biases are randomised too, so a mapping that swapped or dropped one shows."""
    import torch
    import transformers

    cfg_cls, model_cls, extra = FAMILIES[family]
    config = getattr(transformers, cfg_cls)(**{**BASE, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out / f.name)
    return out


def real_text(limit: int = 6000) -> str:
    """English prose from the Python tutorial shipped by Debian's python3.11-doc, tags stripped."""
    page = Path("/usr/share/doc/python3.11/html/tutorial/controlflow.html").read_text(encoding="utf-8")
    body = re.sub(r"<script.*?</script>|<style.*?</style>", " ", page, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", " ", body))
    return " ".join(text.split())[2000:2000 + limit]
