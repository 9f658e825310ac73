"""The ``Encoder`` interface every tokenizer backend implements, and the registry of backends.

Every backend is an ``Encoder`` subclass in one registry (``register``): the reference backend of each
tokenizer kind, and the fast backends ``auto`` tries in order. A new backend is one registered class (its
module imported by ``experiment.data.encoders``); nothing else dispatches on the type of an encoder.
Encoding in chunks for a progress bar is here, once for every backend.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from experiment.data.errors import DataError
from experiment.data.tokenizer_spec import FIX_TOKENIZER, TokenizerSpec

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
    raise DataError(kind, f"no reference backend for tokenizers of kind {kind!r}", FIX_TOKENIZER)


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


def dist_version(name: str) -> str:
    """The installed version of a package (a backend's library: part of the cache keys)."""
    from importlib.metadata import version

    return version(name)
