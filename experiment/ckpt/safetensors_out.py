"""Write a safetensors file tensor by tensor, from a layout known up front.

Why not ``safetensors.torch.save_file``: it serializes the whole dict into one buffer before writing,
a second copy of every shard in memory (export peaked at 2.18x the largest layer with it). The format
is small and stable: a little-endian u64 header length, a JSON header naming each tensor's dtype, shape
and byte range (padding with spaces is allowed), then the bytes in that order. The export knows every
name, dtype and shape from the checkpoint's metadata before reading any data, so the header goes first
and each tensor is written as soon as it is read, then freed. The tests read every export back with
``safetensors.safe_open`` and ``transformers``.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from experiment.ckpt.direct_writer import DirectWriter
from experiment.ckpt.meta import CheckpointError

_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64",
          "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def _code(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _CODES:
        raise CheckpointError(f"internal: no safetensors code for {dtype}")
    return _CODES[name]


class SafetensorsWriter:
    """``with SafetensorsWriter(path, [(name, dtype, shape), ...], {"format": "pt"}) as w: w.write(name, t)``
    in the declared order; closing checks that every declared tensor was written."""

    def __init__(self, path: Path, entries: list[tuple[str, object, tuple[int, ...]]], metadata: dict[str, str]):
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        self._expected = []
        for name, dtype, shape in entries:
            if name in header:
                raise CheckpointError(f"internal: tensor {name!r} declared twice in {path.name}")
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": _code(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._expected.append((name, dtype, tuple(shape), nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-(8 + len(raw)) % 8)  # data starts 8-aligned, as safetensors writes it
        self.path, self._next = path, 0
        self._fh = DirectWriter(path)  # bypasses the page cache; durable once closed
        self._fh.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, tensor) -> None:
        import torch

        if self._next >= len(self._expected):
            raise CheckpointError(f"internal: {name!r} written to {self.path.name} after its declared tensors")
        want, dtype, shape, nbytes = self._expected[self._next]
        if (name, tensor.dtype, tuple(tensor.shape)) != (want, dtype, shape):
            raise CheckpointError(f"internal: {self.path.name} expected {want!r} {dtype} {list(shape)}, got "
                                  f"{name!r} {tensor.dtype} {list(tensor.shape)}")
        if nbytes:
            data = tensor.detach().contiguous().view(torch.uint8).reshape(-1).numpy()
            self._fh.write(memoryview(data))
        self._next += 1

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, kind, *exc) -> bool:
        self._fh.__exit__(kind, *exc)
        if kind is None and self._next != len(self._expected):
            missing = [e[0] for e in self._expected[self._next:]]
            raise CheckpointError(f"internal: {self.path.name} closed without {missing[:3]}")
        return False
