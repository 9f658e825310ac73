"""Build small training folders and data signatures for the mixture tests."""

from __future__ import annotations

import json
from pathlib import Path

from experiment.data.naming import parse
from experiment.data.signature import DataSignature, ShardEntry, TokenizerInfo

TOML = """
name = "mix-test"
[data]
signatures = ["sig.json"]
data_ratio = "data_ratio.json"
{data_extra}
[model]
preset = "tiny"
seq_length = {seq_length}
[training]
{training}
[checkpoint]
from_scratch = true
"""


def signature(shards: list[tuple[str, int]], root: str = "shards", sizes: dict[str, tuple[int, int]] | None = None
              ) -> DataSignature:
    """A signature listing ``(name, tokens)`` shards; language/domain parsed from the names."""
    entries = []
    for name, tokens in shards:
        n = parse(name)
        b, i = (sizes or {}).get(name, (tokens * 2, 34))
        entries.append(ShardEntry(prefix=name, language=n.language, domain=n.domain, subdomain=n.subdomain,
                                  docs=n.docs or 1, sentences=n.sentences or 1, tokens=tokens, bin_bytes=b,
                                  idx_bytes=i, bin_hash=None, idx_hash=None, dtype="uint16"))
    tok = TokenizerInfo(kind="sentencepiece", name="t.model", sha256="0" * 64, vocab_size=32000, eod_id=2)
    return DataSignature(name="test", root=root, tokenizer=tok, shards=entries)


def name(lang: str, domain: str, i: int, tokens: int, sub: str = "sub") -> str:
    return f"{lang}_{domain}_{sub}_split_{i:05d}_text_document_dc={max(tokens // 100, 1)}_sc={max(tokens // 10, 1)}_tc={tokens}"


def folder(tmp: Path, shards: list[tuple[str, int]], data_ratio, *, lang_prob=None, exclude=None,
           data_extra: str = "", training: str = "train_iters = 100\nglobal_batch_size = 8",
           seq_length: int = 64, sig: DataSignature | None = None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    extra = data_extra
    if lang_prob is not None:
        (tmp / "lang_prob.json").write_text(json.dumps(lang_prob))
        extra += '\nlang_prob = "lang_prob.json"'
    if exclude is not None:
        (tmp / "exclude_iterator.json").write_text(json.dumps(exclude))
        extra += '\nexclude_iterator = "exclude_iterator.json"'
    (tmp / "experiment.toml").write_text(TOML.format(data_extra=extra, training=training, seq_length=seq_length))
    (tmp / "data_ratio.json").write_text(json.dumps(data_ratio))
    (tmp / "sig.json").write_text((sig or signature(shards)).to_json())
    return tmp


def write_shard(prefix: Path, docs: list) -> tuple[int, int]:
    """Write a real Megatron .bin/.idx pair with megatron.core's IndexedDatasetBuilder; returns their sizes."""
    import numpy
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.uint16)
    for doc in docs:
        builder.add_document(torch.as_tensor(numpy.asarray(doc, dtype=numpy.int64)), [len(doc)])
    builder.finalize(f"{prefix}.idx")
    return Path(f"{prefix}.bin").stat().st_size, Path(f"{prefix}.idx").stat().st_size
