"""The mixture a run trained on, recorded in the run, and the guard that refuses a changed one on resume.

Megatron's BlendedDataset is an index from sample number to (shard, sample in shard), built from the weights.
A run that resumes at ``consumed_samples = N`` with other weights reads a different index past N: samples it
has already seen come again and others are never reached, silently. So the run records the plan
(``mixture.json``: every shard, weight and the fingerprint) when it starts, and a resume with a different
fingerprint is refused unless ``data.allow_mixture_change = true`` says the change is meant.
"""

from __future__ import annotations

import json
from pathlib import Path

from experiment.atomic import write_atomic
from experiment.folder import Problem
from experiment.mixture.datatypes import MixtureError, MixturePlan
from experiment.mixture.outputs import fingerprint, mixture_json

RECORD_NAME = "mixture.json"


class MixtureChanged(MixtureError):
    """The folder's mixture differs from the one the run started with."""


def write_record(run_dir: Path, plan: MixturePlan) -> Path:
    path = Path(run_dir) / RECORD_NAME
    write_atomic(path, mixture_json(plan))
    return path


def read_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def differences(previous: dict, plan: MixturePlan, limit: int = 10) -> list[str]:
    """What changed, shard by shard (names, not host paths), at most ``limit`` lines plus a count."""
    before = {s["name"]: s["weight"] for s in previous.get("shards", [])}
    after = {e.name: e.weight for e in plan.entries}
    out = [f"shard added: {n} (weight {after[n]:.6g})" for n in sorted(after.keys() - before.keys())]
    out += [f"shard removed: {n} (weight was {before[n]:.6g})" for n in sorted(before.keys() - after.keys())]
    out += [f"weight of {n}: {before[n]:.6g} -> {after[n]:.6g}" for n in sorted(after.keys() & before.keys())
            if before[n] != after[n]]
    if not out and previous.get("fingerprint") != fingerprint(plan):
        out.append("the shards' order or token counts changed")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


def check_resume(run_dir: Path, plan: MixturePlan, allow_change: bool, config_file: str = "experiment.toml"
                 ) -> list[str]:
    """Before resuming: [] if the mixture is the recorded one (or none is recorded); the differences if a
    change is allowed; ``MixtureChanged`` naming the setting otherwise."""
    previous = read_record(run_dir)
    if previous is None or previous.get("fingerprint") == fingerprint(plan):
        return []
    changes = differences(previous, plan)
    if allow_change:
        return changes
    raise MixtureChanged([Problem(
        config_file, "data.allow_mixture_change",
        f"the mixture differs from the one this run started with ({run_dir / RECORD_NAME}): " + "; ".join(changes)
        + ". Resuming would re-read some samples and skip others",
        "restore data_ratio.json / lang_prob.json / the exclude list / the signatures, start a new run, or set "
        "data.allow_mixture_change = true to continue with the new mixture on purpose")])
