"""Megatron indexed datasets (``.bin`` + ``.idx``): written fast, read by megatron.core itself.

The writer produces byte-for-byte what ``megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder``
writes for one sequence per document (a test proves it), but appends whole batches with numpy
instead of one ``add_item`` call per document, which would cost more than gigatoken's encoding.
Files are written under a hidden temporary name and renamed into place only when complete, so a
killed run never leaves a half shard under a final name.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiment.data.errors import DataError

INDEX_HEADER = b"MMIDIDX\x00\x00"
# Megatron's DType codes (megatron/core/datasets/indexed_dataset.py).
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7, np.uint16: 8}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


def optimal_dtype(vocab_size: int) -> type[np.number]:
    """Megatron's rule (``DType.optimal_dtype``): uint16 below 65500 ids, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


@dataclass(frozen=True)
class Counts:
    docs: int
    sentences: int
    tokens: int


class NoSpace(DataError):
    pass


def check_space(folder: Path, needed: int, reserve: int = 0) -> None:
    """Refuse to start writing ``needed`` bytes where fewer are free (keeping ``reserve`` spare)."""
    free = shutil.disk_usage(folder).free
    if free - reserve < needed:
        raise NoSpace(
            folder, f"not enough free space: need about {needed / 1e6:.1f} MB (+{reserve / 1e6:.1f} MB reserve), "
            f"{free / 1e6:.1f} MB free", "free some space or choose another --output folder",
        )


class ShardWriter:
    """Append batches of encoded documents (EOD added here) to one shard, then commit or discard."""

    def __init__(self, tmp_prefix: Path, dtype: type[np.number], eod_id: int, reserve_bytes: int = 0) -> None:
        self.tmp_prefix = tmp_prefix
        self.dtype = np.dtype(dtype)
        self.eod_id = eod_id
        self.reserve_bytes = reserve_bytes
        self.lengths: list[np.ndarray] = []
        self.tokens = 0
        self._bin = open(f"{tmp_prefix}.bin", "wb")

    def append(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        """Write documents given as flat ids + offsets; empty documents must already be dropped."""
        n = len(offsets) - 1
        if n == 0:
            return
        out = np.empty(len(flat) + n, dtype=self.dtype)
        lengths = np.diff(offsets) + 1
        ends = offsets[1:] + np.arange(n)  # EOD position of doc i in `out`
        mask = np.ones(len(out), dtype=bool)
        mask[ends] = False
        out[mask] = flat
        out[ends] = self.eod_id
        check_space(self.tmp_prefix.parent, out.nbytes + 20 * n, self.reserve_bytes)
        self._write(out)
        self.lengths.append(lengths.astype(np.int32))
        self.tokens += len(out)

    def _write(self, out: np.ndarray) -> None:
        try:
            out.tofile(self._bin)
        except OSError as err:
            self.discard()
            if err.errno == errno.ENOSPC:
                raise NoSpace(self.tmp_prefix.parent, "no space left on device while writing", "free some space or choose another --output folder") from None
            raise

    def finish(self) -> Counts:
        """Write the .idx; the pair is complete but still under the temporary name."""
        self._bin.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int32)
        try:
            write_index(Path(f"{self.tmp_prefix}.idx"), lengths, np.arange(len(lengths) + 1, dtype=np.int64), self.dtype.type)
        except OSError as err:
            self.discard()
            if err.errno == errno.ENOSPC:
                raise NoSpace(self.tmp_prefix.parent, "no space left on device while writing the index", "free some space") from None
            raise
        return Counts(docs=len(lengths), sentences=len(lengths), tokens=int(lengths.sum(dtype=np.int64)))

    def discard(self) -> None:
        self._bin.close()
        for ext in (".bin", ".idx"):
            Path(f"{self.tmp_prefix}{ext}").unlink(missing_ok=True)


def write_index(path: Path, sequence_lengths: np.ndarray, document_indices: np.ndarray, dtype: type[np.number]) -> None:
    """The .idx layout of Megatron's ``_IndexWriter`` (version 1, no sequence modes)."""
    itemsize = np.dtype(dtype).itemsize
    pointers = np.zeros(len(sequence_lengths), dtype=np.int64)
    if len(sequence_lengths) > 1:
        np.cumsum(sequence_lengths[:-1].astype(np.int64) * itemsize, out=pointers[1:])
    with open(path, "wb") as fh:
        fh.write(INDEX_HEADER)
        fh.write(struct.pack("<Q", 1))
        fh.write(struct.pack("<B", DTYPE_CODES[dtype]))
        fh.write(struct.pack("<Q", len(sequence_lengths)))
        fh.write(struct.pack("<Q", len(document_indices)))
        fh.write(np.asarray(sequence_lengths, dtype=np.int32).tobytes())
        fh.write(pointers.tobytes())
        fh.write(np.asarray(document_indices, dtype=np.int64).tobytes())
        fh.flush()
        os.fsync(fh.fileno())


def commit(tmp_prefix: Path, final_prefix: Path) -> None:
    """Move a finished pair into place: .bin first, then .idx (the .idx marks it complete)."""
    with open(f"{tmp_prefix}.bin", "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(f"{tmp_prefix}.bin", f"{final_prefix}.bin")
    os.replace(f"{tmp_prefix}.idx", f"{final_prefix}.idx")


@dataclass(frozen=True)
class ShardInfo:
    prefix: Path
    counts: Counts
    dtype: str
    bin_bytes: int
    idx_bytes: int


def read_shard(prefix: str | Path) -> ShardInfo:
    """Counts of an existing pair, read with megatron.core's own ``IndexedDataset`` (any tool's output).

    docs = documents, sentences = sequences (they differ only for sentence-split data), tokens = all
    ids including EOD (what training consumes). A .bin shorter than its index says is an error.
    """
    import logging
    import warnings

    with warnings.catch_warnings():  # "Transformer Engine and Apex are not installed": irrelevant here
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = Path(prefix)
    bin_path, idx_path = Path(f"{prefix}.bin"), Path(f"{prefix}.idx")
    for p in (bin_path, idx_path):
        if not p.is_file():
            raise DataError(p, "missing half of a .bin/.idx pair", "re-create the shard or remove the other half")
    with open(idx_path, "rb") as fh:
        if fh.read(len(INDEX_HEADER)) != INDEX_HEADER:
            raise DataError(idx_path, "not a Megatron .idx file (bad header)", "re-create the shard")
    logging.getLogger("megatron.core.datasets.indexed_dataset").setLevel(logging.WARNING)
    try:
        ds = IndexedDataset(str(prefix), mmap=True)
    except Exception as err:
        raise DataError(idx_path, f"megatron.core cannot read it ({err})", "re-create the shard") from None
    lengths = ds.index.sequence_lengths
    dtype = np.dtype(ds.index.dtype)
    tokens = int(lengths.sum(dtype=np.int64))
    bin_bytes = bin_path.stat().st_size
    if bin_bytes != tokens * dtype.itemsize:
        raise DataError(bin_path, f"{bin_bytes} bytes but the index describes {tokens * dtype.itemsize}: truncated or mismatched", "re-create the shard")
    counts = Counts(docs=len(ds.index.document_indices) - 1, sentences=len(lengths), tokens=tokens)
    return ShardInfo(prefix, counts, dtype.name, bin_bytes, idx_path.stat().st_size)


def find_prefixes(paths: list[Path]) -> list[Path]:
    """Prefixes of every complete .bin/.idx pair under the given folders/prefixes, sorted."""
    found: set[Path] = set()
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found.update(p.with_suffix("") for p in path.glob("*.idx") if not p.name.startswith("."))
        elif Path(f"{path}.idx").is_file() or path.suffix in (".bin", ".idx"):
            found.add(path.with_suffix("") if path.suffix in (".bin", ".idx") else path)
        else:
            raise DataError(path, "no .bin/.idx pair or folder here", "give a folder of shards or a shard prefix")
    return sorted(found)
