"""The reference backends: each tokenizer kind's own library (sentencepiece, HF tokenizers).

Their ids are the ones every fast backend must reproduce. Literal special-token strings in the text
(``<s>``, ``</s>``, ``<|endoftext|>``) are plain text: sentencepiece never maps them to control ids; for
``tokenizers`` we set ``encode_special_tokens = True``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from experiment.data.encoder_base import Encoder, register
from experiment.data.errors import DataError
from experiment.data.tokenizer_spec import FIX_TOKENIZER, TokenizerSpec

# Common end-of-document tokens, tried in order when no tokenizer_config.json names the eos token.
_EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>")


def _as_list(texts) -> list[str]:
    return texts if isinstance(texts, list) else texts.to_pylist()


def _flatten(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for r in rows for t in r), dtype=np.uint32, count=int(offsets[-1]))
    return flat, offsets


@register
class SentencePieceEncoder(Encoder):
    backend = "sentencepiece"
    reference_for = ("sentencepiece",)

    @classmethod
    def load(cls, spec, reference=None, threads=None, cache_dir=None):
        return cls(spec, threads)

    def __init__(self, spec: TokenizerSpec, threads: int | None = None) -> None:
        import sentencepiece as spm

        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(spec.model_file))
        except Exception as err:  # sentencepiece raises RuntimeError/OSError on bad files
            raise DataError(spec.model_file, f"not a SentencePiece model ({err})", FIX_TOKENIZER) from None
        self.vocab_size = self.sp.vocab_size()
        self.threads = threads or os.cpu_count() or 1
        if spec.eod_token is not None:
            self.eod_id = self.sp.piece_to_id(spec.eod_token)
            if self.sp.id_to_piece(self.eod_id) != spec.eod_token:
                raise DataError(spec.model_file, f"EOD token {spec.eod_token!r} is not in the vocabulary", "pass an existing token to --eod-token")
        else:
            self.eod_id = self.sp.eos_id()
            if self.eod_id < 0:
                raise DataError(spec.model_file, "the model defines no eos piece to use as EOD", "pass --eod-token")

    def encode_texts(self, texts) -> tuple[np.ndarray, np.ndarray]:
        return _flatten(self.sp.encode(_as_list(texts), num_threads=self.threads))


def tokenizer_json(spec: TokenizerSpec) -> str:
    try:
        raw = spec.model_file.read_text(encoding="utf-8")
        json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(spec.model_file, f"not a tokenizer.json ({err})", FIX_TOKENIZER) from None
    return raw


def _eod_from_json(spec: TokenizerSpec, config: dict, token_to_id) -> int:
    wanted = spec.eod_token
    if wanted is None:
        cfg_file = spec.model_file.parent / "tokenizer_config.json"
        if cfg_file.is_file():
            eos = json.loads(cfg_file.read_text()).get("eos_token")
            wanted = eos.get("content") if isinstance(eos, dict) else eos
    candidates = [wanted] if wanted else list(_EOS_CANDIDATES)
    for token in candidates:
        token_id = token_to_id(token)
        if token_id is not None:
            return token_id
    raise DataError(
        spec.model_file, f"cannot tell the end-of-document token (tried {', '.join(candidates)})",
        "pass --eod-token with the tokenizer's eos token",
    )


@register
class TokenizersEncoder(Encoder):
    backend = "tokenizers"
    reference_for = ("tokenizers", "hf")

    @classmethod
    def load(cls, spec, reference=None, threads=None, cache_dir=None):
        return cls(spec, threads)

    def __init__(self, spec: TokenizerSpec, threads: int | None = None) -> None:
        from tokenizers import Tokenizer

        raw = tokenizer_json(spec)
        try:
            self.tk = Tokenizer.from_str(raw)
        except Exception as err:
            raise DataError(spec.model_file, f"the tokenizers library cannot load it ({err})", FIX_TOKENIZER) from None
        self.tk.encode_special_tokens = True  # literal "<s>" in text is text, not a control token
        self.vocab_size = self.tk.get_vocab_size(with_added_tokens=True)
        self.eod_id = _eod_from_json(spec, json.loads(raw), self.tk.token_to_id)

    def encode_texts(self, texts) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tk.encode_batch_fast(_as_list(texts), add_special_tokens=False)
        return _flatten([e.ids for e in encodings])
