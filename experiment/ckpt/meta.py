"""``kit_checkpoint.json``: what a kit checkpoint folder is, beside the Megatron shards.

A kit checkpoint folder looks like Megatron-LM's (``iter_0000001/`` + ``latest_checkpointed_iteration.txt``)
plus this file and ``tokenizer/``. The file records everything Megatron's shards do not: the model shape
(so the training runner and export build the same GPTModel), the padded and original vocab sizes (so
export undoes Megatron's TP padding), the Hugging Face family/config to restore, and the source's hash.

Readers use ``read_meta(ckpt_dir)``; the training runner needs only ``.shape`` and ``.padded_vocab_size``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from experiment.atomic import write_atomic
from experiment.errors import KitError
from experiment.model.presets import ModelShape

META_NAME = "kit_checkpoint.json"
LATEST_NAME = "latest_checkpointed_iteration.txt"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1


class CheckpointError(KitError):
    """A checkpoint folder or conversion input is not usable; the message names the file and the fix."""


class CheckpointMeta(BaseModel):
    """Contents of ``kit_checkpoint.json``."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    shape: ModelShape
    vocab_size: int = Field(description="the tokenizer's vocabulary (HF config vocab_size), before padding")
    padded_vocab_size: int = Field(description="rows of the embedding/output tables in the Megatron shards")
    family: str = Field(description="mapping family, e.g. 'llama', 'mistral', 'qwen2' (experiment.ckpt.mapping)")
    hf_architecture: str = Field(description="HF config 'architectures[0]', e.g. 'LlamaForCausalLM'")
    hf_config: dict[str, Any] = Field(description="the source config.json, restored verbatim on export")
    dtype: str = Field(description="torch dtype of the weights as stored, e.g. 'float32', 'bfloat16'")
    source: str = Field(description="the HF folder or .gguf file that was imported")
    source_hash: str = Field(description="blake3 of the source weight files (name, size, content)")
    saved_layout: dict[str, int] = Field(
        default_factory=lambda: {"tensor_parallel": 1, "pipeline_parallel": 1},
        description="TP/PP the import ran with (any layout can load the checkpoint)",
    )
    has_tokenizer: bool = False

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def read_meta(ckpt_dir: str | Path) -> CheckpointMeta:
    """The metadata of a kit checkpoint folder; a clear ``CheckpointError`` if it is not one."""
    path = Path(ckpt_dir) / META_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing -- {ckpt_dir} is not a kit checkpoint folder; "
            "fix: create it with `experiment ckpt import HF_DIR OUT_DIR`"
        )
    try:
        return CheckpointMeta.model_validate_json(path.read_text())
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(
            f"{path}: field {field!r}: {first['msg']}; fix: re-run `experiment ckpt import` to rewrite it"
        ) from err


def write(ckpt_dir: str | Path, meta: CheckpointMeta) -> Path:
    """Write ``kit_checkpoint.json`` atomically (temporary name in the same folder, then rename)."""
    path = Path(ckpt_dir) / META_NAME
    write_atomic(path, meta.to_json())
    return path


def iteration_dirname(iteration: int) -> str:
    """Megatron-LM's name for a checkpoint iteration folder."""
    return f"iter_{iteration:07d}"


def latest_iteration(ckpt_dir: str | Path) -> int:
    """The iteration in ``latest_checkpointed_iteration.txt`` (Megatron-LM's marker)."""
    path = Path(ckpt_dir) / LATEST_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing -- {ckpt_dir} holds no Megatron checkpoint; "
            "fix: point at a folder written by `experiment ckpt import` or a training run"
        )
    text = path.read_text().strip()
    if text == "release":
        return 0
    try:
        return int(text)
    except ValueError as err:
        raise CheckpointError(f"{path}: {text!r} is not an iteration number; fix: write the last saved iteration") from err


def iteration_path(ckpt_dir: str | Path, iteration: int | None = None) -> Path:
    """``ckpt_dir/iter_XXXXXXX`` for ``iteration`` (default: the latest); it must exist."""
    ckpt_dir = Path(ckpt_dir)
    it = latest_iteration(ckpt_dir) if iteration is None else iteration
    path = ckpt_dir / ("release" if it == 0 and (ckpt_dir / "release").is_dir() else iteration_dirname(it))
    if not path.is_dir():
        have = sorted(p.name for p in ckpt_dir.glob("iter_*"))
        raise CheckpointError(
            f"{path}: no such checkpoint iteration; fix: pick one of {have or 'none (folder is empty)'}"
        )
    return path
