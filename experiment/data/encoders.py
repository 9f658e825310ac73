"""Tokenizer backends behind one interface: texts in, (flat token ids, offsets) out.

The *reference* of a tokenizer is its own library: ``sentencepiece`` for a ``.model`` file, HF
``tokenizers`` for a ``tokenizer.json`` (alone or in a Hugging Face folder). ``gigatoken`` is the
fast backend: it is used only when it reproduces the reference on a probe of tricky strings (and
``tokenize`` re-checks the first documents of every input). Otherwise the reference runs.

Literal special-token strings in the text (``<s>``, ``</s>``, ``<|endoftext|>``) are plain text
everywhere: sentencepiece never maps them to control ids; for ``tokenizers`` we set
``encode_special_tokens = True``; for gigatoken we load the tokenizer.json without its special
added tokens (non-special added tokens stay, as in ``tokenizers``).

Every backend is an ``Encoder`` subclass in one registry (``register``): the reference backend of each
tokenizer kind, and the fast backends ``auto`` tries in order. A new backend is one class here; nothing
else dispatches on the type of an encoder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
import time
from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import numpy as np

from experiment.atomic import write_atomic
from experiment.data.errors import DataError

_FIX_TOKENIZER = "give a Hugging Face tokenizer folder, a tokenizer.json, or a SentencePiece .model file"
# Common end-of-document tokens, tried in order when no tokenizer_config.json names the eos token.
_EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>")

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
        raise DataError(path, "tokenizer not found", _FIX_TOKENIZER)
    if path.is_dir():
        extra = [path / n for n in ("tokenizer_config.json", "special_tokens_map.json") if (path / n).is_file()]
        if (path / "tokenizer.json").is_file():
            return TokenizerSpec(path, "hf", path / "tokenizer.json", (path / "tokenizer.json", *extra), eod_token)
        if (path / "tokenizer.model").is_file():
            return TokenizerSpec(path, "sentencepiece", path / "tokenizer.model", (path / "tokenizer.model",), eod_token)
        raise DataError(path, "folder holds neither tokenizer.json nor tokenizer.model", _FIX_TOKENIZER)
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    if path.suffix == ".json" or head.startswith(b"{"):
        return TokenizerSpec(path, "tokenizers", path, (path,), eod_token)
    if ".model" in path.suffixes or head[:1] == b"\n":  # a SentencePiece ModelProto starts with field 1
        return TokenizerSpec(path, "sentencepiece", path, (path,), eod_token)
    raise DataError(path, "unknown tokenizer file type (neither tokenizer.json nor SentencePiece model)", _FIX_TOKENIZER)


Progress = Callable[[int], None]  # called with the text bytes just encoded


class Encoder(ABC):
    """A tokenizer backend: texts in, (flat uint32 ids, int64 offsets of length n+1) out, EOD not added.

    ``reference_for``: the tokenizer kinds whose own library this backend is (the ids every other
    backend must reproduce). Backends without it are fast ones, used only after they pass the probe."""

    backend: ClassVar[str]
    reference_for: ClassVar[tuple[str, ...]] = ()
    vocab_size: int
    eod_id: int

    @classmethod
    @abstractmethod
    def load(cls, spec: TokenizerSpec, reference: "Encoder | None", threads: int | None, cache_dir: Path | None) -> "Encoder":
        """The backend for ``spec`` (``reference``: the loaded reference, for a fast backend's vocab and EOD)."""

    @abstractmethod
    def encode_texts(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of each text (a list of str, or an Arrow string array), in one call."""

    def encode(self, texts, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``encode_texts``; with ``progress``, in chunks timed to report about once a second (no backend
        offers a callback from inside one call)."""
        if progress is None:
            return self.encode_texts(texts)
        flat, offsets, self._chunk_bytes = _encode_in_chunks(self.encode_texts, texts, progress, getattr(self, "_chunk_bytes", None))
        return flat, offsets

    def file_reader(self, key: str) -> "Callable[[list[Path]], tuple[np.ndarray, np.ndarray]] | None":
        """A function encoding every document of whole JSONL files, read by the backend itself, or None."""
        return None

    @classmethod
    def early_file_reader(cls, spec: TokenizerSpec, cache_dir: Path | None, key: str):
        """``file_reader`` before the reference and the probe are loaded (its ids are used only if the
        probe then passes), or None."""
        return None


_REGISTRY: dict[str, type[Encoder]] = {}


def register(cls: type[Encoder]) -> type[Encoder]:
    """Add a backend to the registry (fast backends: ``auto`` tries them in registration order)."""
    _REGISTRY[cls.backend] = cls
    return cls


def fast_backends() -> list[type[Encoder]]:
    return [c for c in _REGISTRY.values() if not c.reference_for]


def backend_choices() -> tuple[str, ...]:
    """What ``--backend`` accepts: auto, reference, or a fast backend by name."""
    return ("auto", "reference", *(c.backend for c in fast_backends()))


def reference_class(kind: str) -> type[Encoder]:
    for cls in _REGISTRY.values():
        if kind in cls.reference_for:
            return cls
    raise DataError(kind, f"no reference backend for tokenizers of kind {kind!r}", _FIX_TOKENIZER)


# The first chunk is small so the first report comes early; then each chunk is sized from the rate so far.
_FIRST_CHUNK_BYTES = 2 << 20
_CHUNK_SECONDS = 0.9  # each gigatoken call costs ~0.05 CPU-s (bench/progress.py): fewer, longer chunks


def _text_ends(texts) -> np.ndarray:
    """Cumulative text size after each text (bytes for Arrow, characters for a list: only for sizing)."""
    if isinstance(texts, list):
        return np.cumsum(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)))
    offsets = arrow_offsets(texts)
    return offsets[1:] - offsets[0]


def _encode_in_chunks(encode, texts, progress: Progress, want: int | None):
    """(flat, offsets, the chunk size for next time): ``want`` is the size learnt on earlier blocks, so
    only a run's first chunk is small, and a block that takes under ``_CHUNK_SECONDS`` is one call (each
    call has a fixed cost: gigatoken's is ~0.05 CPU-s)."""
    n = len(texts)
    ends = _text_ends(texts)
    flats, offs = [], []
    start, done, want = 0, 0, want or _FIRST_CHUNK_BYTES
    while start < n:
        stop = max(start + 1, int(np.searchsorted(ends, done + want, side="right")))
        stop = min(stop, n)
        chunk = texts[start:stop] if isinstance(texts, list) else texts.slice(start, stop - start)
        t0 = time.perf_counter()
        flat, offsets = encode(chunk)
        seconds = time.perf_counter() - t0
        nbytes = int(ends[stop - 1]) - done
        flats.append(flat)
        offs.append(offsets)
        progress(nbytes)
        done += nbytes
        start = stop
        if seconds > 0:
            want = max(256 << 10, int(nbytes / seconds * _CHUNK_SECONDS))
    if len(flats) == 1:
        return flats[0], offs[0], want
    flat = np.concatenate(flats)
    offsets = np.zeros(n + 1, dtype=np.int64)
    pos, base = 1, 0
    for o in offs:
        offsets[pos : pos + len(o) - 1] = o[1:] + base
        pos += len(o) - 1
        base += int(o[-1])
    return flat, offsets, want


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
            raise DataError(spec.model_file, f"not a SentencePiece model ({err})", _FIX_TOKENIZER) from None
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


def _tokenizer_json(spec: TokenizerSpec) -> str:
    try:
        raw = spec.model_file.read_text(encoding="utf-8")
        json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(spec.model_file, f"not a tokenizer.json ({err})", _FIX_TOKENIZER) from None
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

        raw = _tokenizer_json(spec)
        try:
            self.tk = Tokenizer.from_str(raw)
        except Exception as err:
            raise DataError(spec.model_file, f"the tokenizers library cannot load it ({err})", _FIX_TOKENIZER) from None
        self.tk.encode_special_tokens = True  # literal "<s>" in text is text, not a control token
        self.vocab_size = self.tk.get_vocab_size(with_added_tokens=True)
        self.eod_id = _eod_from_json(spec, json.loads(raw), self.tk.token_to_id)

    def encode_texts(self, texts) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tk.encode_batch_fast(_as_list(texts), add_special_tokens=False)
        return _flatten([e.ids for e in encodings])


def arrow_offsets(texts) -> np.ndarray:
    """The int64 offsets (length n+1) of an Arrow string/large_string array into its data buffer, zero-copy
    for large_string (one small copy for string). Plain buffer access: no pyarrow.compute import."""
    import pyarrow as pa

    width = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    offsets_buf = texts.buffers()[1]
    if offsets_buf is None:  # an empty array may have no buffers
        return np.zeros(len(texts) + 1, dtype=np.int64)
    offsets = np.frombuffer(offsets_buf, dtype=width)[texts.offset : texts.offset + len(texts) + 1]
    return offsets.astype(np.int64, copy=False)


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

    version = getattr(gigatoken, "__version__", None) or _dist_version("gigatoken")
    cached = cache_dir / f"gigatoken-{spec.sha256()}-{version}.json" if cache_dir else None
    if cached is not None and cached.is_file():
        return cached.read_text(encoding="utf-8")
    if spec.kind == "sentencepiece":
        from gigatoken._load.sentencepiece import sentencepiece_to_tokenizer_json

        config = json.loads(sentencepiece_to_tokenizer_json(spec.model_file.read_bytes()))
    else:
        config = json.loads(_tokenizer_json(spec))
    config["added_tokens"] = [t for t in config.get("added_tokens") or [] if not t.get("special")]
    text = json.dumps(config)
    if cached is not None:
        try:
            write_atomic(cached, text)
        except OSError:
            pass  # a read-only cache only costs time
    return text


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


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
        return _dist_version(name)
    except Exception:
        return "unknown"


def _added_token_probe(spec: TokenizerSpec) -> list[str]:
    """Every added token's string inside ordinary text, to prove they are encoded as text."""
    if spec.kind == "sentencepiece":
        return []
    added = json.loads(_tokenizer_json(spec)).get("added_tokens") or []
    return [f"x {t['content']} y{t['content']}z" for t in added[:200]]
