"""Read boxes of the global tensors of a torch_dist checkpoint without torch's per-chunk ``torch.load``.

A torch_dist checkpoint (megatron's dist_checkpointing on torch.distributed.checkpoint) stores every
chunk of a tensor as one small ``torch.save`` zip inside a ``.distcp`` file, at the byte range its
``.metadata`` names. torch's own reader ``torch.load``s each chunk into a fresh tensor through Python
file reads and then copies it into the destination: twice the largest tensor in memory, ~200 MB/s.

``load_boxes`` returns a box that is exactly one stored chunk as a read-only map of the chunk's bytes in
the ``.distcp`` file. ``read_boxes`` reads every stored chunk that lies wholly inside a box with one
``readinto`` straight into the destination (or into one chunk-sized buffer when the destination view is
not contiguous). Either way the zip's ``data.pkl`` is read with a whitelisting unpickler that builds
nothing (it only reports the storage, offset, size and stride), and a chunk is used directly only when it
is the plain contiguous tensor the metadata says, of the same dtype, in an uncompressed record of exactly
its byte size. Anything else (a chunk straddling the box, compression, another layout) goes through
``torch.distributed.checkpoint.load`` with a sub-box planner.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
from pathlib import Path

from experiment.ckpt.meta import CheckpointError

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # zip local file header; the last two: name and extra lengths


class _NotPlain(Exception):
    """This chunk is not a plain contiguous tensor record: take torch's path."""


def stored_tensors(it_dir: Path) -> dict:
    """Key -> TensorStorageMetadata (global size, dtype, chunks) of a checkpoint, without reading data."""
    return {k: v for k, v in metadata(it_dir).state_dict_metadata.items() if hasattr(v, "chunks")}


def metadata(it_dir: Path):
    import torch.distributed.checkpoint as dcp

    try:
        return dcp.FileSystemReader(str(it_dir)).read_metadata()
    except (FileNotFoundError, OSError) as err:
        raise CheckpointError(f"{it_dir}: not a torch_dist checkpoint ({err}); fix: export a folder written by "
                              "`experiment ckpt import` or the kit's training runner") from err


def read_boxes(it_dir: Path, request: dict[str, tuple[tuple[int, ...], object]], md=None) -> None:
    """Fill each ``tensor`` of ``request[key] = (global offsets, tensor)`` from the checkpoint in place
    (``md``: the checkpoint's metadata when the caller already read it)."""
    md = md if md is not None else metadata(it_dir)
    rest = {}
    for key, (offsets, tensor) in request.items():
        try:
            _read_direct(Path(it_dir), md, key, offsets, tensor)
        except _NotPlain:
            rest[key] = (offsets, tensor)
    if rest:
        _read_with_dcp(it_dir, rest)


def load_boxes(it_dir: Path, request: dict[str, tuple[tuple[int, ...], tuple[int, ...], object]], md=None) -> dict:
    """``request[key] = (global offsets, shape, dtype)`` -> key -> tensor of that box. A box that is
    exactly one plain stored chunk comes back as a read-only map of its bytes in the ``.distcp`` file
    (no copy until someone reads it); the others are read into fresh tensors (``read_boxes``)."""
    import torch

    from experiment.ckpt.source import map_range

    md = md if md is not None else metadata(it_dir)
    out, rest = {}, {}
    for key, (offsets, shape, dtype) in request.items():
        mapped = None
        try:
            mapped = _plain_chunk(Path(it_dir), md, key, tuple(offsets), tuple(shape), dtype)
        except _NotPlain:
            pass
        if mapped is not None:
            out[key] = map_range(mapped[0], mapped[1], dtype, tuple(shape))
        else:
            rest[key] = (offsets, torch.empty(shape, dtype=dtype))
    if rest:
        read_boxes(it_dir, rest, md)
        out.update({key: tensor for key, (_, tensor) in rest.items()})
    return {key: out[key] for key in request}


def _plain_chunk(it_dir: Path, md, key: str, offsets: tuple[int, ...], shape: tuple[int, ...], dtype):
    """(file, byte offset) of the stored chunk that is exactly this box, when it is a plain record."""
    meta = md.state_dict_metadata[key]
    if meta.properties.dtype != dtype or 0 in shape:
        return None
    for chunk in meta.chunks:
        if tuple(chunk.offsets) == offsets and tuple(chunk.sizes) == shape:
            return _chunk_record(it_dir, md, key, chunk, dtype.itemsize)
    return None


def _chunk_record(it_dir: Path, md, key: str, chunk, itemsize: int) -> tuple[Path, int]:
    """(file, byte offset) of the raw bytes of one stored chunk of ``key``; raises _NotPlain unless the
    chunk is a plain record (``_record``)."""
    from torch.distributed.checkpoint.metadata import MetadataIndex

    info = md.storage_data[MetadataIndex(key, chunk.offsets)]
    path = it_dir / info.relative_path
    return path, _record(path, info.offset, info.length, tuple(chunk.sizes), itemsize)


def _read_direct(it_dir: Path, md, key: str, offsets: tuple[int, ...], tensor) -> None:
    """Every stored chunk of ``key`` inside the box, read into its place; raises _NotPlain (before
    writing anything) when one of them cannot be."""
    meta = md.state_dict_metadata[key]
    if meta.properties.dtype != tensor.dtype:
        raise _NotPlain
    box = [(o, o + n) for o, n in zip(offsets, tensor.shape)]
    plan, covered = [], 0
    for chunk in meta.chunks:
        span = [(o, o + n) for o, n in zip(chunk.offsets, chunk.sizes)]
        inside = all(b0 <= s0 and s1 <= b1 for (s0, s1), (b0, b1) in zip(span, box))
        overlaps = all(s0 < b1 and b0 < s1 for (s0, s1), (b0, b1) in zip(span, box))
        if overlaps and not inside:
            raise _NotPlain
        if inside:
            path, where = _chunk_record(it_dir, md, key, chunk, tensor.element_size())
            dest = tensor[tuple(slice(s0 - b0, s1 - b0) for (s0, s1), (b0, _) in zip(span, box))]
            plan.append((path, where, dest))
            covered += dest.numel()
    if covered != tensor.numel():
        raise _NotPlain
    for path, offset, dest in plan:
        _read_into(path, offset, dest)


def _read_into(path: Path, offset: int, dest) -> None:
    import torch

    target = dest if dest.is_contiguous() else torch.empty(dest.shape, dtype=dest.dtype)
    view = memoryview(target.view(torch.uint8).numpy()).cast("B") if target.numel() else memoryview(b"")
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        got = 0
        while got < len(view):
            n = fh.readinto(view[got:])
            if not n:
                raise CheckpointError(f"{path}: ends inside a tensor record (truncated checkpoint?); fix: re-save it")
            got += n
    if target is not dest:
        dest.copy_(target)


def _record(path: Path, start: int, length: int, sizes: tuple[int, ...], itemsize: int) -> int:
    """File offset of the raw bytes of the one tensor stored in the ``torch.save`` zip at
    ``path[start:start+length]``, after checking it is the plain contiguous tensor of ``sizes``."""
    with open(path, "rb") as fh:
        try:
            zf = zipfile.ZipFile(_Slice(fh, start, length))
        except zipfile.BadZipFile:
            raise _NotPlain from None
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl")]
        data = [n for n in names if "/data/" in n]
        if len(pkl) != 1 or len(data) != 1:
            raise _NotPlain
        storage_key, offset, size, stride = _tensor_layout(_member(zf, fh, start, pkl[0]))
        numel = math.prod(sizes)
        contiguous = tuple(math.prod(sizes[i + 1:]) for i in range(len(sizes)))
        info = zf.getinfo(data[0])
        if (data[0].rsplit("/", 1)[1] != storage_key or offset != 0 or size != sizes
                or (numel > 1 and stride != contiguous) or info.compress_type != zipfile.ZIP_STORED
                or info.file_size != numel * itemsize):
            raise _NotPlain
        order = [n for n in names if n.endswith("/byteorder")]
        if order and _member(zf, fh, start, order[0]) != b"little":
            raise _NotPlain
        return _data_offset(fh, start, info)


def _data_offset(fh, start: int, info: zipfile.ZipInfo) -> int:
    """File offset of a stored zip member's bytes (after its local header, name and extra field)."""
    fh.seek(start + info.header_offset)
    header = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    return start + info.header_offset + _LOCAL_HEADER.size + header[9] + header[10]


def _member(zf: zipfile.ZipFile, fh, start: int, name: str) -> bytes:
    """A small member's bytes. A record written with torch's CRC switch off (``experiment ckpt import``)
    stores CRC 0, which zipfile would reject and torch.load ignores: such a stored member is read as is."""
    info = zf.getinfo(name)
    if info.CRC or not info.file_size:
        return zf.read(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise _NotPlain
    fh.seek(_data_offset(fh, start, info))
    return fh.read(info.file_size)


class _Slice(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of an open file from ``start`` (for zipfile)."""

    def __init__(self, fh, start: int, length: int) -> None:
        self.fh, self.start, self.length, self.pos = fh, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: pos, 1: self.pos + pos, 2: self.length + pos}[whence]
        return self.pos

    def readinto(self, buf) -> int:
        n = max(0, min(len(buf), self.length - self.pos))
        self.fh.seek(self.start + self.pos)
        got = self.fh.readinto(memoryview(buf)[:n])
        self.pos += got
        return got


class _LayoutOnly(pickle.Unpickler):
    """Reads a torch.save ``data.pkl`` of one tensor without building anything: only the names a plain
    tensor pickle uses are allowed, and the tensor comes back as its (storage key, offset, size, stride)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *_: (storage, offset, tuple(size), tuple(stride))
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise _NotPlain

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise _NotPlain
        return str(pid[2])  # ('storage', storage type, key, location, numel): the record is data/<key>


def _tensor_layout(pkl: bytes) -> tuple[str, int, tuple[int, ...], tuple[int, ...]]:
    try:
        value = _LayoutOnly(io.BytesIO(pkl)).load()
    except _NotPlain:
        raise
    except Exception:
        raise _NotPlain from None
    if not (isinstance(value, tuple) and len(value) == 4 and isinstance(value[0], str)):
        raise _NotPlain
    return value


def _read_with_dcp(it_dir: Path, request: dict) -> None:
    """torch.distributed.checkpoint's own reader, with a planner that asks for a sub-box (megatron's
    ``load`` describes a partial request as shards owned by other ranks, which one process cannot)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    class BoxPlanner(DefaultLoadPlanner):
        def create_local_plan(self) -> LoadPlan:
            items = []
            for key, (offsets, tensor) in request.items():
                chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=tensor.shape)
                items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [chunk])
            return LoadPlan(items)

        def lookup_tensor(self, index):
            return request[index.fqn][1]  # dest offsets of the read items are relative to this box

    state = {key: tensor for key, (_, tensor) in request.items()}
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(it_dir)), planner=BoxPlanner(), no_dist=True)
