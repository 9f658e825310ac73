"""The held-out documents of a training folder, per domain, as text; and which domains are targets.

Why these documents: the runner evaluates each domain on megatron's valid split of its shards (the same
``split`` string the training split uses, so these documents are never trained on). ``experiment eval``
reads the same documents (megatron's own split arithmetic over each shard's documents), detokenized with
the model's tokenizer, so its perplexity is comparable with the runner's held-out loss.

Targets and replay: with several languages, a language whose share of the mix is above 1/L (L languages;
the largest when none is) is a target and all its domains are targets; the others' are replay. With one
language the same rule runs over domains. ``--target`` overrides it.
"""

from __future__ import annotations

import json
from pathlib import Path

from experiment.atomic import write_atomic


def shares(plan) -> dict[str, tuple[str, float]]:
    """Per held-out key (``plan.sources()``): its language and its share of the mix's weight."""
    keys = plan.sources()
    total = sum(e.weight for e in plan.entries) or 1.0
    out = {}
    for key, prefixes in keys.items():
        ps = set(map(str, prefixes))
        entries = [e for e in plan.entries if str(e.prefix) in ps]
        out[key] = (entries[0].language if entries else "", sum(e.weight for e in entries) / total)
    return out


def targets(plan, override: list[str] | None = None) -> set[str]:
    """The target domains (held-out keys); the rest are replay (module docstring)."""
    sh = shares(plan)
    if override:
        return set(override)
    langs: dict[str, float] = {}
    for lang, s in sh.values():
        langs[lang] = langs.get(lang, 0.0) + s
    if len(langs) > 1:
        chosen = {lang for lang, s in langs.items() if s > 1 / len(langs)} or {max(langs, key=langs.get)}
        return {k for k, (lang, _) in sh.items() if lang in chosen}
    doms = {k: s for k, (_, s) in sh.items()}
    return {k for k, s in doms.items() if s > 1 / len(doms)} or {max(doms, key=doms.get)}


def valid_documents(prefix: str, valid_fraction: float) -> range:
    """Document indices of megatron's valid split of one shard (megatron's own split arithmetic)."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from experiment.mixture.outputs import split_string

    n = IndexedDataset(prefix).sequence_lengths.shape[0]
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split_string(valid_fraction)))
    lo, hi = matrix[1] or (0.0, 0.0)
    return range(int(round(lo * n)), int(round(hi * n)))


def write_documents(folder, tokenizer, out_dir: Path, max_docs: int, max_tokens: int | None = None) -> dict[str, Path]:
    """``out_dir/heldout_<domain>.jsonl`` per domain that has held-out documents: {"text", "tokens"}, at most
    ``max_docs`` per domain (the first of each shard's valid split, shards in turn) and, with ``max_tokens``,
    at most that many of the shards' tokens per domain (the last document cut there): the eval's cost is
    its tokens (forward passes over them), not its documents, whose lengths differ by 10x or more."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from experiment.data import signature as sig
    from experiment.mixture.plan import plan_folder

    plan = plan_folder(folder)
    eod = sig.read_signature(folder.signature_paths[0]).tokenizer.eod_id
    vf = folder.config.data.valid_fraction
    out: dict[str, Path] = {}
    for key, prefixes in sorted(plan.sources().items()):
        docs: list[dict] = []
        budget = max_tokens if max_tokens else None
        picks = [(str(p), list(valid_documents(str(p), vf))) for p in prefixes] if vf > 0 else []
        opened = {prefix: IndexedDataset(prefix) for prefix, ids in picks if ids}
        while len(docs) < max_docs and (budget is None or budget > 0) and any(ids for _, ids in picks):
            for prefix, ids in picks:
                if ids and len(docs) < max_docs and (budget is None or budget > 0):
                    tokens = np.asarray(opened[prefix][ids.pop(0)]).tolist()
                    tokens = [t for t in tokens if t != eod][:budget]
                    text = tokenizer.decode(tokens)
                    if text.strip():
                        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                        docs.append({"text": text, "tokens": n})
                        budget = budget - len(tokens) if budget is not None else None
        if docs:
            path = out_dir / f"heldout_{safe(key)}.jsonl"
            write_atomic(path, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
            out[key] = path
    return out


def safe(key: str) -> str:
    """A domain key as a task/file name part (``ja/manual`` -> ``ja_manual``)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
