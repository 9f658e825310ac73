"""Data signature: the content-addressed list of shards a training folder trains on.

``data_signatures/<name>.json`` lists every shard prefix (relative to the signature's ``root``) with
its counts, byte sizes and content hashes of ``.bin`` and ``.idx``, plus the tokenizer's hash. The
mixture planner reads the counts; the lockfile and ``reproduce`` compare the hashes. Written as
canonical JSON (sorted keys, shards sorted by prefix) so the same inputs give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class TokenizerInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="sentencepiece | tokenizers | hf")
    name: str = Field(description="file or folder name of the tokenizer (no host path)")
    sha256: str = Field(description="hash of the tokenizer's files")
    vocab_size: int
    eod_id: int


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefix: str = Field(description="Megatron prefix relative to the signature root, without .bin/.idx")
    language: str
    domain: str
    subdomain: str
    docs: int = Field(ge=0)
    sentences: int = Field(ge=0)
    tokens: int = Field(ge=0)
    bin_bytes: int = Field(ge=0)
    idx_bytes: int = Field(ge=0)
    bin_hash: str | None = Field(
        default=None, description="content hash; None in a recipe's planned signature, before tokenizing"
    )
    idx_hash: str | None = None
    dtype: str


class DataSignature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str
    root: str = Field(description="folder holding the shards, relative to the signature file or absolute")
    hash_algorithm: str = "blake3"
    tokenizer: TokenizerInfo
    shards: list[ShardEntry]

    def root_path(self, signature_file: Path) -> Path:
        root = Path(self.root)
        return root if root.is_absolute() else (signature_file.parent / root).resolve()

    def to_json(self) -> str:
        data = self.model_dump()
        data["shards"] = sorted(data["shards"], key=lambda s: s["prefix"])
        return json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def read(path: str | Path) -> DataSignature:
    return DataSignature.model_validate_json(Path(path).read_text())
