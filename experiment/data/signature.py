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


def read_signature(path: str | Path) -> DataSignature:
    return DataSignature.model_validate_json(Path(path).read_text())


# --- building a signature -------------------------------------------------------------------------

def build(shard_dir: str | Path, name: str, out_dir: str | Path, tokenizer: TokenizerInfo, algorithm: str = "blake3") -> DataSignature:
    """Describe every counted shard in ``shard_dir`` (counts from megatron.core, hashes of the bytes).

    ``root`` is stored relative to the signature file when possible, so a repository that holds both
    moves as one. A shard whose name's counts disagree with its contents is refused (run ``count``).
    """
    from experiment.data import naming, shards
    from experiment.data.errors import DataError

    shard_dir, out_dir = Path(shard_dir).resolve(), Path(out_dir).resolve()
    prefixes = shards.find_prefixes([shard_dir])
    if not prefixes:
        raise DataError(shard_dir, "no .bin/.idx pairs found", "tokenize first, or give the folder that holds the shards")
    from experiment.hashing import hash_paths, normalize_algorithm

    try:
        normalize_algorithm(algorithm)
    except ValueError as err:
        raise DataError("--algorithm", str(err), "use blake3 (default) or xxh3") from None
    digests = hash_paths([f"{p}{ext}" for p in prefixes for ext in (".bin", ".idx")], algorithm)  # all files at once
    entries = []
    for prefix in prefixes:
        try:
            parsed = naming.parse(prefix.name)
        except naming.ShardNameError as err:
            raise DataError(f"{prefix}.idx", str(err), "run `experiment data count` on the folder first") from None
        info = shards.read_shard(prefix)
        c = info.counts
        if (parsed.docs, parsed.sentences, parsed.tokens) != (c.docs, c.sentences, c.tokens):
            raise DataError(
                f"{prefix}.idx", f"the name says dc={parsed.docs} sc={parsed.sentences} tc={parsed.tokens}, the data has "
                f"dc={c.docs} sc={c.sentences} tc={c.tokens}", "run `experiment data count` on the folder",
            )
        entries.append(ShardEntry(
            prefix=prefix.name, language=parsed.language, domain=parsed.domain, subdomain=parsed.subdomain,
            docs=c.docs, sentences=c.sentences, tokens=c.tokens, bin_bytes=info.bin_bytes, idx_bytes=info.idx_bytes,
            bin_hash=digests[f"{prefix}.bin"], idx_hash=digests[f"{prefix}.idx"], dtype=info.dtype,
        ))
    import os

    root = os.path.relpath(shard_dir, out_dir) if shard_dir.anchor == out_dir.anchor else str(shard_dir)
    return DataSignature(name=name, root=root, hash_algorithm=algorithm, tokenizer=tokenizer, shards=entries)


def write(signature: DataSignature, out_dir: str | Path) -> Path:
    """Write ``out_dir/<name>.json`` atomically (``experiment.atomic.write_atomic``)."""
    from experiment.atomic import write_atomic

    path = Path(out_dir) / f"{signature.name}.json"
    write_atomic(path, signature.to_json())
    return path
