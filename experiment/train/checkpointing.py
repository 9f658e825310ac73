"""Saving and loading training checkpoints: megatron.core ``dist_checkpointing`` in Megatron-LM's layout.

``<save>/iter_XXXXXXX/`` holds the shards of ``{"model", "optimizer", "opt_param_scheduler",
"rng_state", "iteration", "consumed_samples"}`` (the "model" key is what ``experiment ckpt export``
reads), ``<save>/latest_checkpointed_iteration.txt`` names the newest complete one.

Crash safety: every rank writes into ``iter_XXXXXXX.partial``; only after all ranks finished does rank
0 write a manifest (file names, sizes and blake3 hashes), rename the folder into place and then update
the marker, each through a temporary name.

Resume never loses work (``load_training``): a checkpoint is first checked against its manifest and the
run's record of its save (``logs/saves.jsonl``, which outlives retention; the checks are ``integrity``'s).
Only a known kind of damage (a missing file, a size or hash that differs, no manifest) falls back to the
previous checkpoint; the damaged one is moved aside to ``<save>/damaged/`` (never deleted) and listed in
``logs/aside.jsonl``. Any other load error, or no checkpoint that loads, stops the run with one message naming
each checkpoint and why (``CheckpointLoadError``); starting again from the base is an explicit choice
(``experiment run --restart``). Every rank reaches the same verdict.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiment.atomic import write_atomic
from experiment.errors import KitError
from experiment.model.strategies import dist_strategies
from experiment.train.integrity import (
    DAMAGED_DIR,
    MANIFEST_NAME,
    Verdict,
    file_hashes,
    fsync_dir,
    inspect,
    inspect_sizes,
    is_complete,
    listing,
    move_aside,
)

log = logging.getLogger(__name__)

LATEST_NAME = "latest_checkpointed_iteration.txt"
PARTIAL_SUFFIX = ".partial"


class CheckpointLoadError(KitError, RuntimeError):
    """No usable checkpoint where one was required; the message names the folder and the fix."""


def iteration_dir(save_dir: Path, iteration: int) -> Path:
    return Path(save_dir) / f"iter_{iteration:07d}"


# ---------------------------------------------------------------- which checkpoints there are

def read_latest(save_dir: Path) -> int | None:
    marker = Path(save_dir) / LATEST_NAME
    if not marker.is_file():
        return None
    text = marker.read_text().strip()
    return int(text) if text.isdigit() else None


def candidates(save_dir: Path) -> list[int]:
    """Iterations to try, newest first: the marker's, then every older iter_ folder."""
    save_dir = Path(save_dir)
    found = sorted(
        (int(p.name[5:]) for p in save_dir.glob("iter_*") if p.name[5:].isdigit() and p.is_dir()),
        reverse=True,
    )
    latest = read_latest(save_dir)
    if latest is None:
        return found
    return [latest] + [it for it in found if it < latest]


def usable_iterations(save_dir: Path) -> tuple[list[int], list[str]]:
    """Complete checkpoints newest first, and a warning for every newer one that is not."""
    warnings, good = [], []
    for it in candidates(save_dir):
        ok, why = is_complete(iteration_dir(save_dir, it))
        if ok:
            good.append(it)
        else:
            warnings.append(f"checkpoint iteration {it} is not usable: {why}")
    return good, warnings


# ---------------------------------------------------------------- RNG

def rng_state() -> dict:
    import torch
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {
        "random": random.getstate(),
        "np": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    import torch
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object():
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(
        "rng_state", [rng_state()],
        (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()),
        (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
        replica_id=ps.get_data_parallel_rank(with_context_parallel=True),
    )


# ---------------------------------------------------------------- save / load

@dataclass
class TrainState:
    """Everything besides model and optimizer that an exact resume needs."""

    iteration: int = 0
    consumed_samples: int = 0


def _sharded_state(model, optimizer, scheduler, state: TrainState | None, *, is_loading: bool) -> dict:
    model_sd = model.sharded_state_dict()
    out = {"model": model_sd}
    if optimizer is not None:
        # dp_reshardable: every rank writes its own optimizer shard, no gather (Megatron-LM's default)
        out["optimizer"] = optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata={"distrib_optim_sharding_type": "dp_reshardable"})
        out["opt_param_scheduler"] = scheduler.state_dict()
        out["rng_state"] = _rng_sharded_object()
    if state is not None:
        out["iteration"] = state.iteration
        out["consumed_samples"] = state.consumed_samples
        out["checkpoint_version"] = 3.0
    return out


def save(save_dir: Path, model, optimizer, scheduler, state: TrainState, *, meta_json: str | None = None,
         log_dir: Path | None = None) -> Path:
    """Write ``iter_XXXXXXX`` for ``state.iteration`` on all ranks; returns its path. Collective."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    save_dir = Path(save_dir)
    final = iteration_dir(save_dir, state.iteration)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    rank = dist.get_rank()
    if rank == 0:
        save_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
    dist.barrier()
    save_strategy, _ = dist_strategies()
    dist_checkpointing.save(
        _sharded_state(model, optimizer, scheduler, state, is_loading=False), str(partial),
        sharded_strategy=save_strategy,
    )
    dist.barrier()
    if rank == 0:
        _normalize_dcp_metadata(partial, final.name, state.iteration)
        files = listing(partial)
        write_atomic(partial / MANIFEST_NAME, json.dumps(
            {"iteration": state.iteration, "files": files, "hashes": file_hashes(partial, files)},
            indent=1, sort_keys=True))
        if final.exists():  # a save never writes into an existing checkpoint: the old one goes aside
            move_aside(final, save_dir, log_dir, "a newer save of the same iteration replaced it")
        os.replace(partial, final)
        fsync_dir(save_dir)
        if meta_json is not None:
            write_atomic(save_dir / "kit_checkpoint.json", meta_json)
        write_atomic(save_dir / LATEST_NAME, f"{state.iteration}\n")
    dist.barrier()
    return final


def _normalize_dcp_metadata(folder: Path, name: str, iteration: int) -> None:
    """Make torch DCP's ``.metadata`` a function of the checkpoint's content only.

    torch records the absolute save path (here the ``.partial`` name) and a random uuid as
    ``storage_meta``; both are informational (loading ignores them) but make two identical runs differ
    byte for byte. They are replaced by the folder's final name and the iteration.
    """
    import pickle

    from torch.distributed.checkpoint.metadata import StorageMeta

    path = folder / ".metadata"
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        metadata = pickle.load(fh)
    if getattr(metadata, "storage_meta", None) is not None:
        metadata.storage_meta = StorageMeta(checkpoint_id=name, save_id=f"iteration-{iteration}")
        write_atomic(path, pickle.dumps(metadata))


def _from_rank0(compute):
    """Rank 0's value of ``compute()`` on every rank (other ranks do not call it): one verdict for all."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return compute()
    box = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _first_error(error: str | None) -> str | None:
    """The first rank's load error (``rank R: ...``), the same on every rank; None when all loaded."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return error
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return next((f"rank {r}: {e}" for r, e in enumerate(errors) if e), None)


def load_training(save_dir: Path, model, optimizer, scheduler, *, log_dir: Path | None = None,
                  recorded: dict[int, dict[str, str]] | None = None) -> tuple[TrainState | None, list[str]]:
    """Resume from the newest checkpoint in ``save_dir`` that passes its checks (model, optimizer, schedule,
    RNG, counters). Collective; every rank reaches the same verdict.

    Returns (None, []) only when there is no checkpoint at all. Newer checkpoints with a known kind of
    damage are moved aside (``move_aside``) once an older one has loaded; the notes say so. A load error of
    a checkpoint whose files are intact, or no checkpoint that passes, raises ``CheckpointLoadError``
    naming each checkpoint and why, with nothing moved. ``recorded``: iteration -> {file: hash} from the
    run's record of its saves (``logs/saves.jsonl``).
    """
    from megatron.core import dist_checkpointing

    save_dir = Path(save_dir)
    its = candidates(save_dir) if save_dir.is_dir() else []
    if not its:
        return None, []
    verdicts = _from_rank0(lambda: [inspect(iteration_dir(save_dir, it), (recorded or {}).get(it)) for it in its])
    failed: list[Verdict] = []
    for verdict in verdicts:
        if not verdict.ok:
            failed.append(verdict)
            continue
        it, folder = verdict.iteration, iteration_dir(save_dir, verdict.iteration)
        _materialize_optimizer_state(optimizer)
        _, load_strategy = dist_strategies()
        error = None
        try:
            loaded = dist_checkpointing.load(
                _sharded_state(model, optimizer, scheduler, TrainState(), is_loading=True), str(folder),
                sharded_strategy=load_strategy,
            )
        except Exception as err:  # intact files that do not load: another code, megatron-core or model field
            log.warning("loading %s failed", folder, exc_info=True)
            error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        error = _first_error(error)
        if error is not None:
            raise CheckpointLoadError(_none_loads(save_dir, [*failed, Verdict(it, "load", error)], its))
        import torch

        with torch.no_grad():  # fp32 main params are views of the (grad-requiring) model params
            model.load_state_dict(loaded["model"], strict=True)
            optimizer.load_state_dict(loaded["optimizer"])
        _restore_adam_steps(optimizer)
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
        rng = loaded["rng_state"]
        set_rng_state(rng[0] if isinstance(rng, list) else rng)
        notes = [f"checkpoint iteration {v.iteration} is damaged ({v.why}): moved to {save_dir / DAMAGED_DIR}/, "
                 f"resuming from iteration {it}" for v in failed]
        _set_aside(save_dir, log_dir, failed, it)
        return TrainState(int(loaded["iteration"]), int(loaded["consumed_samples"])), notes
    raise CheckpointLoadError(_none_loads(save_dir, failed, its))


def _set_aside(save_dir: Path, log_dir: Path | None, damaged: list[Verdict], resumed: int) -> None:
    """Rank 0 moves the damaged newer checkpoints aside and points the marker at the one that loaded."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        for v in damaged:
            folder = iteration_dir(save_dir, v.iteration)
            if folder.exists():
                move_aside(folder, save_dir, log_dir, f"{v.damage}: {v.why}", resumed)
        if damaged:
            write_atomic(save_dir / LATEST_NAME, f"{resumed}\n")
    if dist.is_initialized():
        dist.barrier()


def unresumable(save_dir: Path) -> str | None:
    """Before any process starts: the refusal when checkpoints exist and not one is complete (files and sizes
    against its manifest; the hashes are checked by the run itself). None when a resume can be tried."""
    save_dir = Path(save_dir)
    its = candidates(save_dir) if save_dir.is_dir() else []
    verdicts = [inspect_sizes(iteration_dir(save_dir, it)) for it in its]
    if not its or any(v.ok for v in verdicts):
        return None
    return _none_loads(save_dir, verdicts, its)


def _none_loads(save_dir: Path, failed: list[Verdict], tried: list[int]) -> str:
    lines = [f"{save_dir}: {len(tried)} checkpoint(s), none resumable; nothing was moved or deleted:"]
    lines += [f"  iter_{v.iteration:07d}: {v.damage}: {v.why}" for v in failed]
    lines.append("fix: restore the checkpoints (or the code and megatron-core version that wrote them), or start "
                 "again from the base with `experiment run FOLDER --restart` (moves the checkpoints to "
                 "<save>/aside/restart-N/ and the logs and lock to logs/aside/restart-N/, deletes nothing)")
    return "\n".join(lines)


def _restore_adam_steps(optimizer) -> None:
    """Put the checkpoint's Adam step count back into every parameter's own ``step`` tensor.

    megatron.core 0.16's DistributedOptimizer without Apex/TE keeps the step in the saved
    ``param_groups`` only; on load it assigns one shared tensor to all parameters and the per-parameter
    state loaded afterwards keeps the placeholder count. Either way the bias correction of the first
    resumed steps would differ from an uninterrupted run. The group's value is the saved one.
    """
    import torch

    for part in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(part, "optimizer", None)
        if inner is None:
            continue
        for group in inner.param_groups:
            if "step" not in group:
                continue
            step = float(group.pop("step"))  # a fresh optimizer's groups carry no step either
            for p in group["params"]:
                state = inner.state.get(p)
                if state is not None and "step" in state:
                    state["step"] = torch.tensor(step, dtype=state["step"].dtype, device=state["step"].device)


def _materialize_optimizer_state(optimizer) -> None:
    """Create Adam's state tensors (with lr 0, so no parameter moves) before a resume.

    Without Apex/Transformer Engine the torch Adam state is created lazily at the first step, and
    megatron's DistributedOptimizer.state_dict() needs it to exist to describe what to load into.
    """
    parts = getattr(optimizer, "chained_optimizers", [optimizer])
    for part in parts:
        inner = getattr(part, "optimizer", None)
        if inner is None or inner.state or not hasattr(part, "_init_optimizer_states_with_dummy_values"):
            continue
        saved = [(g, g["lr"], g.get("weight_decay", 0.0)) for g in inner.param_groups]
        for g, _, _ in saved:
            g["lr"], g["weight_decay"] = 0.0, 0.0
        try:
            part._init_optimizer_states_with_dummy_values()
        finally:
            for g, lr, wd in saved:
                g["lr"], g["weight_decay"] = lr, wd


def load_base(base_dir: Path, model) -> tuple[int, Path]:
    """Load only the weights (the "model" key) of a base checkpoint; returns (iteration, folder).

    Any tensor/pipeline layout loads: dist_checkpointing reshards. A missing or broken base is an
    error (never a silent start from scratch).
    """
    from megatron.core import dist_checkpointing

    base_dir = Path(base_dir)
    good, warnings = usable_iterations(base_dir)
    latest = read_latest(base_dir)
    if latest is None:
        raise CheckpointLoadError(
            f"{base_dir / LATEST_NAME}: missing; fix: point checkpoint.base at a folder written by "
            "`experiment ckpt import` or a training run, or set from_scratch = true"
        )
    iteration = good[0] if good else latest  # imported checkpoints carry no kit manifest
    folder = base_dir / ("release" if latest == 0 and (base_dir / "release").is_dir() else f"iter_{iteration:07d}")
    if not folder.is_dir():
        raise CheckpointLoadError(f"{folder}: no such folder; fix: check {base_dir / LATEST_NAME}")
    _, load_strategy = dist_strategies()
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(folder),
                                     sharded_strategy=load_strategy)
    model.load_state_dict(loaded["model"], strict=True)
    return iteration, folder


def content_hash(folder: Path) -> str:
    """blake3 over the sorted (relative name, size, bytes) of every file of a checkpoint folder (the kit's one hasher)."""
    from experiment.hashing import content_hash as named_hash

    files = sorted(q for q in Path(folder).rglob("*") if q.is_file())
    return named_hash((str(p.relative_to(folder)), p) for p in files)


def remove_stale_partials(save_dir: Path) -> list[Path]:
    """Delete ``*.partial`` folders a killed run left behind (rank 0, before training)."""
    removed = []
    stale = [*Path(save_dir).glob(f"iter_*{PARTIAL_SUFFIX}"), *Path(save_dir).glob("iter_*.deleting")]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed
