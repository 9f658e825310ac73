"""Import (Hugging Face -> Megatron-Core distributed checkpoint) and export (back), streaming.

Import runs on every rank of a TP x PP group (one process when both are 1): each rank builds its own
GPTModel slice on the meta device (``experiment.model.build.build_gpt_model``: shapes, dtypes and
megatron's sharding, no data) and saves its sharded state dict with ``megatron.core.dist_checkpointing``
(torch_dist, megatron's planner and format), which any other TP/PP layout can load. Only the writer
differs: it asks for each tensor just before writing it, and the tensor is made then from the
safetensors shards (transformed by ``experiment.ckpt.mapping``; plain row copies are written straight
from a map of the shard) while the previous one is being written, then let go. Peak memory: about the
largest tensor; the files are byte for byte those a filled model gives. Everything goes to
``.<out>.importing`` first and is renamed at the end, so a killed import leaves no checkpoint behind
and is simply re-run.

Export needs no model: it reads one layer at a time, a box of each stored global tensor whatever TP/PP
it was saved with (``experiment.ckpt.boxes``; whole stored chunks as read-only maps), the next layer while
this one is written, maps it back to Hugging Face names and writes each tensor into safetensors files
whose headers were planned from the checkpoint's metadata (``experiment.ckpt.safetensors_out``). Peak
memory: about one layer (the embedding group) plus the next.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from experiment.atomic import write_atomic
from experiment.ckpt import card, mapping
from experiment.ckpt.boxes import load_boxes, metadata, stored_tensors
from experiment.ckpt.direct_writer import DirectWriter
from experiment.ckpt.meta import (
    LATEST_NAME,
    META_NAME,
    TOKENIZER_DIR,
    CheckpointError,
    CheckpointMeta,
    iteration_dirname,
    iteration_path,
    read,
    write,
)
from experiment.ckpt.safetensors_out import SafetensorsWriter
from experiment.ckpt.source import HFSource, content_hash, open_hf
from experiment.model.presets import ModelShape
from experiment.model.strategies import dist_strategies
from experiment.model.build import ParallelLayout, padded_vocab_size

IMPORT_ITERATION = 1
MANIFEST_NAME = "kit_manifest.json"  # same file the training checkpointer writes (experiment.train.checkpointing)


@dataclass(frozen=True)
class ConvertStats:
    tensors: int
    bytes: int
    seconds: float
    out: Path

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)


def import_libraries() -> None:
    """Import now the megatron.core parts every conversion uses (torch comes with this module). The CLI
    calls it with the garbage collector paused (``experiment.short_lived``), which cuts 0.5 s of start-up."""
    from experiment import megatron_import

    megatron_import.install()  # before megatron's first import (the CLI's root callback has done it already)
    from megatron.core import dist_checkpointing, parallel_state  # noqa: F401
    from megatron.core.dist_checkpointing.strategies import torch as _torch_strategies  # noqa: F401
    from megatron.core.models.gpt import GPTModel, gpt_layer_specs  # noqa: F401
    from megatron.core.tensor_parallel import random  # noqa: F401


def _strategies():
    """The kit's checkpoint strategies, with the writer's results kept in this process (see below)."""
    _in_process_results_queue()
    return dist_strategies()


def _in_process_results_queue() -> None:
    """Our saves are synchronous: the writer's results are put and read in this process, so a plain
    queue will do. megatron otherwise starts a spawn-context Manager process, which re-imports
    ``__main__`` (several seconds; fails outright when the caller is stdin or a notebook)."""
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def refuse_existing_output(out_dir: Path, what: str) -> None:
    """An output folder must be absent or empty: conversion never overwrites or mixes into one."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise CheckpointError(f"{out_dir}: exists and is a file; fix: choose another output path")
        content = sorted(p.name for p in out_dir.iterdir())
        if content:
            holds = "a checkpoint" if {LATEST_NAME, META_NAME, "config.json"} & set(content) else "files"
            raise CheckpointError(
                f"{out_dir}: already holds {holds} ({', '.join(content[:5])}); fix: delete it or choose another {what}"
            )


def plan_import(hf_dir: str | Path, out_dir: str | Path, layout: ParallelLayout) -> HFSource:
    """All checks of an import, reading headers only; nothing is written."""
    out_dir = Path(out_dir)
    refuse_existing_output(out_dir, "OUT_DIR")
    source = open_hf(hf_dir)
    mapping.check_layout(source.shape, layout.tensor_parallel, layout.pipeline_parallel,
                         str(source.path / "config.json"))
    return source


def import_checkpoint(source: HFSource, out_dir: str | Path, layout: ParallelLayout, *,
                      show_progress: bool = True) -> ConvertStats:
    """Write the Megatron checkpoint of ``source`` to ``out_dir``. Collective over the TP x PP ranks
    (``experiment.model.parallel.initialize(layout)`` must have run)."""
    import torch
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    from experiment.model.build import build_gpt_model

    out_dir = Path(out_dir).absolute()
    world = dist.get_world_size()
    if world != layout.tensor_parallel * layout.pipeline_parallel:
        raise CheckpointError(
            f"import with --tp {layout.tensor_parallel} --pp {layout.pipeline_parallel} needs exactly "
            f"{layout.tensor_parallel * layout.pipeline_parallel} processes, got {world}; "
            "fix: let `experiment ckpt import` start torchrun, or pass --nproc-per-node tp*pp"
        )
    rank = dist.get_rank()
    shape, tp = source.shape, layout.tensor_parallel
    tp_rank = ps.get_tensor_model_parallel_rank()
    padded = padded_vocab_size(shape.vocab_size, tp)
    tmp = out_dir.parent / f".{out_dir.name}.importing"
    start = time.perf_counter()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a killed earlier attempt
        (tmp / iteration_dirname(IMPORT_ITERATION)).mkdir(parents=True)
    dist.barrier()

    hashing = _background(content_hash, source.files) if rank == 0 else None  # overlaps the save
    dtype = getattr(torch, source.dtype)
    with torch.device("meta"):  # shapes, dtypes and sharding only: the data is produced while writing
        model = build_gpt_model(
            shape, seq_length=1, layout=layout, padded_vocab_size=padded, params_dtype=dtype,
            bf16=dtype == torch.bfloat16, perform_initialization=False,
        )
    state, owners, written = _sharded_state(model)
    producer = _Producer(source, model, shape, tp, tp_rank, owners)
    try:
        with _progress(show_progress and rank == 0, "import", written) as advance:
            producer.advance = advance
            dist_checkpointing.save({"model": state}, str(tmp / iteration_dirname(IMPORT_ITERATION)),
                                    sharded_strategy=_streaming_save_strategy(producer))
        source.close()
        del state, model, producer
        dist.barrier()
        if rank == 0:
            _finish_import(source, tmp, out_dir, layout, padded, hashing.result())
    except BaseException:  # a failed import (a full disk, above all) gives its space back and leaves nothing
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist.barrier()
    # every rank reads the tensors its layers need; report the source model once, not per rank
    return ConvertStats(len(source.where), source.weight_bytes, time.perf_counter() - start, out_dir)


def _finish_import(source: HFSource, tmp: Path, out_dir: Path, layout: ParallelLayout, padded: int,
                   source_hash: str) -> None:
    it_dir = tmp / iteration_dirname(IMPORT_ITERATION)
    files = {str(p.relative_to(it_dir)): p.stat().st_size for p in sorted(it_dir.rglob("*")) if p.is_file()}
    write_atomic(it_dir / MANIFEST_NAME, json.dumps({"iteration": IMPORT_ITERATION, "files": files},
                                                         indent=1, sort_keys=True))
    tok = tmp / TOKENIZER_DIR
    tok.mkdir()
    side = source.side_files()
    for f in side:
        shutil.copy2(f, tok / f.name)
    meta = CheckpointMeta(
        shape=source.shape, vocab_size=source.shape.vocab_size, padded_vocab_size=padded,
        family=source.family.name, hf_architecture=source.family.architecture, hf_config=source.config,
        dtype=source.dtype, source=str(source.path.absolute()), source_hash=source_hash,
        saved_layout={"tensor_parallel": layout.tensor_parallel, "pipeline_parallel": layout.pipeline_parallel},
        has_tokenizer=any(f.name.startswith("tokenizer") for f in side),
    )
    write(tmp, meta)
    write_atomic(tmp / LATEST_NAME, f"{IMPORT_ITERATION}\n")
    _fsync_tree(tmp)
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked by plan_import)
    os.replace(tmp, out_dir)


def _sharded_state(model) -> tuple[dict, dict[tuple[str, tuple[int, ...]], str], int]:
    """The model's sharded state dict with megatron's shard factories (SwiGLU fc1 -> gate and up
    halves) already built, and which parameter each ShardedTensor (checkpoint key, global offset: how
    the writer names it) is a view of, and how many of them this rank writes. The model lives on the
    meta device: nothing here holds data."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory, is_main_replica

    state = model.sharded_state_dict()
    owners, written = {}, 0
    for name, value in list(state.items()):
        if isinstance(value, ShardedTensorFactory):
            value = state[name] = value.build()
        for sh_ten in nested_values(value) if isinstance(value, (dict, list)) else [value]:
            if isinstance(sh_ten, ShardedTensor):
                owners[(sh_ten.key, tuple(sh_ten.global_offset))] = name
                written += is_main_replica(sh_ten.replica_id)  # what the writer saves (the rest: other ranks')
    return state, owners, written


class _Producer:
    """Makes the data of one write item when the writer asks for it: fills this rank's slice of the
    parameter the item is a view of from the Hugging Face shards (``experiment.ckpt.mapping``), then
    takes the item's view of it, exactly as megatron would have taken it from a filled model (same
    shape, strides and offset; views that do not cover their storage are cloned, as megatron's writer
    does). The last parameter is kept for the next item (fc1's gate and up halves come in a row)."""

    def __init__(self, source: HFSource, model, shape: ModelShape, tp: int, tp_rank: int,
                 owners: dict[tuple[str, tuple[int, ...]], str]):
        self.source, self.model, self.shape, self.tp, self.tp_rank = source, model, shape, tp, tp_rank
        self.owners = owners
        self.advance = lambda _desc: None
        self._last: tuple[str | None, object] = (None, None)

    def __call__(self, fqn: str, offset: tuple[int, ...], meta):
        name = self.owners.get((fqn, tuple(offset)))
        if name is None:
            raise CheckpointError(f"internal: the checkpoint writer asked for {fqn!r} at {tuple(offset)}, which is "
                                  "not a view of a GPTModel parameter")
        mapped = self._mapped(name, meta)
        if mapped is not None:
            return mapped
        if self._last[0] != name:
            self._last = (None, None)  # let the previous parameter go before filling the next
            self._last = (name, self._fill(name))
        full = self._last[1]
        out = full.as_strided(meta.size(), meta.stride(), meta.storage_offset())
        if out.untyped_storage().size() != out.numel() * out.element_size():
            out = out.clone()
        return out

    def _mapped(self, name: str, meta):
        """The item as a read-only map of the HF file when it is one run of whole rows of one HF
        tensor in the same dtype (most bytes of a model: embeddings, projections, fc1 halves): the
        writer then copies from the page cache once, with no fill and no fresh memory. The tensor is
        what megatron would write (contiguous, its storage exactly the item), so the bytes match."""
        param = self.model.get_parameter(name)
        if param.dim() < 2 or not meta.is_contiguous() or meta.numel() == 0:
            return None
        rule, layer = _rule_for(self.model, name, self.shape)
        names = [n.format(i=layer) for n in rule.hf]
        if self.source.dtype_of(names[0]) != param.dtype:
            return None
        runs = mapping.row_sources(rule, param.shape[0], self.source.shape_of(names[0])[0], self.tp, self.tp_rank)
        row_numel = param[0].numel()
        first, rem = divmod(meta.storage_offset(), row_numel)
        count, rem2 = divmod(meta.numel(), row_numel)
        if runs is None or rem or rem2:
            return None
        for row, n, which, hf_row in runs:
            if row <= first and first + count <= row + n:
                return self.source.map_rows(names[which], hf_row + first - row, count).view(meta.shape)
        return None

    def _fill(self, name: str):
        import torch

        param = self.model.get_parameter(name)
        rule, layer = _rule_for(self.model, name, self.shape)
        out = torch.empty(param.shape, dtype=param.dtype)
        fill_from_source(self.source, rule, layer, out, self.shape, self.tp, self.tp_rank)
        return out


def fill_from_source(source: HFSource, rule: mapping.Rule, layer: int | None, out, shape: ModelShape,
                     tp: int, rank: int) -> None:
    """``mapping.fill`` of this rank's parameter, with HF rows read straight into ``out`` where the
    rule is a row copy (``mapping.row_sources``): no intermediate copy of the largest tensors."""
    names = [n.format(i=layer) for n in rule.hf]
    runs = mapping.row_sources(rule, out.shape[0], source.shape_of(names[0])[0], tp, rank) if out.dim() else None
    if runs is None:  # QKV interleave, column split, scalars: the pure-tensor path
        mapping.fill(rule, [source.get(n) for n in names], out, shape, tp, rank)
        return
    covered = 0
    for row, n, which, hf_row in runs:
        source.read_rows(names[which], out[row:row + n], hf_row)
        covered = max(covered, row + n)
    out[covered:].zero_()


def _streaming_save_strategy(producer: _Producer):
    """megatron's torch_dist save strategy (synchronous, one file per rank), whose writer asks
    ``producer`` for each tensor just before writing it and lets it go right after, instead of
    taking every tensor from a filled model up front.

    The format, the planning (megatron's MCoreSavePlanner) and the metadata are megatron's and
    torch.distributed.checkpoint's own: only where the bytes come from differs, so the files are the
    ones a filled model would give."""
    import inspect

    import torch
    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync
    from megatron.core.dist_checkpointing.strategies.state_dict_saver import save_state_dict_async_plan
    from megatron.core.dist_checkpointing.strategies.torch import (
        MCoreSavePlanner,
        TorchDistSaveShardedStrategy,
        _replace_state_dict_keys_with_sharded_keys,
        mcore_to_pyt_state_dict,
    )
    from torch.distributed.checkpoint.filesystem import _write_item

    _in_process_results_queue()

    class Writer(FileSystemWriterAsync):
        # prepare_write_data (inherited) resolves every item: tensors are meta views, nothing is copied

        def get_save_function_and_args(self):
            if not self.write_buckets:
                return None, None, []
            return self.write_streaming, None, [torch.distributed.get_rank(), self.write_buckets, self.results_queue]

        def write_streaming(self, rank, write_buckets, results_queue) -> None:
            """megatron's write_preloaded_data, in this process, with each tensor made by ``producer``
            while the previous one is being written (one tensor ahead)."""
            transforms = [self.transforms] if hasattr(self, "transforms") else []
            extra = {}
            if "serialization_format" in inspect.signature(_write_item).parameters:
                from torch.distributed.checkpoint.filesystem import SerializationFormat

                extra["serialization_format"] = SerializationFormat.TORCH_SAVE
            results = {}
            with _no_record_crc32(), ThreadPoolExecutor(max_workers=1) as pool:
                for idx, (file_name, storage_key, (bytes_data, tensor_data)) in enumerate(write_buckets):
                    local = []
                    with DirectWriter(file_name) as stream:  # bypasses the page cache; fsynced on close
                        for item, data in bytes_data:
                            local.append(_write_item(*transforms, stream, data, item, storage_key, **extra))
                        make = lambda k: pool.submit(producer, tensor_data[k][0].index.fqn,  # noqa: E731
                                                     tensor_data[k][0].index.offset, tensor_data[k][1])
                        ahead = make(0) if tensor_data else None
                        for k, (item, _meta) in enumerate(tensor_data):
                            tensor = ahead.result()
                            ahead = make(k + 1) if k + 1 < len(tensor_data) else None
                            local.append(_write_item(*transforms, stream, tensor, item, storage_key, **extra))
                            del tensor
                            producer.advance(item.index.fqn)
                    results[idx] = local
            results_queue.put(results)

    class Strategy(TorchDistSaveShardedStrategy):
        def async_save(self, sharded_state_dict, checkpoint_dir):
            sharded_state_dict, _, _ = _replace_state_dict_keys_with_sharded_keys(
                sharded_state_dict, self.keep_only_main_replica)
            pyt_state_dict = mcore_to_pyt_state_dict(sharded_state_dict, False)
            writer = Writer(checkpoint_dir, separation_hint=self.separation_hint, thread_count=self.thread_count)
            planner = MCoreSavePlanner(dedup_replicated_tensors=not self.keep_only_main_replica,
                                       flatten_state_dict=False)
            ret, *_ = save_state_dict_async_plan(pyt_state_dict, writer, None, 0, planner=planner)
            return self._get_save_and_finalize_callbacks(writer, ret)

    return Strategy("torch_dist", 1, thread_count=1)


@contextmanager
def _no_record_crc32():
    """torch.save without the CRC32 of each zip record, for the duration of the import's writes.

    Measured on this 2-core VM (torch 2.13): torch.save of a 256 MB bf16 tensor took 0.25 s with the CRC
    against 0.07 s without, as fast as a raw write; the CRC is ~70% of the write's CPU. torch.load does not
    check it (its zip reader skips CRCs). What the CRC would catch, the lockfile already records and
    ``experiment reproduce --verify-only`` checks: the blake3 digest of every file of the base checkpoint."""
    import torch.serialization as ser  # the switch exists since torch 2.6; the kit pins 2.13, the GPU image has 2.11

    before = ser.get_crc32_options()
    ser.set_crc32_options(False)
    try:
        yield
    finally:
        ser.set_crc32_options(before)


def _rule_for(model, name: str, shape: ModelShape) -> tuple[mapping.Rule, int | None]:
    """The mapping rule of a GPTModel parameter and its global layer index."""
    if name == "output_layer.weight" and shape.tie_embeddings:
        name = "embedding.word_embeddings.weight"  # last pipeline stage's copy of the tied embedding
    if name.startswith("decoder.layers."):
        _, _, local, rest = name.split(".", 3)
        layer = model.decoder.layers[int(local)].layer_number - 1
        template = "decoder.layers.{i}." + rest
    else:
        layer, template = None, name
    for rule in mapping.RULES:
        if rule.mcore == template:
            return rule, layer
    raise CheckpointError(f"internal: GPTModel parameter {name!r} has no mapping rule in experiment/ckpt/mapping.py")


# ---------------------------------------------------------------- export

def global_shape(rule: mapping.Rule, shape: ModelShape, padded: int) -> tuple[int, ...]:
    """Shape of one layer's (or a global) tensor in the checkpoint, unsharded (from the rule's HF shapes)."""
    return rule.ckpt_shape(shape, padded)


def load_group(it_dir: Path, meta: CheckpointMeta, stored: dict, rules: list[mapping.Rule],
               layer: int | None, md=None) -> dict[str, object]:
    """Hugging Face tensors for ``rules`` at ``layer`` (None: the non-layer tensors), read from the
    checkpoint's "model" entries only, one box of the stored global tensors each (``boxes.load_boxes``:
    a box that is one stored chunk is a read-only map of the file; the HF views of it -- embedding rows,
    fc1 halves, whole copies -- stay maps until the writer copies them)."""
    shape = meta.shape
    request, ups = {}, {}
    for rule in rules:
        dtype = stored[rule.ckpt].properties.dtype
        full = global_shape(rule, shape, meta.padded_vocab_size)
        if layer is None:
            request[rule.ckpt] = ((0,) * len(full), full, dtype)
        elif rule.kind == "gate_up":  # gate and up asked for apart: megatron stores them as separate chunks
            half = (1, full[0] // 2, *full[1:])
            request[rule.ckpt] = ((layer,) + (0,) * len(full), half, dtype)
            ups[rule.ckpt] = ((layer, full[0] // 2) + (0,) * (len(full) - 1), half, dtype)
        else:
            request[rule.ckpt] = ((layer,) + (0,) * len(full), (1, *full), dtype)
    boxes = load_boxes(it_dir, request, md)
    up_boxes = load_boxes(it_dir, ups, md) if ups else {}
    out = {}
    for rule in rules:
        t = boxes[rule.ckpt]
        if rule.ckpt in up_boxes:  # = hf_parts of cat(gate, up): HF's gate_proj and up_proj
            out.update({rule.hf[0].format(i=layer): t[0], rule.hf[1].format(i=layer): up_boxes[rule.ckpt][0]})
        else:
            out.update(hf_parts(rule, t[0] if layer is not None else t, meta, layer))
    return out


def hf_parts(rule: mapping.Rule, tensor, meta: CheckpointMeta, layer: int | None) -> dict[str, object]:
    """The Hugging Face tensors (name -> contiguous tensor) of one layer's (or a global) Megatron tensor.
    On the meta device it gives the names and shapes without data (the export plans its files so)."""
    parts = mapping.from_mcore(rule, tensor, meta.shape, meta.vocab_size)
    return {name.format(i=layer): part.contiguous() for name, part in zip(rule.hf, parts)}


def export_checkpoint(ckpt_dir: str | Path, hf_dir: str | Path, iteration: int | None = None, *,
                      dtype: str | None = None, max_shard_bytes: int | None = None,
                      show_progress: bool = True) -> ConvertStats:
    """Write a Hugging Face folder (safetensors shards + config + tokenizer files) from a kit
    checkpoint, of any TP/PP layout, training checkpoints included (only "model" is read).

    Tensors are written in ``dtype`` (default: the imported source's dtype, so an import -> export
    round trip is bit-identical although megatron keeps norm weights in float32). Shards are at most
    ``max_shard_bytes`` (default: transformers' ``save_pretrained`` default). Beside the weights:
    ``generation_config.json`` and a model card ``README.md`` (``experiment.ckpt.card``).
    Needs a (single-process) torch.distributed group: ``experiment.model.parallel.initialize()``."""
    import torch

    ckpt_dir, hf_dir = Path(ckpt_dir), Path(hf_dir).absolute()
    meta = read(ckpt_dir)
    it_dir = iteration_path(ckpt_dir, iteration)
    refuse_existing_output(hf_dir, "HF_DIR")
    if max_shard_bytes is None:
        max_shard_bytes = card.transformers_max_shard_bytes()
    shape = meta.shape
    rules = mapping.rules_for(shape)
    stored = stored_tensors(it_dir)
    for rule in rules:
        if rule.ckpt not in stored:
            raise CheckpointError(f"{it_dir}: tensor {rule.ckpt!r} is not in the checkpoint; fix: export a checkpoint "
                                  f"written by `experiment ckpt import` or the kit's training runner")
        want = global_shape(rule, shape, meta.padded_vocab_size)
        have = tuple(stored[rule.ckpt].size)[-len(want):]
        if have != want:
            raise CheckpointError(f"{it_dir}: tensor {rule.ckpt!r} has shape {list(have)}, {META_NAME} implies "
                                  f"{list(want)}; fix: the checkpoint and {ckpt_dir / META_NAME} do not belong together")

    dtype_name = dtype or meta.dtype
    if dtype_name not in ("float32", "bfloat16", "float16"):
        raise CheckpointError(f"--dtype {dtype_name}: fix: use float32, bfloat16 or float16")
    out_dtype = getattr(torch, dtype_name)
    tmp = hf_dir.parent / f".{hf_dir.name}.exporting"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    layer_rules = [r for r in rules if r.per_layer]
    other_rules = [r for r in rules if not r.per_layer]
    groups: list[int | None] = [None, *range(shape.num_layers)]
    plan = {g: _planned_group(meta, other_rules if g is None else layer_rules, g, out_dtype) for g in groups}
    written: list[tuple[str, list[str]]] = []
    nbytes = sum(t.numel() * t.element_size() for g in groups for t in plan[g].values())
    ntensors = sum(len(plan[g]) for g in groups)
    md = metadata(it_dir)

    def read_group(layer):
        return load_group(it_dir, meta, stored, other_rules if layer is None else layer_rules, layer, md)

    try:
        with _progress(show_progress, "export", len(groups)) as advance, ThreadPoolExecutor(1) as reader:
            ahead = reader.submit(read_group, groups[0])
            index = 0
            for k, shard in enumerate(_shards(plan, groups, max_shard_bytes)):
                name = f"part-{k:05d}.safetensors"
                entries = [(n, t.dtype, tuple(t.shape)) for g in shard for n, t in plan[g].items()]
                with SafetensorsWriter(tmp / name, entries, {"format": "pt"}) as out:
                    for layer in shard:  # the next group is read while this one is written, then let go
                        tensors = ahead.result()
                        index += 1
                        ahead = reader.submit(read_group, groups[index]) if index < len(groups) else None
                        for hf_name, tensor in tensors.items():
                            out.write(hf_name, tensor.to(out_dtype))
                        del tensors
                        advance("non-layer tensors" if layer is None else f"layer {layer}")
                written.append((name, [e[0] for e in entries]))
        _finish_export(tmp, hf_dir, ckpt_dir, meta, written, dtype_name, nbytes, int(it_dir.name.split("_")[-1]))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConvertStats(ntensors, nbytes, time.perf_counter() - start, hf_dir)


def _planned_group(meta: CheckpointMeta, rules: list[mapping.Rule], layer: int | None, dtype) -> dict:
    """The Hugging Face tensors one group will give (name -> meta-device tensor of the output dtype), from
    the checkpoint's metadata alone: the export writes each file's header before reading any data."""
    import torch

    out = {}
    for rule in rules:
        full = torch.empty(global_shape(rule, meta.shape, meta.padded_vocab_size), dtype=dtype, device="meta")
        out.update(hf_parts(rule, full, meta, layer))
    return out


def _shards(plan: dict, groups: list, max_bytes: int) -> list[list]:
    """Groups (never split) packed in order into files of at most ``max_bytes`` (a larger group alone)."""
    shards, current, size = [], [], 0
    for g in groups:
        n = sum(t.numel() * t.element_size() for t in plan[g].values())
        if current and size + n > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(g)
        size += n
    return shards + [current] if current else shards


def _finish_export(tmp: Path, hf_dir: Path, ckpt_dir: Path, meta: CheckpointMeta, written, dtype: str,
                   nbytes: int, iteration: int) -> None:
    n = len(written)
    weight_map = {}
    for k, (old, names) in enumerate(written):
        new = "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        os.replace(tmp / old, tmp / new)
        weight_map |= {name: new for name in names}
    if n > 1:
        index = {"metadata": {"total_size": nbytes}, "weight_map": dict(sorted(weight_map.items()))}
        write_atomic(tmp / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
    config = dict(meta.hf_config) or mapping.config_from_shape(meta.shape, meta.family)  # from-scratch runs have none
    config.pop("quantization_config", None)  # a GGUF source's loader note, not a property of these weights
    if "torch_dtype" in config and "dtype" not in config:
        config["torch_dtype"] = dtype
    else:
        config["dtype"] = dtype
    write_atomic(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok = ckpt_dir / TOKENIZER_DIR
    if tok.is_dir():
        for f in sorted(tok.iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
    write_atomic(tmp / card.GENERATION_NAME, card.generation_config(config))
    write_atomic(tmp / card.CARD_NAME, card.model_card(meta, ckpt_dir, iteration))
    _fsync_tree(tmp)
    if hf_dir.exists():
        hf_dir.rmdir()
    os.replace(tmp, hf_dir)


# ---------------------------------------------------------------- helpers

def _background(fn, *args):
    """Run ``fn`` in a thread (blake3 and file reads release the GIL); ``.result()`` joins it."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future


def _fsync_tree(folder: Path) -> None:
    for p in [*folder.rglob("*"), folder]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _progress:
    """A rich progress bar on the process that reports, a no-op elsewhere."""

    def __init__(self, enabled: bool, label: str, total: int):
        self.enabled, self.label, self.total = enabled, label, total

    def __enter__(self):
        if not self.enabled:
            return lambda _desc: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[item]}"), transient=True)
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=self.total, item="")
        return lambda desc: self.bar.update(task, advance=1, item=desc)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False
