"""Which tokenizer a path names: its kind, the files that define it, and their hash.

One path (a Hugging Face folder, a tokenizer.json or a SentencePiece ``.model``) is resolved once into a
``TokenizerSpec``: every backend loads from it, and its hash names the tokenizer in the shard folder's
record, the signatures and the caches (the converted tokenizer.json, a passed probe).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from experiment.data.errors import DataError

FIX_TOKENIZER = "give a Hugging Face tokenizer folder, a tokenizer.json, or a SentencePiece .model file"


@dataclass(frozen=True)
class TokenizerSpec:
    """Where a tokenizer lives and what kind it is, resolved from one path."""

    path: Path
    kind: str  # "sentencepiece" | "tokenizers" | "hf"
    model_file: Path  # the .model or tokenizer.json actually loaded
    files: tuple[Path, ...] = field(default=())  # every file that defines it (hashed)
    eod_token: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def sha256(self) -> str:
        """Hash of the tokenizer's files (computed once per spec: the run asks for it several times)."""
        return self._sha256

    @functools.cached_property
    def _sha256(self) -> str:
        digest = hashlib.sha256()
        for file in sorted(self.files, key=lambda p: p.name):
            digest.update(file.name.encode() + b"\0")
            digest.update(file.read_bytes())
        return digest.hexdigest()


def resolve_tokenizer(path: str | Path, eod_token: str | None = None) -> TokenizerSpec:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "tokenizer not found", FIX_TOKENIZER)
    if path.is_dir():
        extra = [path / n for n in ("tokenizer_config.json", "special_tokens_map.json") if (path / n).is_file()]
        if (path / "tokenizer.json").is_file():
            return TokenizerSpec(path, "hf", path / "tokenizer.json", (path / "tokenizer.json", *extra), eod_token)
        if (path / "tokenizer.model").is_file():
            return TokenizerSpec(path, "sentencepiece", path / "tokenizer.model", (path / "tokenizer.model",), eod_token)
        raise DataError(path, "folder holds neither tokenizer.json nor tokenizer.model", FIX_TOKENIZER)
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    if path.suffix == ".json" or head.startswith(b"{"):
        return TokenizerSpec(path, "tokenizers", path, (path,), eod_token)
    if ".model" in path.suffixes or head[:1] == b"\n":  # a SentencePiece ModelProto starts with field 1
        return TokenizerSpec(path, "sentencepiece", path, (path,), eod_token)
    raise DataError(path, "unknown tokenizer file type (neither tokenizer.json nor SentencePiece model)", FIX_TOKENIZER)
