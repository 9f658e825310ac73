"""Hugging Face -> Megatron-Core distributed checkpoint import, streamed one tensor at a time.

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
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from experiment.atomic import write_atomic
from experiment.ckpt import mapping
from experiment.ckpt.conversion import (
    ConvertStats,
    fsync_tree,
    in_process_results_queue,
    progress_bar,
    refuse_existing_output,
)
from experiment.ckpt.direct_writer import DirectWriter
from experiment.ckpt.meta import (
    LATEST_NAME,
    TOKENIZER_DIR,
    CheckpointError,
    CheckpointMeta,
    iteration_dirname,
    write,
)
from experiment.ckpt.source import HFSource, content_hash, open_hf
from experiment.model.build import ParallelLayout, padded_vocab_size
from experiment.model.presets import ModelShape

IMPORT_ITERATION = 1
MANIFEST_NAME = "kit_manifest.json"  # same file the training checkpointer writes (experiment.train.checkpointing)


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
        with progress_bar(show_progress and rank == 0, "import", written) as advance:
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
    fsync_tree(tmp)
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

    in_process_results_queue()

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


def _background(fn, *args):
    """Run ``fn`` in a thread (blake3 and file reads release the GIL); ``.result()`` joins it."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future
