"""Read a W&B offline run file (``run-<id>.wandb``) back: wandb 0.31 ships no Python reader (its Go core
writes and syncs them), so the tests read the format as ``wandb sync`` does: a 7-byte header (":W&B", magic
0xBEE1, version), then 32 KiB blocks of records (crc32c u32, length u16, type u8: full/first/middle/last),
each a ``wandb_internal_pb2.Record`` protobuf."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, f"{path}: not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec
            pending = b""


def history(path: Path) -> dict[int, dict[str, float]]:
    """{step: {key: value}} of every ``run.log`` call."""
    out: dict[int, dict[str, float]] = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") != "history":
            continue
        items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
        step = int(rec.history.step.num) if rec.history.HasField("step") else int(items.get("_step", -1))
        out.setdefault(step, {}).update({k: v for k, v in items.items() if not k.startswith("_")})
    return out


def scalars(path: Path) -> dict[str, dict[int, float]]:
    """{key: {step: value}}: ``history`` turned the way TensorBoard's scalars are read."""
    out: dict[str, dict[int, float]] = {}
    for step, items in history(path).items():
        for key, value in items.items():
            out.setdefault(key, {})[step] = value
    return out
