"""Before each segment: the shards a run is about to read are the ones its signatures describe.

A run spans days and many jobs; a shard re-tokenized or damaged between two of them would be trained on
silently, and the lock written at the end would then describe data the run only partly read. So every
segment (``experiment run`` before torchrun, ``chain begin`` before each job's step) checks each shard's
``.bin``/``.idx`` against its signature's hashes. The check is the lockfile's own (``lockfile.data_section``)
with the shared hash cache, so an unchanged shard costs a ``stat``.
"""

from __future__ import annotations

import sqlite3

from experiment.lock.hashing import HashCache, default_cache_path
from experiment.lock.lockfile import LockError, data_section


def data_problems(folder, cache: HashCache | None = None) -> list[str]:
    """One line per shard file that is missing or differs from its signature (empty: the data is as signed)."""
    try:
        section = data_section(folder, cache if cache is not None else HashCache(default_cache_path()))
    except LockError as err:  # a shard file is missing
        return [f"{err}; the run cannot read it"]
    except (OSError, sqlite3.Error):  # no writable cache here (a read-only home in an image): hash without one
        return data_problems(folder, HashCache(None)) if cache is None else []
    sigs = {written: str(folder.resolve(written)) for written in folder.config.data.signatures}
    return [f"{key.split('::')[1]}: differs from the hash its signature {sigs.get(key.split('::')[0], '?')} "
            "records (changed since it was signed); fix: restore the shard, or re-sign the data and start a new "
            "run (a run's data must not change under it)" for key in section["signature_disagreements"]]
