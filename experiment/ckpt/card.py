"""What an exported Hugging Face folder says about itself beside the weights: ``generation_config.json``
(transformers' ``GenerationConfig`` from the model's token ids) and a model card ``README.md``
(``huggingface_hub.ModelCard``: YAML metadata + text) naming the base model, the datasets (from the data
signatures), the token counts, a training summary and the hash of the run's lockfile.

The training folder is found from the checkpoint folder (``<folder>/<checkpoint.save>``); a checkpoint
that came from ``experiment ckpt import`` alone gets a card with the base model only. No host path is
written: files are named relative to the training folder, sources by their file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiment import runlog
from experiment.ckpt.meta import CheckpointMeta

CARD_NAME = "README.md"
GENERATION_NAME = "generation_config.json"


# transformers' ``save_pretrained`` default ``max_shard_size`` (5.x), so an export shards as it would.
# A constant, not read from transformers at run time: that read imports transformers.modeling_utils (~2.5 s,
# more than the export of a 1B model takes); tests/ckpt/test_ckpt_card.py checks it against the pinned one.
SAVE_PRETRAINED_MAX_SHARD = "50GB"


def transformers_max_shard_bytes() -> int:
    """``SAVE_PRETRAINED_MAX_SHARD`` in bytes (transformers counts GB as 10**9)."""
    return int(SAVE_PRETRAINED_MAX_SHARD.removesuffix("GB")) * 10**9


def generation_config(hf_config: dict) -> str:
    """``generation_config.json`` text: transformers' own derivation from the model config's token ids."""
    from transformers import GenerationConfig, PretrainedConfig

    return GenerationConfig.from_model_config(PretrainedConfig(**{
        k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
        if hf_config.get(k) is not None})).to_json_string(use_diff=True)


def training_folder_of(ckpt_dir: Path):
    """The training folder whose ``checkpoint.save`` is ``ckpt_dir`` (None for an imported checkpoint)."""
    from experiment.folder import CONFIG_NAME, FolderError, load_schema

    parent = ckpt_dir.resolve().parent
    if not (parent / CONFIG_NAME).is_file():
        return None
    try:
        folder = load_schema(parent, require_artifacts=False)
    except FolderError:
        return None
    return folder if folder.resolve(folder.config.checkpoint.save) == ckpt_dir.resolve() else None


def _base_model(meta: CheckpointMeta) -> str:
    name = meta.hf_config.get("_name_or_path") or ""
    if name and not Path(name).is_absolute():
        return str(name)
    return Path(meta.source).name or meta.source


def _datasets(folder) -> tuple[list[str], list[tuple[str, str, str, int, int]]]:
    """Signature names and their (signature, language, domain, documents, tokens) rows."""
    from experiment.data import signature as sigmod

    names, rows = [], []
    for path in folder.signature_paths:
        if not path.is_file():
            continue
        sig = sigmod.read_signature(path)
        names.append(sig.name)
        agg: dict[tuple[str, str], list[int]] = {}
        for s in sig.shards:
            a = agg.setdefault((s.language, s.domain), [0, 0])
            a[0] += s.docs
            a[1] += s.tokens
        rows += [(sig.name, lang, dom, d, t) for (lang, dom), (d, t) in sorted(agg.items())]
    return names, rows


def model_card(meta: CheckpointMeta, ckpt_dir: Path, iteration: int) -> str:
    """The card's text (front matter + Markdown); ``huggingface_hub.ModelCard`` parses it."""
    from huggingface_hub import ModelCard, ModelCardData

    base = _base_model(meta)
    folder = training_folder_of(ckpt_dir)
    lines: list[str] = []
    datasets: list[str] = []
    tags = ["midtrain-kit", "megatron-core", "continual-pretraining"]
    if folder is None:
        title = f"{base} (converted)"
        lines += [f"Converted from `{base}` by midtrain-kit (`experiment ckpt import` -> `experiment ckpt export`), "
                  "without further training.", ""]
    else:
        cfg, t = folder.config, folder.config.training
        title = f"{cfg.name}"
        datasets, rows = _datasets(folder)
        seq = cfg.model.seq_length
        tokens = iteration * t.global_batch_size * seq
        lines += [cfg.description or "", "",
                  f"Continual pretraining of `{base}` with midtrain-kit (Megatron-Core), training folder "
                  f"`{cfg.name}`, exported at iteration {iteration}.", ""]
        lines += ["## Training", "", "| what | value |", "| --- | --- |",
                  f"| base model | `{base}` |", f"| iterations | {iteration} |",
                  f"| tokens trained | {tokens:,} ({iteration} x {t.global_batch_size} x {seq}) |",
                  f"| learning rate | {t.lr:g} -> {t.min_lr:g} ({t.lr_decay_style}, warmup {t.lr_warmup_iters}) |",
                  f"| precision | {t.precision} |",
                  f"| parallelism | TP={t.tensor_parallel}, PP={t.pipeline_parallel}, "
                  f"{cfg.launch.nnodes} node(s) x {cfg.launch.nproc_per_node} |", f"| seed | {t.seed} |"]
        if folder.overrides:
            lines.append(f"| overrides | {' '.join(f'`--set {o}`' for o in folder.overrides)} |")
        lines += _run_rows(folder)
        lines.append("")
        if rows:
            lines += ["## Data", "", "Token counts of the data signatures the run read (the mixture decides how "
                      "much of each was seen).", "", "| signature | language | domain | documents | tokens |",
                      "| --- | --- | --- | ---: | ---: |"]
            lines += [f"| {s} | {lang} | {dom} | {d:,} | {tok:,} |" for s, lang, dom, d, tok in rows]
            lines.append("")
    lines += ["## Architecture", "", f"`{meta.hf_architecture}` ({meta.family} family): "
              f"{meta.shape.num_layers} layers, hidden {meta.shape.hidden_size}, "
              f"{meta.shape.num_attention_heads} heads ({meta.shape.num_query_groups} KV groups), "
              f"vocabulary {meta.vocab_size}, weights stored as {meta.dtype}.", "",
              f"Base weights hash (blake3): `{meta.source_hash}`.", ""]
    data = ModelCardData(base_model=base, datasets=datasets or None, library_name="transformers", tags=tags,
                         pipeline_tag="text-generation")
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n" + "\n".join(lines)))


def _run_rows(folder) -> list[str]:
    """Rows from the run's own records: final loss, held-out losses, the lockfile's hash."""
    from experiment.lock.hashing import hash_file

    rows: list[str] = []
    logs = folder.path / runlog.LOGS
    s: dict[str, Any] = runlog.read_status(logs)
    if s.get("final_loss"):
        rows.append(f"| final train loss | {float.fromhex(s['final_loss']):.4f} |")
    last: dict[str, tuple[int, float]] = {}
    for r in runlog.read_evals(logs):
        last[r["domain"]] = (r["iteration"], float.fromhex(r["loss"]))
    rows += [f"| held-out loss {d} (iteration {it}) | {v:.4f} |" for d, (it, v) in sorted(last.items())]
    lock = folder.path / runlog.LOCK
    if lock.is_file():
        rows.append(f"| lockfile | `{runlog.LOCK}` blake3 `{hash_file(lock, 'blake3')}` |")
    return rows
