"""The shard writer produces exactly Megatron's own format, and megatron.core reads it."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest


@pytest.mark.parametrize("vocab_size", [32000, 128256])
def test_writer_is_byte_identical_to_megatron_builder(tmp_path, vocab_size):
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

    from experiment.data import shards

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, vocab_size - 1, size=n).astype(np.uint32) for n in (5, 1, 0, 300, 17, 2)]
    docs = [d for d in docs if len(d)]  # the kit drops empty documents before writing
    eod = vocab_size - 1
    dtype = DType.optimal_dtype(vocab_size)
    assert shards.optimal_dtype(vocab_size) is dtype

    ref = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=dtype)
    for d in docs:
        ref.add_item(torch.from_numpy(np.append(d, eod).astype(np.int64)))
        ref.end_document()
    ref.finalize(str(tmp_path / "ref.idx"))

    writer = shards.ShardWriter(tmp_path / "ours", dtype, eod)
    flat = np.concatenate(docs)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    writer.append(flat[: offsets[3]], offsets[:4])  # two batches, as tokenize writes them
    writer.append(flat[offsets[3] :], offsets[3:] - offsets[3])
    counts = writer.finish()

    assert filecmp.cmp(tmp_path / "ref.bin", tmp_path / "ours.bin", shallow=False)
    assert filecmp.cmp(tmp_path / "ref.idx", tmp_path / "ours.idx", shallow=False)
    ds = IndexedDataset(str(tmp_path / "ours"))
    assert [ds[i].tolist() for i in range(len(ds))] == [np.append(d, eod).tolist() for d in docs]
    assert (counts.docs, counts.tokens) == (len(docs), sum(len(d) + 1 for d in docs))


def test_read_shard_rejects_truncated_bin(tmp_path):
    from experiment.data import shards
    from experiment.data.errors import DataError

    writer = shards.ShardWriter(tmp_path / "s", np.uint16, 2)
    writer.append(np.arange(10, dtype=np.uint32), np.array([0, 4, 10]))
    writer.finish()
    assert shards.read_shard(tmp_path / "s").counts == shards.Counts(2, 2, 12)
    with open(tmp_path / "s.bin", "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(DataError, match="truncated"):
        shards.read_shard(tmp_path / "s")
