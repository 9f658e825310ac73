"""The planner's file I/O: a training folder's signatures and mixing rules read, and ``plan_folder``.

The only file I/O of the planner lives here (``plan_folder`` is what the runner, ``experiment mix``, the
lockfile and the report call), so the rules in ``mixture.weights`` and ``mixture.rules`` stay pure
functions of a ``ShardTable`` and a ``MixtureSpec``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from experiment.folder import Problem, TrainingFolder
from experiment.mixture import inputs
from experiment.mixture.datatypes import MixtureError, MixturePlan, MixtureSpec, ShardTable, no_gc
from experiment.mixture.rules import parse_budget, scaled_budget
from experiment.mixture.weights import plan

SCALED_BUDGET = "scaled"


def read_exclude(raw: Any, file: str) -> list[str]:
    """``[name, ...]`` or seed 002's ``{"exclude_iterator_name": [name, ...]}``."""
    names, problems = inputs.read_exclude_list(raw, file)
    if problems:
        raise MixtureError(problems)
    return names


_TEXT = ("prefix", "language", "domain", "subdomain")
_COUNTS = ("tokens", "bin_bytes", "idx_bytes")


def read_signature_shards(path: Path) -> ShardTable:
    """The shards of one data signature, with absolute prefixes.

    Reads the JSON with orjson and takes the fields the planner uses column by column, checking their types
    and signs column-wise (several times faster than a full pydantic validation of a 100,000-shard
    signature); if anything is off, the full ``experiment.data.signature.read`` runs, whose error names the
    entry and the field."""
    from experiment.data.signature import DataSignature, read_signature

    try:
        with no_gc():
            raw = orjson.loads(path.read_bytes())
            entries = raw["shards"]
            cols = {f: [e[f] for e in entries] for f in _TEXT + _COUNTS}
            del entries
        ok = (isinstance(raw["root"], str) and all(set(map(type, cols[f])) <= {str} for f in _TEXT)
              and all(set(map(type, cols[f])) <= {int} and min(cols[f], default=0) >= 0 for f in _COUNTS))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        read_signature(path)  # raises pydantic's ValidationError, naming the entry and the field
        raise ValueError(f"{path}: not a data signature the planner can read")
    root = DataSignature.model_construct(root=raw["root"]).root_path(path)
    head = str(root).rstrip("/") + "/"
    rel = cols["prefix"]
    return ShardTable([head + p for p in rel], [p.rpartition("/")[2] for p in rel], cols["language"],
                      cols["domain"], cols["subdomain"], cols["tokens"], cols["bin_bytes"], cols["idx_bytes"],
                      [str(path)] * len(rel))


def shards_from_signatures(folder: TrainingFolder) -> ShardTable:
    return ShardTable.concat([read_signature_shards(p) for p in folder.signature_paths])


def training_tokens(folder: TrainingFolder) -> tuple[int, str]:
    t, seq = folder.config.training, folder.config.model.seq_length
    if t.train_tokens is not None:
        return parse_budget(t.train_tokens), "training.train_tokens"
    assert t.train_iters is not None
    return t.train_iters * t.global_batch_size * seq, (
        f"training.train_iters {t.train_iters} x global_batch_size {t.global_batch_size} x seq_length {seq}")


def spec_from_folder(folder: TrainingFolder, shards: ShardTable | None = None) -> MixtureSpec:
    d = folder.config.data
    rel = lambda p: str(folder.resolve(p))  # noqa: E731
    cfg_file = str(folder.path / "experiment.toml")
    data_ratio = folder.read_json(d.data_ratio)
    lang_prob = folder.read_json(d.lang_prob) if d.lang_prob else None
    exclude = read_exclude(folder.read_json(d.exclude_iterator), rel(d.exclude_iterator)) if d.exclude_iterator else []
    spec = MixtureSpec(
        data_ratio=data_ratio, lang_prob=lang_prob, exclude=exclude,
        target_proportions=d.target_proportions, max_epochs=d.max_epochs,
        optional=tuple(getattr(d, "optional_domains", ()) or ()),
        normalize_lang_prob=bool(getattr(d, "normalize_lang_prob", False)),
        seq_length=folder.config.model.seq_length,
        ratio_file=rel(d.data_ratio), lang_prob_file=rel(d.lang_prob) if d.lang_prob else "lang_prob.json",
        exclude_file=rel(d.exclude_iterator) if d.exclude_iterator else "exclude_iterator.json",
        config_file=cfg_file,
    )
    if d.token_budget is None:
        budget, source = training_tokens(folder)
    elif d.token_budget.strip().lower() == SCALED_BUDGET:
        if shards is None:
            shards = shards_from_signatures(folder)
        budget, source = scaled_budget(shards, spec), "data.token_budget = scaled (sum of tokens x multiplier)"
    else:
        try:
            budget, source = parse_budget(d.token_budget), "data.token_budget"
        except ValueError as err:
            raise MixtureError([Problem(cfg_file, "data.token_budget", str(err), "write e.g. 50B")]) from None
    return MixtureSpec(**{**spec.__dict__, "budget_tokens": budget, "budget_from": source})


def plan_folder(folder: TrainingFolder) -> MixturePlan:
    """The folder's mixture; ``MixtureError`` lists every problem (files named, entries named)."""
    shards = shards_from_signatures(folder)
    return plan(shards, spec_from_folder(folder, shards))
