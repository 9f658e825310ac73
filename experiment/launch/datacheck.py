"""Before each segment: the run can resume, and the shards it is about to read are the ones it signed.

A run spans days and many jobs. A shard re-tokenized or damaged between two of them would be trained on
silently, and the lock written at the end would then describe data the run only partly read; checkpoints that
no longer load must stop the run, never start it again from the base. So every segment (``experiment run``
before torchrun, ``chain begin`` before each job's step) runs ``segment_problems``: each shard's ``.bin``/``.idx``
against its signature's hashes (the lockfile's own check, ``lockfile.data_section``, with the shared hash
cache, so an unchanged shard costs a ``stat``) and ``checkpointing.unresumable``.
"""

from __future__ import annotations

import os

from experiment.lock.hashing import HashCache, default_cache_path
from experiment.lock.lockfile import LockError, data_section


def _cache() -> HashCache:
    """The shared cache, or an in-memory one where its folder cannot be written (a read-only home in an image)."""
    path = default_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return HashCache(None)
    return HashCache(path if os.access(path.parent, os.W_OK) else None)


def data_problems(folder, cache: HashCache | None = None) -> list[str]:
    """One line per shard file that is missing or differs from its signature (empty: the data is as signed)."""
    try:
        section = data_section(folder, cache if cache is not None else _cache())
    except LockError as err:  # a shard file is missing
        return [f"{err}; the run cannot read it"]
    sigs = {written: str(folder.resolve(written)) for written in folder.config.data.signatures}
    return [f"{key.split('::')[1]}: differs from the hash its signature {sigs.get(key.split('::')[0], '?')} "
            "records (changed since it was signed); fix: restore the shard, or re-sign the data and start a new "
            "run (a run's data must not change under it)" for key in section["signature_disagreements"]]


def segment_problems(folder, restart: bool = False) -> list[str]:
    """What stops a segment before any process starts: changed or missing shards, and checkpoints none of
    which would resume (not asked when ``restart``: ``experiment run --restart`` moves them aside first)."""
    from experiment.train.checkpointing import unresumable

    refusal = None if restart else unresumable(folder.resolve(folder.config.checkpoint.save))
    return data_problems(folder) + ([refusal] if refusal else [])
