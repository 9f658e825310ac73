"""A local Hugging Face model folder, opened for streaming: config, shard index, one tensor at a time.

Everything that can be wrong with the folder (unsupported architecture, a shard the index names but
that is missing, a tensor that is absent or has the wrong shape, mixed dtypes) is found here, by
reading headers only, before the conversion writes a byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from experiment.ckpt import mapping
from experiment.ckpt.meta import CheckpointError
from experiment.model.presets import ModelShape

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
INDEX_NAME = "model.safetensors.index.json"
SKIP_FILES = {"config.json", INDEX_NAME}


@dataclass
class HFSource:
    path: Path
    config: dict
    family: mapping.Family
    shape: ModelShape
    dtype: str
    files: list[Path]
    where: dict[str, Path]  # tensor name -> safetensors file
    _handles: dict = field(default_factory=dict, repr=False)

    def get(self, name: str):
        """One tensor, read with plain ``readinto`` from its shard into fresh memory.

        Not ``safe_open(...).get_tensor``: that maps the whole shard, and every page it touched stays in
        this process's RSS while the file is open, which doubles the apparent peak of a large import.
        """
        import torch

        entry = self._entry(name)
        out = torch.empty(entry["shape"], dtype=_TORCH_DTYPES[entry["dtype"]])
        self.read_rows(name, out)
        return out

    def read_rows(self, name: str, out, start: int = 0) -> None:
        """Rows ``start .. start + len(out)`` (first axis) of tensor ``name``, read straight into the
        contiguous tensor ``out`` (converted when ``out`` has another dtype): a slice along the first
        axis is one contiguous byte range of the file, so no full-size intermediate is needed."""
        import torch

        entry = self._entry(name)
        file, shape = self.where[name], entry["shape"]
        dtype = _TORCH_DTYPES[entry["dtype"]]
        rows = out.shape[0] if out.dim() else 1
        if tuple(out.shape[1:]) != tuple(shape[1:]) or start < 0 or start + rows > (shape[0] if shape else 1):
            raise CheckpointError(f"internal: rows {start}..{start + rows} of {name!r} {list(shape)} "
                                  f"do not fit {list(out.shape)}")
        if out.dtype != dtype:
            tmp = torch.empty(out.shape, dtype=dtype)
            self.read_rows(name, tmp, start)
            out.copy_(tmp)
            return
        if not out.is_contiguous():
            raise CheckpointError(f"internal: read_rows of {name!r} into a non-contiguous tensor")
        if not out.numel():
            return
        row_bytes = out[0].numel() * out.element_size() if out.dim() else out.element_size()
        begin, end = entry["data_offsets"]
        offset, size = self._handles[file][0] + begin + start * row_bytes, rows * row_bytes
        view = memoryview(out.view(-1).view(torch.uint8).numpy())
        with open(file, "rb", buffering=0) as fh:
            fh.seek(offset)
            got = 0
            while got < size:  # readinto may return short counts for large reads
                n = fh.readinto(view[got:])
                if not n:
                    break
                got += n
        if got != size:
            raise CheckpointError(f"{file}: tensor {name!r} is truncated ({got + start * row_bytes} of "
                                  f"{end - begin} bytes); fix: download the shard again")

    def map_rows(self, name: str, start: int, rows: int):
        """Rows ``start .. start + rows`` of tensor ``name`` as a read-only tensor over a map of the
        file (see ``map_range``)."""
        entry = self._entry(name)
        shape, dtype = entry["shape"], _TORCH_DTYPES[entry["dtype"]]
        if not shape or start < 0 or rows < 1 or start + rows > shape[0]:
            raise CheckpointError(f"internal: rows {start}..{start + rows} of {name!r} {list(shape)}")
        row_bytes = dtype.itemsize
        for d in shape[1:]:
            row_bytes *= d
        begin, end = entry["data_offsets"]
        file = self.where[name]
        offset = self._handles[file][0] + begin + start * row_bytes
        if self._handles[file][0] + end > file.stat().st_size:
            raise CheckpointError(f"{file}: tensor {name!r} is truncated ({file.stat().st_size} bytes, the header "
                                  f"says {self._handles[file][0] + end}); fix: download the shard again")
        return map_range(file, offset, dtype, (rows, *shape[1:]))

    def dtype_of(self, name: str):
        return _TORCH_DTYPES[self._entry(name)["dtype"]]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)["shape"])

    def _entry(self, name: str) -> dict:
        file = self.where[name]
        header = self._handles.get(file)
        if header is None:
            header = self._handles[file] = _read_header(file)
        return header[1][name]

    def close(self) -> None:
        self._handles.clear()

    @property
    def weight_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def side_files(self) -> list[Path]:
        """Tokenizer, generation config, chat template: what export must put back beside the weights."""
        return sorted(
            p for p in self.path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name not in SKIP_FILES
            and not p.name.endswith(WEIGHT_SUFFIXES)
        )


def open_hf(path: str | Path) -> HFSource:
    """Open and validate a Hugging Face folder; raises CheckpointError naming file, field and fix."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    cfg_path = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder; fix: pass a Hugging Face model folder (config.json + *.safetensors) or a .gguf file")
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing; fix: pass a Hugging Face model folder (save_pretrained output)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_path}: line {err.lineno}: invalid JSON ({err.msg}); fix: repair the file") from err
    family, shape = mapping.shape_from_config(config, str(cfg_path))

    index = path / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        files = sorted({path / f for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                names = [n for n, v in weight_map.items() if path / v == f]
                raise CheckpointError(
                    f"{index}: shard {f.name} is missing ({len(names)} tensors, e.g. {names[0]}); "
                    "fix: download the complete model (every file the index names)"
                )
    else:
        files = sorted(path.glob("*.safetensors"))
        if not files:
            others = sorted(p.name for p in path.iterdir() if p.name.endswith((".bin", ".pt", ".pth")))
            hint = f" (found {others}: re-save with save_pretrained(safe_serialization=True))" if others else ""
            raise CheckpointError(f"{path}: no *.safetensors weights{hint}; fix: provide safetensors weights")

    where: dict[str, Path] = {}
    dtypes: dict[str, list[str]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                where[name] = f
                sl = fh.get_slice(name)
                shapes[name] = tuple(sl.get_shape())
                dtypes.setdefault(str(sl.get_dtype()), []).append(name)

    for name, want in mapping.expected_hf_shapes(shape).items():
        if name not in where:
            raise CheckpointError(
                f"{path}: tensor {name!r} is missing from the weights; fix: the folder is incomplete or not a "
                f"{family.architecture} checkpoint"
            )
        if shapes[name] != want:
            raise CheckpointError(
                f"{where[name]}: tensor {name!r} has shape {list(shapes[name])}, config.json implies {list(want)}; "
                "fix: use the config.json that belongs to these weights"
            )
    if len(dtypes) != 1:
        summary = ", ".join(f"{d}: {len(n)} tensors (e.g. {n[0]})" for d, n in sorted(dtypes.items()))
        raise CheckpointError(
            f"{path}: dtype mismatch between tensors ({summary}); fix: re-save the model in one dtype"
        )
    dtype = _torch_dtype_name(next(iter(dtypes)))
    declared = config.get("dtype", config.get("torch_dtype"))
    if declared and declared != dtype:
        raise CheckpointError(
            f"{cfg_path}: field 'dtype' = {declared!r} but the weights are {dtype}; "
            f"fix: set \"dtype\": \"{dtype}\" in config.json (or re-save the weights as {declared})"
        )
    if not hasattr(torch, dtype) or dtype not in ("float32", "bfloat16", "float16"):
        raise CheckpointError(f"{path}: weights are {dtype}; fix: only float32/bfloat16/float16 weights convert")
    return HFSource(path, config, family, shape, dtype, files, where)


def _read_header(file: Path):
    """(offset of the data block, {name: {dtype, shape, data_offsets}}) of a safetensors file."""
    import struct

    with open(file, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return 8 + n, header


def _dtypes():
    import torch

    return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


class _LazyDtypes(dict):
    def __missing__(self, key):
        self.update(_dtypes())
        if key not in self:
            raise CheckpointError(f"safetensors dtype {key} is not supported; fix: use float32/bfloat16/float16 weights")
        return self[key]


_TORCH_DTYPES = _LazyDtypes()


def _torch_dtype_name(safetensors_dtype: str) -> str:
    return {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}.get(
        safetensors_dtype, safetensors_dtype.lower()
    )


def content_hash(files: list[Path]) -> str:
    """blake3 over (name, size, bytes) of the weight files, in name order (the kit's one hasher)."""
    from experiment.hashing import content_hash as named_hash

    return named_hash(((p.name, p) for p in sorted(files, key=lambda p: p.name)), threads=1)  # one thread: beside the conversion


def map_range(file: Path, offset: int, dtype, shape: tuple[int, ...]):
    """The bytes of ``file`` from ``offset`` as a read-only tensor of ``dtype`` and ``shape`` over a map of
    the file (populated up front; unmapped when the tensor is freed): a writer copies from the page cache
    once, with no fresh memory. Its pages count in this process's RSS only while it lives."""
    import math
    import mmap
    import warnings

    import torch

    size = dtype.itemsize * math.prod(shape)
    aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(file, "rb") as fh:
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapped = mmap.mmap(fh.fileno(), offset - aligned + size, flags=flags, prot=mmap.PROT_READ, offset=aligned)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "non-writable buffer": the tensor is only read
        flat = torch.frombuffer(mapped, dtype=torch.uint8, count=size, offset=offset - aligned)
    return flat.view(dtype).view(shape)
