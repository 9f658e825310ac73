"""``experiment reproduce LOCK``: check a lockfile against the present, re-run, compare.

(``experiment lock write`` lives with the launchers, ``launch/cli.py``: writing a lock is how a run ends.)
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)


def _cache_path(no_cache: bool) -> Path | None:
    from experiment.lock.hashing import default_cache_path

    return None if no_cache else default_cache_path()


def register(app: typer.Typer) -> None:
    @app.command()
    def reproduce(
        lockfile: Path = typer.Argument(..., help="run.lock.json of the run to reproduce"),
        steps: int | None = typer.Option(None, help="re-run only the first N steps and compare those"),
        data_root: Path | None = typer.Option(None, help="folder holding the shards (replaces the signatures' roots)"),
        base: Path | None = typer.Option(None, help="base checkpoint folder (replaces checkpoint.base)"),
        container: bool = typer.Option(False, "--container", help="re-run inside the pinned image"),
        image: str | None = typer.Option(None, help="image ref for --container (default: the folder's image.ref)"),
        ignore: bool = typer.Option(False, "--ignore", help="re-run even when inputs differ from the lock"),
        verify_only: bool = typer.Option(False, "--verify-only", help="check inputs, do not re-run"),
        out: Path | None = typer.Option(None, help="where the re-run happens (default: <folder>/.reproduce)"),
        no_cache: bool = typer.Option(False, "--no-cache", help="hash every file again"),
        launcher: str = typer.Option("local", "--launcher", help="local, or slurm/pbs: re-run as a chain of jobs"),
    ) -> None:
        """Check environment, code, data, tokenizer and base weights against a lockfile, then re-run and
        compare losses and checkpoints, naming the first divergence."""
        from experiment.lock import reproduce as rep

        options = rep.ReproduceOptions(
            lockfile=lockfile, steps=steps, data_root=data_root, base=base, container=container,
            image=image, ignore=ignore, verify_only=verify_only, out=out,
            hash_cache=_cache_path(no_cache), environ={k: os.environ[k] for k in sorted(os.environ)},
            launcher=launcher,
        )
        raise typer.Exit(rep.reproduce_run(options, console))
