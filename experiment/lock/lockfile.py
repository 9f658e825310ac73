"""``run.lock.json``: everything needed to rebuild a run and check a re-run, as canonical JSON.

Called by ``experiment run`` (the parent process, after torchrun exits 0)::

    from experiment.lock.lockfile import write_run_lock
    write_run_lock(
        folder,                       # experiment.folder.TrainingFolder
        image="detect",               # default: the pinned image if this process runs in it (its recorded
                                      #   environment hash matches), else a host run (containerized: false);
                                      #   or an experiment.lock.environment.ImageInfo, or None for "host"
        launch={"launcher": "local", "nnodes": 1, "nproc_per_node": 2},   # how it was started
        determinism_env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8", ...},      # what the runner set
        resolved_args={"train_iters": 4, ...},   # arguments the runner derived (optional)
        hash_cache=Path("~/.cache/midtrain-kit/hashes.sqlite"),           # optional
    )  # -> folder.path / "run.lock.json"

Canonical means: keys sorted, one layout (indent 1), floats as Python's shortest round-trip repr,
losses as the hex floats the runner logged, no NaN; so one run gives one sequence of bytes. No
secrets: no environment variable is read except the determinism ones the caller passes, paths are
relative to the folder (or to a signature's data root), and no user or host name is written.

Sections: ``kit`` (version, source hash, git commit + dirty-diff hash), ``environment`` (image ref +
digest, or the host's distributions with ``containerized: false``), ``folder`` (its files' hashes),
``signatures``, ``data`` (every shard's .bin/.idx size + hash, the blend exactly as given to
Megatron), ``tokenizer``, ``base_checkpoint``, ``config`` (resolved model/training/launch),
``determinism``, ``launch``, ``outputs`` (per-step losses, checkpoint file and tensor hashes),
``checkpoint_record`` (every save's file hashes, and what resumes moved aside).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from experiment import runlog
from experiment.atomic import write_atomic
from experiment.errors import KitError
from experiment.folder import TrainingFolder
from experiment.lock import environment
from experiment.lock.hashing import HashCache, hash_bytes, hash_file, hash_files, normalize_algorithm
from experiment.lock.records import Record, RunLock

LOCK_NAME = runlog.LOCK
LOCK_VERSION = 1
FILE_HASH = "blake3"
# Folder content that a run writes (outputs), never part of the folder's identity.
OUTPUT_DIRS = ("logs", "checkpoints", "tensorboard", ".reproduce", "launch")  # launch/: generated job scripts
METADATA_FILE = ".metadata"  # torch DCP: pickled, holds a random save_id -> hashed without it


class LockError(KitError):
    """A lockfile that cannot be written or read, with the reason and the fix."""


# ---------------------------------------------------------------------------- canonical JSON

def _canonical(value: Any, where: str = "") -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LockError(f"{where}: {value} is not a finite number; the lockfile records only finite floats")
        return value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Path):
        return value.as_posix()
    return value


def dumps(lock: RunLock | Mapping) -> str:
    """The canonical text of a lock (sorted keys, indent 1, repr floats, trailing newline)."""
    if isinstance(lock, Record):
        lock = lock.dump()
    return json.dumps(_canonical(lock), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def read_lock(path: str | Path) -> RunLock:
    """The typed lock; a file that is not a lock of this version names the field and the fix."""
    path = Path(path)
    try:
        lock = json.loads(path.read_text())
    except OSError as err:
        raise LockError(f"{path}: cannot read ({err.strerror})", file=path,
                        fix="give the path of a run.lock.json") from err
    except json.JSONDecodeError as err:
        raise LockError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})", file=path,
                        fix="restore the file (from your backup or the run's commit)") from err
    fix = "give the run.lock.json that `experiment run` wrote in the training folder"
    if not isinstance(lock, dict) or "lock_version" not in lock:
        raise LockError(f"{path}: not a run lockfile (a JSON {type(lock).__name__} without 'lock_version')",
                        file=path, field="lock_version", fix=fix)
    if lock.get("lock_version") != LOCK_VERSION:
        raise LockError(f"{path}: lock_version {lock.get('lock_version')!r}, this kit reads {LOCK_VERSION}",
                        file=path, field="lock_version", fix="use the kit version named in its 'kit' section")
    return parse(lock, str(path))


def parse(lock: Mapping, where: str = LOCK_NAME) -> RunLock:
    """A lock dict as the typed record, or ``LockError`` naming the first field that does not fit."""
    try:
        return RunLock.model_validate(lock)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise LockError(f"{where}: field {field}: {first['msg']} ({err.error_count()} problem(s)): the file is "
                        "not a run.lock.json of this kit version", file=where, field=field,
                        fix="restore it, or use the kit version named in its 'kit' section "
                        "(docs/reproducibility.md)") from None




# ---------------------------------------------------------------------------- sections

def _rel(folder: TrainingFolder, p: Path) -> str:
    """A path relative to the folder (``../`` allowed); never an absolute host path."""
    return Path(os.path.relpath(p, folder.path)).as_posix()


def folder_files(folder: TrainingFolder) -> dict[str, str]:
    """Hash of every file of the folder's description (not its outputs, not the lockfile)."""
    save = folder.config.checkpoint.save
    skip = set(OUTPUT_DIRS) | {Path(save).parts[0] if not Path(save).is_absolute() else ""}
    files = {}
    for p in sorted(folder.path.rglob("*")):
        rel = p.relative_to(folder.path)
        if not p.is_file() or rel.parts[0] in skip or rel.name == LOCK_NAME or rel.name.startswith("."):
            continue
        if "__pycache__" in rel.parts:
            continue
        files[rel.as_posix()] = hash_file(p, FILE_HASH)
    return files


def folder_content(folder: TrainingFolder, limit: int = 65536) -> dict[str, Any]:
    """The parsed content of the folder's small JSON/TOML files, so ``reproduce`` can name the key
    that changed (and a published lock alone can rebuild the folder's description)."""
    import tomllib

    out: dict[str, Any] = {}
    for rel in folder_files(folder):
        p = folder.path / rel
        if p.suffix not in (".json", ".toml") or p.stat().st_size > limit:
            continue
        try:
            out[rel] = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def signature_entries(folder: TrainingFolder) -> list[tuple[str, Path]]:
    """(path as written in experiment.toml, resolved path) for each signature."""
    return [(s, folder.resolve(s)) for s in folder.config.data.signatures]


def signatures_section(folder: TrainingFolder) -> dict:
    from experiment.data import signature as sigmod

    out = {}
    for written, path in signature_entries(folder):
        sig = sigmod.read_signature(path)
        out[written] = {
            "name": sig.name,
            "file_hash": hash_file(path, FILE_HASH),
            "canonical_hash": hash_bytes(sig.to_json().encode(), FILE_HASH),
            "hash_algorithm": normalize_algorithm(sig.hash_algorithm),
            "shards": len(sig.shards),
        }
    return out


def tokenizer_section(folder: TrainingFolder) -> dict:
    from experiment.data import signature as sigmod

    return {written: sigmod.read_signature(path).tokenizer.model_dump() for written, path in signature_entries(folder)}


def shard_files(folder: TrainingFolder, data_root: Path | None = None) -> dict[str, dict]:
    """Locked shard key ``<signature>::<prefix>`` -> where its .bin/.idx should be, and what the
    signature says about them. ``data_root`` replaces every signature's root (reproduce --data-root)."""
    from experiment.data import signature as sigmod

    out = {}
    for written, path in signature_entries(folder):
        sig = sigmod.read_signature(path)
        root = data_root if data_root is not None else sig.root_path(path)
        for s in sig.shards:
            out[f"{written}::{s.prefix}"] = {
                "root": root, "prefix": s.prefix, "algorithm": normalize_algorithm(sig.hash_algorithm), "entry": s,
            }
    return out


def data_section(folder: TrainingFolder, cache: HashCache | None, data_root: Path | None = None,
                 progress=None) -> dict:
    """Every shard's .bin/.idx size and content hash as found on disk, checked against its signature."""
    shards = shard_files(folder, data_root)
    by_algo: dict[str, list[str]] = {}
    for info in shards.values():
        root = os.fspath(info["root"])
        info["paths"] = {ext: os.path.join(root, info["prefix"] + ext) for ext in (".bin", ".idx")}
        by_algo.setdefault(info["algorithm"], []).extend(info["paths"].values())
    digests: dict[str, str] = {}
    keys: dict = {}
    missing: list[str] = []
    for algo, paths in by_algo.items():
        digests.update(hash_files(paths, algo, cache, progress=progress, keys=keys, missing=missing))
    if missing:
        raise LockError(f"{len(missing)} shard file(s) missing, first: {missing[0]}; restore the data or fix the "
                        "signature's root")
    entries, disagree = {}, []
    for key, info in shards.items():
        s = info["entry"]
        row = {"language": s.language, "domain": s.domain, "subdomain": s.subdomain, "tokens": s.tokens,
               "docs": s.docs, "algorithm": info["algorithm"]}
        for ext, expected in ((".bin", s.bin_hash), (".idx", s.idx_hash)):
            p = info["paths"][ext]
            found = digests[p]
            row[ext[1:]] = {"bytes": keys[p].size, "hash": found}
            if expected is not None and found != expected.split(":", 1)[-1]:
                disagree.append(f"{key}{ext}")
        entries[key] = row
    return {"shards": entries, "signature_disagreements": disagree}


def blend_section(folder: TrainingFolder, data_root: Path | None = None) -> dict:
    """The blend (prefix, weight) in the order given to Megatron, prefixes relative to their data root."""
    from experiment.mixture.plan import plan_folder

    prefixes, weights = plan_folder(folder).megatron_blend()
    roots = sorted({(str(info["root"]), key.split("::")[0]) for key, info in shard_files(folder).items()},
                   key=lambda r: -len(r[0]))
    entries = []
    for prefix, weight in zip(prefixes, weights):
        name = str(prefix)
        for root, sig in roots:
            if name.startswith(root.rstrip("/") + "/"):
                name = f"{sig}::{os.path.relpath(name, root)}"
                break
        else:
            name = Path(name).name  # never an absolute host path
        entries.append([name, float(weight)])
    return {"available": True, "entries": entries}


def checkpoint_hashes(ckpt_dir: Path, cache: HashCache | None = None, tensors: bool = True) -> dict:
    """Hash of each file of a dist_checkpointing folder and of each tensor in it.

    torch DCP's ``.metadata`` holds a random save id, so it is hashed without it; the tensors are read
    back (no process group needed) so a difference can be named down to one tensor."""
    files = {}
    paths = sorted(p for p in ckpt_dir.rglob("*") if p.is_file())
    digests = hash_files(paths, FILE_HASH, cache)
    for p in paths:
        rel = p.relative_to(ckpt_dir).as_posix()
        files[rel] = _metadata_hash(p) if p.name == METADATA_FILE else digests[os.fspath(p)]
    out = {"files": files}
    if tensors and (ckpt_dir / METADATA_FILE).is_file():
        out["tensors"] = tensor_hashes(ckpt_dir)
    return out


def _metadata_hash(path: Path) -> str:
    """torch DCP's ``.metadata`` by content: its pickle bytes vary with the writing Python build and hold
    a random load id, so the tensors' names, shapes, dtypes, chunks and storage places are hashed."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(os.fspath(path.parent)).read_metadata()

    def items(d) -> list:
        return sorted((repr(k), repr(v)) for k, v in (d or {}).items()) if isinstance(d, dict) else [repr(d)]

    canonical = repr([items(meta.state_dict_metadata), items(meta.planner_data), items(meta.storage_data)])
    return hash_bytes(canonical.encode(), FILE_HASH)


def tensor_hashes(ckpt_dir: Path) -> dict[str, str]:
    """{tensor name: hash of dtype, shape and bytes}, one tensor in memory at a time."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(os.fspath(ckpt_dir))
    meta = reader.read_metadata()
    out = {}
    for name in sorted(meta.state_dict_metadata):
        m = meta.state_dict_metadata[name]
        if not isinstance(m, TensorStorageMetadata):
            continue
        t = torch.empty(m.size, dtype=m.properties.dtype)
        dcp.load({name: t}, storage_reader=dcp.FileSystemReader(os.fspath(ckpt_dir)), no_dist=True)
        head = f"{t.dtype}{tuple(t.shape)}".encode()
        out[name] = hash_bytes(head + t.contiguous().view(torch.uint8).numpy().tobytes(), FILE_HASH)
    return out


def loss_steps(path: Path) -> list[list]:
    """[[step, loss, grad norm, lr], ...] (hex float strings) from the runner's per-step JSONL."""
    try:
        records = runlog.read_jsonl(path)
    except runlog.RunLogError as err:
        raise LockError(str(err)) from err
    rows = []
    for rec in records:
        step = rec.get("step", rec.get("iteration"))
        values = [rec.get("loss", rec.get("lm_loss")), rec.get("grad_norm"), rec.get("lr")]
        rows.append([step, *(v.hex() if isinstance(v, float) else v for v in values)])
    return rows


def outputs_section(folder: TrainingFolder, cache: HashCache | None = None, tensors: bool = True,
                    all_checkpoints: bool = False) -> dict:
    """Losses, and the hashes of the last checkpoint (every ``iter_*`` with ``all_checkpoints``: a
    long run's many 100 GB checkpoints are not all re-read for one lock)."""
    save = folder.resolve(folder.config.checkpoint.save)
    latest_file = save / "latest_checkpointed_iteration.txt"
    latest = latest_file.read_text().strip() if latest_file.is_file() else None
    checkpoints = {}
    if save.is_dir():
        found = sorted(d for d in save.glob("iter_*") if d.is_dir() and d.name[5:].isdigit())
        if not all_checkpoints and found:
            last = f"iter_{int(latest):07d}" if latest and latest.isdigit() else found[-1].name
            found = [d for d in found if d.name == last] or found[-1:]
        for d in found:
            checkpoints[d.name] = checkpoint_hashes(d, cache, tensors)
    logs = folder.path / runlog.LOGS
    losses_file = logs / runlog.LOSSES
    eval_file = logs / runlog.EVALS
    top = sorted(p for p in save.glob("*") if p.is_file()) if save.is_dir() else []
    return {
        "latest_iteration": latest,
        "checkpoint_files": {p.name: hash_file(p, FILE_HASH) for p in top},
        "checkpoints": checkpoints,
        "losses": {
            "file": f"{runlog.LOGS}/{runlog.LOSSES}",
            "hash": hash_file(losses_file, FILE_HASH) if losses_file.is_file() else None,
            "steps": loss_steps(losses_file) if losses_file.is_file() else [],
        },
        "eval": {"file": f"{runlog.LOGS}/{runlog.EVALS}",
                 "hash": hash_file(eval_file, FILE_HASH) if eval_file.is_file() else None},
    }


def checkpoint_record_section(folder: TrainingFolder) -> dict:
    """The record of every save (``logs/saves.jsonl`` without its timings: iteration, folder, file hashes) and
    of what resumes moved aside (``logs/aside.jsonl``)."""
    logs = folder.path / runlog.LOGS
    try:
        saves = runlog.read_saves(logs)
        aside = runlog.read_aside(logs)
    except runlog.RunLogError as err:
        raise LockError(str(err)) from err
    return {"saves": [{k: s.get(k) for k in ("iteration", "path", "files")} for s in saves], "aside": aside}


def base_checkpoint_section(folder: TrainingFolder, cache: HashCache | None = None,
                            base: Path | None = None) -> dict | None:
    cfg = folder.config.checkpoint
    if cfg.from_scratch or cfg.base is None:
        return None
    root = base if base is not None else folder.resolve(cfg.base)
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    digests = hash_files(paths, FILE_HASH, cache)
    files = {}
    for p in paths:
        rel = p.relative_to(root).as_posix()
        files[rel] = _metadata_hash(p) if p.name == METADATA_FILE else digests[os.fspath(p)]
    combined = hash_bytes("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode(), FILE_HASH)
    return {"path": cfg.base if not Path(cfg.base).is_absolute() else Path(cfg.base).name,
            "hash": combined, "files": files}


def config_section(folder: TrainingFolder, resolved_args: Mapping | None) -> dict:
    """The resolved config (experiment.toml with the ``--set`` overrides applied) and the overrides
    themselves, in order: ``reproduce`` passes them again."""
    cfg = folder.config
    return {
        "overrides": list(folder.overrides),
        "experiment": cfg.model_dump(mode="json"),
        "model_shape": cfg.model.shape.model_dump(mode="json"),
        "resolved": dict(resolved_args or {}),
    }


def launch_section(folder: TrainingFolder, launch: Mapping | None) -> dict:
    t, lc = folder.config.training, folder.config.launch
    status = runlog.read_status(folder.path / runlog.LOGS)
    world = lc.nnodes * lc.nproc_per_node
    return {
        "tensor_parallel": t.tensor_parallel,
        "pipeline_parallel": t.pipeline_parallel,
        "data_parallel": world // (t.tensor_parallel * t.pipeline_parallel),
        "world_size": world,
        # "auto": the number the runner measured and used (run_status.json), which reproduce passes again
        "micro_batch_size": (t.micro_batch_size if t.micro_batch_size != "auto"
                             else status.get("micro_batch_size") or 1),
        "global_batch_size": t.global_batch_size,
        "seed": t.seed,
        "launcher": dict(launch or {}),
        # what the runner built (logs/run_status.json): the spec differs between a CPU, a GPU and the TE image
        "layer_spec": status.get("layer_spec"),
        "recompute": status.get("recompute"),
        "fp8": status.get("fp8"),  # te-delayed | local-tensorwise | None (bf16)
    }


def build_run_lock(
    folder: TrainingFolder,
    *,
    image: environment.ImageInfo | None | str = "detect",
    launch: Mapping | None = None,
    determinism_env: Mapping[str, str] | None = None,
    resolved_args: Mapping | None = None,
    hash_cache: str | Path | None = None,
    tensors: bool = True,
) -> RunLock:
    """The typed lock (see the module docstring); ``write_run_lock`` writes it."""
    if image == "detect":
        image = environment.detect_image()
    cache = HashCache(Path(hash_cache).expanduser() if hash_cache else None)
    return parse({
        "lock_version": LOCK_VERSION,
        "name": folder.config.name,
        "kit": environment.kit_section(),
        "environment": environment.environment_section(image),
        "folder": {"files": folder_files(folder), "content": folder_content(folder)},
        "signatures": signatures_section(folder),
        "tokenizer": tokenizer_section(folder),
        "data": {**data_section(folder, cache), "blend": blend_section(folder)},
        "base_checkpoint": base_checkpoint_section(folder, cache),
        "config": config_section(folder, resolved_args),
        "determinism": dict(sorted((determinism_env or {}).items())),
        "launch": launch_section(folder, launch),
        "outputs": outputs_section(folder, cache, tensors),
        "checkpoint_record": checkpoint_record_section(folder),
    })


def write_run_lock(
    folder: TrainingFolder,
    *,
    image: environment.ImageInfo | None | str = "detect",
    launch: Mapping | None = None,
    determinism_env: Mapping[str, str] | None = None,
    resolved_args: Mapping | None = None,
    hash_cache: str | Path | None = None,
    output: str | Path | None = None,
) -> Path:
    """Write ``run.lock.json`` into the folder (atomically) and return its path."""
    lock = build_run_lock(folder, image=image, launch=launch, determinism_env=determinism_env,
                          resolved_args=resolved_args, hash_cache=hash_cache)
    path = Path(output) if output else folder.path / LOCK_NAME
    write_atomic(path, dumps(lock))
    return path
