"""One input -> one counted shard: its text blocks read ahead, encoded, spot-checked and written.

Each output is written under a hidden temporary name and renamed to its counted name
(``{lang}_{domain}_{sub}_split_{id}_text_document_dc=_sc=_tc=``) when done; an input whose output is
there is skipped. The first documents' ids are re-encoded by the reference (the spot check) before
they are written.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from experiment.data import naming, shards, sources
from experiment.data.encoder_base import arrow_offsets
from experiment.data.encoders import LoadedEncoder, SpotSample, differing_ids
from experiment.data.errors import DataError
from experiment.data.tokenize_config import TokenizeConfig, apply_threads
from experiment.data.tokenize_output import OutputIndex
from experiment.data.tokenize_report import ShardResult


def _estimated_output_bytes(path: Path, itemsize: int) -> int:
    size = path.stat().st_size
    fmt = sources.format_of(path)
    raw = size * 4 if fmt in ("jsonl.gz", "jsonl.zst", "parquet") else size
    return raw * itemsize // 2  # text is >= 2 bytes per token in practice


class _Prefetch:
    """Iterate ``blocks`` in a background thread, one item ahead (pyarrow parses with the GIL released
    while the current block is encoded and written). The thread starts at once; ``close`` stops it."""

    def __init__(self, blocks) -> None:
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._done = object()
        self._thread = threading.Thread(target=self._produce, args=(blocks,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, blocks) -> None:
        try:
            for block in blocks:
                if not self._put(block):
                    return
            self._put(self._done)
        except BaseException as err:  # handed to the consumer, raised there with its file:line
            self._put(err)

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is self._done:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _drop_empty(texts):
    """The Arrow string array without its empty texts, and how many were dropped (read off the offsets,
    without loading pyarrow.compute)."""
    if not len(texts):
        return texts, 0
    keep = np.diff(arrow_offsets(texts)) > 0
    n_empty = len(texts) - int(np.count_nonzero(keep))
    if not n_empty:
        return texts, 0
    import pyarrow as pa

    return texts.filter(pa.array(keep)), n_empty


def _leading(texts, most: int = 256) -> list[str]:
    """The spot-check sample (``encoders.SpotSample``) of a block's leading, non-empty texts."""
    sample = SpotSample()
    for text in texts.slice(0, most).to_pylist():
        if not sample.offer(text):
            break
    return sample.texts


_END = object()


class BlockReader:
    """The text blocks of several inputs, parsed in order by one background thread that runs one block
    ahead across file boundaries: the next input is parsed while the current one's last block is
    encoded and written (most inputs are a single block, which a per-file reader could not overlap)."""

    def __init__(self, paths: list[Path], cfg: TokenizeConfig) -> None:
        self.paths = set(paths)

        def produce():
            for path in paths:
                for block in sources.read_batches(path, cfg.text_key, cfg.block_bytes):
                    yield path, block
                yield path, _END

        self._stream = _Prefetch(produce())

    def blocks(self, path: Path):
        """The blocks of ``path``, which must be the next input in the reader's order."""
        while True:
            owner, block = next(self._stream)
            if owner != path:
                raise RuntimeError(f"reader out of order: {owner} read, {path} expected")
            if block is _END:
                return
            yield block

    def close(self) -> None:
        self._stream.close()


def _encode_blocks(blocks, loaded: LoadedEncoder, sample_first: bool, on_bytes=None):
    """(flat ids, offsets, spot-check texts or None, empty docs dropped, text bytes not yet reported to
    ``on_bytes``) per block of texts; ``on_bytes`` hears of the text bytes as they are encoded."""
    for texts in blocks:
        texts, n_empty = _drop_empty(texts)
        sample = _leading(texts) if sample_first and len(texts) else None
        sample_first = sample_first and sample is None
        flat, offsets = loaded.encoder.encode(texts, progress=on_bytes)
        yield flat, offsets, sample, n_empty, 0 if on_bytes else texts.nbytes


def tokenize_file(
    path: Path, name: naming.ShardName, loaded: LoadedEncoder, cfg: TokenizeConfig, on_bytes=None, blocks=None,
    encoded=None, index: OutputIndex | None = None,
) -> ShardResult:
    """Tokenize one input into one counted shard in ``cfg.output`` (skipped if already there).

    ``blocks``: the input's text blocks from a shared ``BlockReader`` (default: read here); ``encoded``: its
    ids already encoded (``whole_files``), as ``_encode_blocks`` yields them; ``index``: the run's listing
    of the output folder (default: list it now)."""
    stem = name.stem
    start = time.perf_counter()
    if index is None:
        index = OutputIndex(cfg.output)
    done = index.finished(stem)
    input_bytes = path.stat().st_size
    if done is not None:
        for _ in blocks or ():  # finished meanwhile by another run: keep a shared reader in step
            pass
        counted = naming.parse(done.name)
        if on_bytes:
            on_bytes(input_bytes)
        return ShardResult(path, done, counted.docs, counted.sentences, counted.tokens, input_bytes, 0.0, skipped=True)
    index.clean(stem)
    dtype = shards.optimal_dtype(loaded.reference.vocab_size)
    shards.check_space(cfg.output, _estimated_output_bytes(path, np.dtype(dtype).itemsize), cfg.reserve_bytes)
    tmp = cfg.output / f".{stem}.tmp-{os.getpid()}"
    writer = shards.ShardWriter(tmp, dtype, loaded.encoder.eod_id, cfg.reserve_bytes)
    empty = 0
    checked = not cfg.spot_check or loaded.encoder is loaded.reference
    try:
        if encoded is None:
            if blocks is None:  # not in the run's reader (its output was there when the run started, or a
                apply_threads(cfg.threads, arrow=True)  # whole file in doubt): parsed here, on --threads cores
                blocks = sources.read_batches(path, cfg.text_key, cfg.block_bytes)
            encoded = _encode_blocks(blocks, loaded, not checked, on_bytes)
        for flat, offsets, sample, n_empty, nbytes in encoded:
            empty += n_empty
            if sample and not checked:  # the ids about to be written, re-encoded by the reference
                bad = differing_ids(loaded.reference, sample, flat, offsets)
                if bad:
                    raise DataError(
                        path, f"{loaded.encoder.backend} ids differ from {loaded.reference.backend} on document {bad[0] + 1}",
                        "re-run with --backend reference (and report the text to gigatoken)",
                    )
                checked = True
            writer.append(flat, offsets)
            if on_bytes and nbytes:
                on_bytes(nbytes)
        counts = writer.finish()
    except BaseException:
        writer.discard()
        raise
    if counts.docs == 0:
        writer.discard()
        raise DataError(path, "every document is empty", "remove the file from the inputs")
    final = cfg.output / name.with_counts(counts.docs, counts.sentences, counts.tokens).format()
    shards.commit(tmp, final)
    index.add(stem, final)
    return ShardResult(path, final, counts.docs, counts.sentences, counts.tokens, input_bytes, time.perf_counter() - start, empty_docs=empty)
