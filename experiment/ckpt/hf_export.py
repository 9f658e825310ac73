"""Megatron-Core checkpoint -> Hugging Face folder export, streamed one layer at a time.

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
from pathlib import Path

from experiment.atomic import write_atomic
from experiment.ckpt import card, mapping
from experiment.ckpt.boxes import load_boxes, metadata, stored_tensors
from experiment.ckpt.conversion import ConvertStats, fsync_tree, progress_bar, refuse_existing_output
from experiment.ckpt.meta import (
    META_NAME,
    TOKENIZER_DIR,
    CheckpointError,
    CheckpointMeta,
    iteration_path,
    read_meta,
)
from experiment.ckpt.safetensors_out import SafetensorsWriter
from experiment.model.presets import ModelShape


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
    meta = read_meta(ckpt_dir)
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
        with progress_bar(show_progress, "export", len(groups)) as advance, ThreadPoolExecutor(1) as reader:
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
    fsync_tree(tmp)
    if hf_dir.exists():
        hf_dir.rmdir()
    os.replace(tmp, hf_dir)

