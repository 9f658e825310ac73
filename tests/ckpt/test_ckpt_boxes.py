"""The export's checkpoint reader (experiment.ckpt.boxes) and safetensors writer against the libraries'
own: torch.distributed.checkpoint's reader, safetensors' loader."""

from __future__ import annotations

import pickle

import pytest
import torch

from experiment.ckpt import boxes, hf_import
from experiment.ckpt.meta import CheckpointError, iteration_path
from experiment.ckpt.safetensors_out import SafetensorsWriter
from experiment.model.build import ParallelLayout
from tests.ckpt.tiny import make_hf


@pytest.fixture()
def tiny_ckpt(tmp_path, llama_tokenizer_dir, dist1):
    hf = make_hf("qwen2", tmp_path / "hf", llama_tokenizer_dir, dtype="bfloat16")
    out = tmp_path / "ckpt"
    hf_import.import_checkpoint(hf_import.plan_import(hf, out, ParallelLayout()), out, ParallelLayout(), show_progress=False)
    return iteration_path(out, None)


def _spy(monkeypatch) -> list:
    calls = []
    real = boxes._read_with_dcp
    monkeypatch.setattr(boxes, "_read_with_dcp", lambda it, req: (calls.append(sorted(req)), real(it, req)))
    return calls


def test_direct_reads_equal_torch_reader_and_partial_boxes_fall_back(tiny_ckpt, monkeypatch):
    stored = boxes.stored_tensors(tiny_ckpt)
    torch_reader = boxes._read_with_dcp
    calls = _spy(monkeypatch)
    for key, meta in stored.items():
        size = tuple(meta.size)
        mine, theirs = torch.empty(size, dtype=meta.properties.dtype), torch.full(size, 7, dtype=meta.properties.dtype)
        boxes.read_boxes(tiny_ckpt, {key: ((0,) * len(size), mine)})
        torch_reader(tiny_ckpt, {key: ((0,) * len(size), theirs)})
        assert torch.equal(mine, theirs), key
        if len(size) == 3:  # one layer of a stacked per-layer tensor: one stored chunk
            layer = torch.empty((1, *size[1:]), dtype=meta.properties.dtype)
            boxes.read_boxes(tiny_ckpt, {key: ((1, 0, 0), layer)})
            assert torch.equal(layer, theirs[1:2]), key
    assert calls == [], "every whole tensor and whole layer is a plain record: no fallback expected"

    emb = stored["embedding.word_embeddings.weight"]
    half = torch.empty((emb.size[0] // 2, emb.size[1]), dtype=emb.properties.dtype)
    boxes.read_boxes(tiny_ckpt, {"embedding.word_embeddings.weight": ((emb.size[0] // 2, 0), half)})
    full = torch.empty(tuple(emb.size), dtype=emb.properties.dtype)
    torch_reader(tiny_ckpt, {"embedding.word_embeddings.weight": ((0, 0), full)})
    assert torch.equal(half, full[emb.size[0] // 2:])
    assert calls == [["embedding.word_embeddings.weight"]]  # a box inside one chunk: torch's reader


def test_layout_reader_builds_nothing_it_does_not_know(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    for blob in (payload, pickle.dumps({"a": 1}), pickle.dumps(__import__("collections").Counter("ab"))):
        with pytest.raises(boxes._NotPlain):
            boxes._tensor_layout(blob)
    assert not marker.exists()


def test_safetensors_writer_is_read_by_safetensors(tmp_path):
    from safetensors import safe_open

    tensors = {"b": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "a": torch.randn(5),
               "empty": torch.zeros((0, 4), dtype=torch.float16), "c": torch.randn(3, 4).t()}  # not contiguous
    path = tmp_path / "x.safetensors"
    with SafetensorsWriter(path, [(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()], {"format": "pt"}) as out:
        for k, t in tensors.items():
            out.write(k, t)
    with safe_open(str(path), framework="pt") as fh:
        assert set(fh.keys()) == set(tensors) and fh.metadata() == {"format": "pt"}
        for k, t in tensors.items():
            assert torch.equal(fh.get_tensor(k), t), k

    with pytest.raises(CheckpointError, match="expected 'a'"):
        with SafetensorsWriter(tmp_path / "y.safetensors", [("a", torch.float32, (5,))], {}) as out:
            out.write("a", torch.randn(4))
    with pytest.raises(CheckpointError, match="closed without"):
        with SafetensorsWriter(tmp_path / "z.safetensors", [("a", torch.float32, (5,))], {}):
            pass


def test_load_boxes_maps_whole_chunks_and_reads_the_rest(tiny_ckpt):
    stored = boxes.stored_tensors(tiny_ckpt)
    request = {}
    for key, meta in stored.items():
        size = tuple(meta.size)
        if key.startswith("decoder.layers."):  # layer 1 of a stacked tensor: exactly one stored chunk -> a map
            request[key] = ((1,) + (0,) * (len(size) - 1), (1, *size[1:]), meta.properties.dtype)
        else:
            request[key] = ((0,) * len(size), size, meta.properties.dtype)
    emb = stored["embedding.word_embeddings.weight"]
    request["embedding.word_embeddings.weight"] = ((2, 0), (emb.size[0] - 2, emb.size[1]), emb.properties.dtype)
    got = boxes.load_boxes(tiny_ckpt, request)
    assert list(got) == list(request)
    for key, (offsets, shape, dtype) in request.items():
        full = torch.empty(tuple(stored[key].size), dtype=dtype)
        boxes._read_with_dcp(tiny_ckpt, {key: ((0,) * len(full.shape), full)})
        want = full[tuple(slice(o, o + n) for o, n in zip(offsets, shape))]
        assert got[key].shape == want.shape and torch.equal(got[key], want), key
        one_chunk = any(tuple(c.offsets) == offsets and tuple(c.sizes) == shape for c in stored[key].chunks)
        assert _in_a_map_of(got[key], ".distcp") == one_chunk, key  # mapped iff the box is one stored chunk
    assert any(_in_a_map_of(t, ".distcp") for t in got.values())
    assert not _in_a_map_of(got["embedding.word_embeddings.weight"], ".distcp")  # part of a chunk: read


def _in_a_map_of(tensor, suffix: str) -> bool:
    """Whether the tensor's memory lies in a mapping of a file ending with ``suffix`` (/proc/self/maps)."""
    ptr = tensor.data_ptr()
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) >= 6 and fields[5].endswith(suffix):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= ptr < hi:
                return True
    return False
