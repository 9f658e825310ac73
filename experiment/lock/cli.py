"""``experiment reproduce LOCK`` and ``experiment lock write FOLDER``: the lockfile commands."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)
DEFAULT_CACHE = "~/.cache/midtrain-kit/hashes.sqlite"


def _cache_path(no_cache: bool) -> Path | None:
    if no_cache:
        return None
    base = os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "midtrain-kit" / "hashes.sqlite" if base else Path(DEFAULT_CACHE).expanduser()


def register(app: typer.Typer) -> None:
    lock_app = typer.Typer(help="the reproducibility lockfile (run.lock.json)", no_args_is_help=True)
    app.add_typer(lock_app, name="lock")

    @lock_app.command("write")
    def write(folder: Path = typer.Argument(..., help="training folder whose run finished"),
              no_cache: bool = typer.Option(False, "--no-cache", help="hash every file again")) -> None:
        """Write run.lock.json for a finished run (what `experiment run` does at its end)."""
        from experiment.mixture.checks import load_checked
        from experiment.lock.lockfile import write_run_lock
        from experiment.lock.reproduce import determinism_now

        loaded = load_checked(folder)
        path = write_run_lock(loaded, determinism_env=determinism_now(loaded), hash_cache=_cache_path(no_cache))
        console.print(f"[green]wrote[/green] {path}")

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
        raise typer.Exit(rep.main(options, console))
