"""How a run ends: one function writes ``run.lock.json`` and attaches it to the trackers.

Every way a run can end comes here: ``experiment run`` after a local or in-image torchrun, ``chain end`` of
the last Slurm/PBS segment, and ``experiment lock write``. Before, each built its arguments its own way, and
the chain lost the run's ``--set`` overrides (its lock did not reproduce). Now the overrides are checked
against the ones the runner itself recorded in ``logs/run_status.json``, so a lock can only describe the run
that trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from experiment import runlog
from experiment.errors import KitError

FINISHED = "finished"


class FinishError(KitError):
    """A lock that would not describe the run that trained (overrides that differ, a run not finished)."""


def runner_args(overrides: Sequence[str] = (), max_iterations: int | None = None) -> tuple[str, ...]:
    """The runner's arguments after the folder, the one place they are spelled: torchrun's command line
    (local, container, each node of a job) and the lock's ``config.resolved.runner_args``."""
    head = ("--max-iterations", str(max_iterations)) if max_iterations else ()
    return head + tuple(a for o in overrides for a in ("--set", o))


def overrides_of(args: Sequence[str]) -> tuple[str, ...]:
    """The ``--set`` values in an argument list (inverse of ``runner_args`` for the overrides)."""
    args = list(args)
    return tuple(args[i + 1] for i, a in enumerate(args[:-1]) if a == "--set")


def recorded_overrides(folder_path: Path) -> tuple[str, ...] | None:
    """The overrides the runner trained with (``logs/run_status.json``); None for a run that did not say."""
    status = runlog.read_status(Path(folder_path) / runlog.LOGS)
    return tuple(status["overrides"]) if isinstance(status.get("overrides"), list) else None


def finish_run(folder_path: Path, *, launcher: str, overrides: Sequence[str] | None = None,
               launch: Mapping | None = None, hash_cache: Path | None = None, say=print) -> Path | None:
    """Write ``run.lock.json`` for a finished run and attach it to the folder's trackers; None (nothing
    written) when the run has not finished.

    ``overrides``: the ``--set`` list the caller started the run with; None takes the runner's record. A
    list that differs from the runner's record is refused (``FinishError``): the lock would not reproduce.
    ``launch``: extra facts of the launch (a chain's segments); the launcher, nodes and processes per node
    are the runner's own record where it made one.
    """
    from experiment.lock.lockfile import write_run_lock
    from experiment.lock.verify import determinism_now
    from experiment.mixture.checks import load_checked

    folder_path = Path(folder_path)
    status = runlog.read_status(folder_path / runlog.LOGS)
    if status.get("state") != FINISHED:
        return None
    recorded = recorded_overrides(folder_path)
    if overrides is None:
        overrides = recorded or ()
    elif recorded is not None and tuple(overrides) != recorded:
        raise FinishError(
            f"the run trained with --set {list(recorded)} but the lock was asked for --set {list(overrides)}",
            file=runlog.status_path(folder_path / runlog.LOGS), field="overrides",
            fix="pass the overrides the run used (or none: the runner's record is taken)")
    loaded = load_checked(folder_path, overrides=tuple(overrides))
    lc = loaded.config.launch
    record = {"launcher": launcher, "nnodes": status.get("nnodes", lc.nnodes),
              "nproc_per_node": status.get("nproc_per_node", lc.nproc_per_node), **dict(launch or {})}
    path = write_run_lock(loaded, launch=record, determinism_env=determinism_now(loaded),
                          resolved_args={"runner_args": list(runner_args(overrides))}, hash_cache=hash_cache)
    say(f"lockfile: {path}")
    tracking = loaded.config.tracking
    if tracking.mlflow or tracking.wandb:
        from experiment.train import trackers

        trackers.log_lockfile(loaded, path)
    return path
