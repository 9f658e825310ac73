"""The fast backend: gigatoken's Rust encoder, the tokenizer.json it loads and its own JSONL reader.

It is used only when it reproduces the reference on the probe (``experiment.data.encoders``). Literal
special-token strings stay text, as in the references: gigatoken loads the tokenizer.json without its
special added tokens (non-special added tokens stay, as in ``tokenizers``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from experiment.atomic import write_atomic
from experiment.data.encoder_base import Encoder, arrow_offsets, dist_version, register
from experiment.data.reference_encoders import tokenizer_json
from experiment.data.tokenizer_spec import TokenizerSpec


def _arrow_to_awkward(texts):
    """Zero-copy view of an Arrow string array's characters as the awkward string array gigatoken reads."""
    import awkward as ak

    offsets = arrow_offsets(texts)
    data_buf = texts.buffers()[2]
    chars = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    if len(offsets) and offsets[0]:  # a slice (a chunk): only its own characters, offsets from 0
        chars, offsets = chars[offsets[0] : offsets[-1]], offsets - offsets[0]
    layout = ak.contents.ListOffsetArray(
        ak.index.Index64(offsets),
        ak.contents.NumpyArray(chars, parameters={"__array__": "char"}),
        parameters={"__array__": "string"},
    )
    return ak.Array(layout)


@register
class GigatokenEncoder(Encoder):
    """The fast backend: gigatoken's Rust encoder, also reading whole JSONL files itself (``whole_files``)."""

    backend = "gigatoken"

    @classmethod
    def load(cls, spec, reference, threads=None, cache_dir=None):
        return cls(spec, reference, cache_dir)

    def __init__(self, spec: TokenizerSpec, reference: Encoder, cache_dir: Path | None = None) -> None:
        self.tok = gigatoken_tokenizer(spec, cache_dir)
        self.vocab_size = reference.vocab_size
        self.eod_id = reference.eod_id

    def encode_texts(self, texts) -> tuple[np.ndarray, np.ndarray]:
        batch = texts if isinstance(texts, list) else _arrow_to_awkward(texts)
        return _flat_offsets(self.tok.encode_batch(batch))

    def file_reader(self, key: str):
        return functools.partial(_encode_jsonl_with, self.tok, key)

    @classmethod
    def early_file_reader(cls, spec: TokenizerSpec, cache_dir: Path | None, key: str):
        try:
            tok = gigatoken_tokenizer(spec, cache_dir)
        except Exception:  # load_encoder says why (or falls back to the reference)
            return None
        return functools.partial(_encode_jsonl_with, tok, key)


def _encode_jsonl_with(tok, key: str, paths: list[Path]):
    return encode_jsonl(tok, paths, key)  # looked up at call time (tests wrap it)


def gigatoken_tokenizer(spec: TokenizerSpec, cache_dir: Path | None = None):
    """gigatoken's tokenizer for ``spec`` (special added tokens removed), built once per process."""
    return _gigatoken_tokenizer(spec, spec.sha256(), cache_dir)


@functools.lru_cache(maxsize=8)
def _gigatoken_tokenizer(spec: TokenizerSpec, sha256: str, cache_dir: Path | None):
    import gigatoken

    return gigatoken.Tokenizer.from_json(_gigatoken_json(spec, cache_dir))


def encode_jsonl(tok, paths: list[Path], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Every document of these JSONL files, read by gigatoken itself. Its reader is lenient, so the
    caller checks the lines (``whole_files``), and only uses these ids once ``tok`` passed the probe."""
    import gigatoken

    return _flat_offsets(tok.encode_files(gigatoken.JsonlFileSource([str(p) for p in paths], field=key)))


def _flat_offsets(batch) -> tuple[np.ndarray, np.ndarray]:
    """gigatoken's awkward result as (flat uint32 ids, int64 offsets from 0), without copies."""
    import awkward as ak

    layout = ak.to_layout(batch)
    offsets = np.asarray(layout.offsets.data, dtype=np.int64)
    flat = np.asarray(layout.content.data)
    if offsets[0] != 0:
        flat, offsets = flat[offsets[0] : offsets[-1]], offsets - offsets[0]
    return flat[: offsets[-1]], offsets


def _gigatoken_json(spec: TokenizerSpec, cache_dir: Path | None) -> str:
    """The tokenizer.json gigatoken loads: special added tokens removed (see module doc).

    Converting a SentencePiece ``.model`` (gigatoken's pure-Python protobuf reader) costs ~0.7 CPU-s, so
    the result is cached in ``cache_dir`` under the tokenizer's hash and gigatoken's version.
    """
    import gigatoken

    version = getattr(gigatoken, "__version__", None) or dist_version("gigatoken")
    cached = cache_dir / f"gigatoken-{spec.sha256()}-{version}.json" if cache_dir else None
    if cached is not None and cached.is_file():
        return cached.read_text(encoding="utf-8")
    if spec.kind == "sentencepiece":
        from gigatoken._load.sentencepiece import sentencepiece_to_tokenizer_json

        config = json.loads(sentencepiece_to_tokenizer_json(spec.model_file.read_bytes()))
    else:
        config = json.loads(tokenizer_json(spec))
    config["added_tokens"] = [t for t in config.get("added_tokens") or [] if not t.get("special")]
    text = json.dumps(config)
    if cached is not None:
        try:
            write_atomic(cached, text)
        except OSError:
            pass  # a read-only cache only costs time
    return text
