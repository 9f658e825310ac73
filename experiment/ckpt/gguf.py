"""GGUF files as an import source: dequantize once into a plain Hugging Face folder, then convert that.

``transformers`` reads GGUF (``from_pretrained(dir, gguf_file=...)``, dequantized to fp32, tokenizer
included) but refuses to ``save_pretrained`` such a model, so its state dict is copied into a fresh
model built from the same config and saved as safetensors. The result is cached under a folder the
caller names, written through a temporary name and renamed, so a killed run is simply re-run.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from experiment.ckpt.meta import CheckpointError

DONE_MARKER = ".materialized"


def materialize(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Dequantize ``gguf_file`` into a Hugging Face folder at ``out_dir`` (safetensors + config + tokenizer).

    Skips the work when ``out_dir`` is already complete; never leaves a half-written ``out_dir``.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if (out_dir / DONE_MARKER).is_file():
        return out_dir
    if not gguf_file.is_file():
        raise CheckpointError(f"{gguf_file}: no such GGUF file; fix: check the path")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(
            f"{out_dir}: exists but is not a finished GGUF materialization (no {DONE_MARKER}); "
            "fix: delete it or pick another cache folder"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    src_dir, name = str(gguf_file.parent), gguf_file.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    except Exception as err:  # transformers raises many types for unreadable GGUF
        raise CheckpointError(f"{gguf_file}: transformers cannot read it as GGUF ({err}); fix: use a Llama-family GGUF") from err
    config = AutoConfig.for_model(**loaded.config.to_dict())
    config.architectures = [type(loaded).__name__]
    fresh = type(loaded)(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise CheckpointError(f"{gguf_file}: tensors do not match {type(loaded).__name__}: missing {missing}, unexpected {unexpected}")
    del loaded
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE_MARKER).write_text(f"{gguf_file.name}\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir

