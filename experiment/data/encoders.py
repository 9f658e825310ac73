"""Which encoder a run uses: a fast backend that passes the reference's probe, else the reference.

The *reference* of a tokenizer is its own library: ``sentencepiece`` for a ``.model`` file, HF
``tokenizers`` for a ``tokenizer.json`` (alone or in a Hugging Face folder). ``gigatoken`` is the
fast backend: it is used only when it reproduces the reference on a probe of tricky strings (and
``tokenize`` re-checks the first documents of every input). Otherwise the reference runs.

Literal special-token strings in the text are plain text in every backend; the probe holds every added
token inside ordinary text to prove it. The backends' modules are imported here, so that their
``@register`` has run before any choice: the references first, then the fast backends in ``auto``'s order.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiment.data import gigatoken_encoder  # noqa: F401  (registers it, after the references)
from experiment.data.encoder_base import (
    Encoder,
    backend_choices,
    dist_version,
    fast_backends,
    reference_class,
)
from experiment.data.errors import DataError
from experiment.data.reference_encoders import tokenizer_json
from experiment.data.tokenizer_spec import TokenizerSpec

# Strings where tokenizer implementations tend to differ: whitespace runs, control and special-token
# look-alikes, byte fallback, CJK, full-width forms, combining marks, emoji, code.
PROBE_TEXTS = (
    "Hello world", " leading space", "trailing space ", "  two  spaces   three", "\ttab\tand\nnewline\n\n",
    "<s> </s> <unk> <pad> <|endoftext|> <|im_start|>user<|im_end|> [INST] [/INST] <|begin_of_text|>",
    "a<s>b</s>c<|endoftext|>d", "\x00\x01\x1f\x7f control", "\u200b\u200d\ufeff zero width", "e\u0301 combining",
    "日本語のテキストです。全角　スペース", "ｆｕｌｌ　ｗｉｄｔｈ　①②③", "한국어 텍스트", "Ελληνικά κείμενο", "עברית",
    "emoji 🤗🦀👩‍👩‍👧 flags 🇯🇵", "def f(x):\n    return x ** 2  # comment\r\n", "1234567890 3.14159 1e-9",
    "http://example.com/a?b=c&d=e", "a" * 300, " " * 17, "\n" * 5, "’“”—…", "İstanbul ǅ ß ﬁ",
)


def reference_encoder(spec: TokenizerSpec, threads: int | None = None) -> Encoder:
    return reference_class(spec.kind).load(spec, None, threads, None)


def same_ids(a: Encoder, b: Encoder, texts: list[str]) -> list[int]:
    """Indices of texts where the two encoders disagree (empty list: identical)."""
    fa, oa = a.encode_texts(texts)
    fb, ob = b.encode_texts(texts)
    return [
        i for i in range(len(texts))
        if not np.array_equal(fa[oa[i] : oa[i + 1]], fb[ob[i] : ob[i + 1]])
    ]


class SpotSample:
    """The leading texts of an input that the reference re-encodes (the spot check): the longest run of
    at most ``most`` texts whose characters add up to at most ``chars``, and at least one. Fed one
    non-empty text at a time, so the block reader and the whole-file line check take the same sample."""

    def __init__(self, chars: int = 16_000, most: int = 256) -> None:
        self.texts: list[str] = []
        self.wanted = chars > 0 and most > 0
        self._room, self._most = chars, most

    def offer(self, text: str) -> bool:
        """Consider the next text; False once the sample is complete."""
        if self.wanted:
            self._room -= len(text)
            if self._room >= 0 or not self.texts:
                self.texts.append(text)
            self.wanted = self._room > 0 and len(self.texts) < self._most
        return self.wanted


def differing_ids(reference: Encoder, texts: list[str], flat: np.ndarray, offsets: np.ndarray) -> list[int]:
    """Indices of the leading ``texts`` whose ids in (``flat``, ``offsets``), from another encoder, are
    not the reference's (empty list: identical). Only the reference encodes here."""
    rf, ro = reference.encode_texts(texts)
    n = len(texts)
    if np.array_equal(np.diff(ro), np.diff(offsets[: n + 1])) and np.array_equal(rf, flat[offsets[0] : offsets[n]]):
        return []
    return [i for i in range(n) if not np.array_equal(rf[ro[i] : ro[i + 1]], flat[offsets[i] : offsets[i + 1]])]


@dataclass
class LoadedEncoder:
    """The encoder to run, the reference it was checked against, and why this backend was chosen."""

    encoder: Encoder
    reference: Encoder
    spec: TokenizerSpec
    note: str


def load_encoder(spec: TokenizerSpec, backend: str = "auto", threads: int | None = None, cache_dir: Path | None = None) -> LoadedEncoder:
    """Build the encoder for ``backend`` (auto: gigatoken if it matches the reference on the probe).

    Cached per (tokenizer files' hash, backend): loading and probing costs seconds, and one process
    (the demo, the tests) tokenizes several times with the same tokenizer.
    """
    return _load_encoder(spec, spec.sha256(), backend, threads, cache_dir)


@functools.lru_cache(maxsize=8)
def _load_encoder(spec: TokenizerSpec, sha256: str, backend: str, threads: int | None, cache_dir: Path | None) -> LoadedEncoder:
    choices = backend_choices()
    if backend not in choices:
        raise DataError(spec.path, f"unknown backend {backend!r}", f"use one of {', '.join(choices)}")
    reference = reference_encoder(spec, threads)
    if backend == "reference":
        return LoadedEncoder(reference, reference, spec, f"{reference.backend} (reference, as asked)")
    why_not = []
    for cls in fast_backends():
        if backend not in ("auto", cls.backend):
            continue
        try:
            fast = cls.load(spec, reference, threads, cache_dir)
        except Exception as err:  # gigatoken refuses some vocabularies (e.g. missing byte tokens)
            if backend == cls.backend:
                raise DataError(spec.model_file, f"{cls.backend} cannot load this tokenizer: {err}", "use --backend reference") from None
            why_not.append(f"{cls.backend} cannot load it: {str(err).splitlines()[0]}")
            continue
        bad = _probe(fast, reference, spec, cache_dir)
        if bad is None:
            return LoadedEncoder(fast, reference, spec, f"{cls.backend} (ids identical to {reference.backend} on the probe)")
        if backend == cls.backend:
            raise DataError(spec.model_file, f"{cls.backend} ids differ from {reference.backend} on {bad[0]!r}", "use --backend reference")
        why_not.append(f"{cls.backend} differs on {len(bad)} probe texts")
    return LoadedEncoder(reference, reference, spec, f"{reference.backend} ({'; '.join(why_not) or 'no fast backend'})")


def _probe(fast: Encoder, reference: Encoder, spec: TokenizerSpec, cache_dir: Path | None) -> list[str] | None:
    """The probe texts where ``fast`` and ``reference`` disagree, None if none. A pass is remembered in
    ``cache_dir`` under the tokenizer's hash and both libraries' versions, so later runs skip it."""
    mark = None
    if cache_dir is not None:
        versions = "-".join(_backend_version(e.backend) for e in (fast, reference))
        key = hashlib.sha256(f"{spec.sha256()}|{fast.backend}|{reference.backend}|{versions}|{PROBE_TEXTS!r}".encode()).hexdigest()
        mark = cache_dir / f"probe-passed-{key[:32]}"
        if mark.is_file():
            return None
    probe = list(PROBE_TEXTS) + _added_token_probe(spec)
    bad = same_ids(fast, reference, probe)
    if bad:
        return [probe[i] for i in bad]
    if mark is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            mark.touch()
        except OSError:
            pass  # a read-only cache only costs time
    return None


def _backend_version(name: str) -> str:
    try:
        return dist_version(name)
    except Exception:
        return "unknown"


def _added_token_probe(spec: TokenizerSpec) -> list[str]:
    """Every added token's string inside ordinary text, to prove they are encoded as text."""
    if spec.kind == "sentencepiece":
        return []
    added = json.loads(tokenizer_json(spec)).get("added_tokens") or []
    return [f"x {t['content']} y{t['content']}z" for t in added[:200]]
