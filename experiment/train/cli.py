"""``experiment run FOLDER``: validate the folder, then train it here (torchrun), in the kit's image, or
through a Slurm/PBS job script. Parses, builds one ``Launch``, calls one function."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from experiment.launcher_names import CLUSTER_LAUNCHERS, LAUNCHER_NAMES

console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error[/red] {message}")
    raise typer.Exit(code)


def _load(folder: Path, require_artifacts: bool = True, overrides: tuple[str, ...] = ()):
    """The validated folder. Rendering a job script with --dry-run does not need the base checkpoint and
    shards on this host (they live on the cluster's filesystem); running does."""
    from experiment.folder import FolderError
    from experiment.mixture.checks import load_checked

    try:
        return load_checked(folder, require_artifacts=require_artifacts, overrides=overrides)
    except FolderError as err:
        console.print(f"[red]refusing to run {folder}[/red]: {len(err.problems)} problem(s)")
        for p in err.problems:  # one unwrapped line each, so paths and field names stay greppable
            console.print(f"  {p}", soft_wrap=True, markup=False, highlight=False)
        raise typer.Exit(2)


def _check_world(loaded, nnodes: int, nproc: int) -> None:
    t = loaded.config.training
    world, mp = nnodes * nproc, t.tensor_parallel * t.pipeline_parallel
    if world % mp:
        _fail(f"{nnodes} node(s) x {nproc} processes is not a multiple of tensor x pipeline parallel = {mp}; "
              "fix: change --nproc or launch.nproc_per_node")
    dp = world // mp
    if t.global_batch_size % (t.micro_batch_size * dp):
        _fail(f"training.global_batch_size={t.global_batch_size} is not a multiple of micro_batch_size x "
              f"data-parallel size {t.micro_batch_size * dp}; fix: change --nproc or the batch sizes")


def run(
    folder: Path = typer.Argument(..., help="training folder, e.g. training/demo"),
    launcher: Optional[str] = typer.Option(None, "--launcher", help=f"{' | '.join(LAUNCHER_NAMES)} (default: the folder's launch.launcher)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the command or job script instead of running it"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="processes per node (default: launch.nproc_per_node)"),
    container: bool = typer.Option(False, "--container", help="run inside the kit's image (podman/docker; apptainer in job scripts)"),
    image: Optional[str] = typer.Option(None, "--image", help="image ref (or .sif for job scripts); default: the folder's image.ref"),
    host: bool = typer.Option(False, "--host", help="run on this host's Python environment (the default; overrides --container)"),
    max_iterations: Optional[int] = typer.Option(None, "--max-iterations", help="stop after N iterations (smoke tests)"),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="override a field of experiment.toml for this run, e.g. --set training.lr=1e-4 "
        "(repeatable; validated like the file, recorded in run.lock.json)"),
    wait: bool = typer.Option(False, "--wait", help="slurm/pbs: return when the chain of jobs has ended (exit 0: run complete)"),
    restart: bool = typer.Option(False, "--restart", help="start again from the base checkpoint: the run's checkpoints, "
                                 "logs and lock are moved aside first (never deleted)"),
) -> None:
    """Train a folder: local torchrun, inside the kit's image, or a chain of Slurm/PBS jobs."""
    from experiment.launch import launchers
    from experiment.launch import local
    from experiment.launch.finish import finish_run, runner_args
    from experiment import determinism

    sets = tuple(overrides or ())
    preview = _load(folder, require_artifacts=False, overrides=sets)
    kind = launcher or preview.config.launch.launcher
    if kind not in LAUNCHER_NAMES:
        _fail(f"--launcher {kind!r}: use one of {', '.join(LAUNCHER_NAMES)}")
    use_container = (container or kind == "container") and not host
    if kind == "local" and use_container:
        kind = "container"
    if kind == "container" and not use_container:
        kind = "local"
    loaded = preview if dry_run and kind in CLUSTER_LAUNCHERS else _load(folder, overrides=sets)
    cfg = loaded.config
    nnodes = cfg.launch.nnodes if kind in CLUSTER_LAUNCHERS else 1
    per_node = nproc or cfg.launch.nproc_per_node
    _check_world(loaded, nnodes, per_node)
    launch = local.Launch(loaded.path, nnodes, per_node,
                          tuple(sorted(determinism.environment(cfg.training.deterministic).items())),
                          runner_args(sets, max_iterations))
    chosen = launchers.get(kind)
    request = launchers.Request(loaded, launch, container=use_container, image=image, dry_run=dry_run)
    problems = chosen.validate(request)
    if not dry_run and not problems:  # the data as signed, and a checkpoint to resume from (or none at all)
        from experiment.launch.datacheck import segment_problems

        problems = segment_problems(loaded, restart)
    if problems:
        console.print(f"[red]refusing to launch {folder}[/red] ({kind}): {len(problems)} problem(s)")
        for p in problems:
            console.print(f"  {p}", soft_wrap=True, markup=False, highlight=False)
        raise typer.Exit(2)
    prepared = chosen.prepare(request)
    if dry_run:
        typer.echo(prepared.text)
        if prepared.script is not None:
            console.print(f"job script written to {prepared.script} (not submitted: --dry-run)")
        return
    if restart:
        from experiment.train.restart import move_run_aside

        for line in move_run_aside(loaded.path, loaded.resolve(cfg.checkpoint.save)) or ["nothing to move"]:
            console.print(f"--restart: {line}")
    try:
        submitted = chosen.submit(prepared)
    except launchers.LaunchError as err:
        _fail(str(err))
    if submitted.job_id is not None:
        typer.echo(submitted.job_id)
        console.print(f"{submitted.message}: {prepared.script}; follow it with `experiment status {loaded.path}`")
        if wait:
            from experiment.launch.chain import wait as wait_chain

            state = wait_chain(loaded.path)
            console.print(f"chain of {loaded.path}: {state}")
            raise typer.Exit(0 if state == "finished" else 1)
        return
    if submitted.returncode == 0 and chosen.lock_writer == "parent":
        finish_run(loaded.path, launcher=kind, overrides=sets, say=console.print)
    raise typer.Exit(submitted.returncode)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
