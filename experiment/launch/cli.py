"""The launchers' commands: ``experiment run``, ``experiment status`` and ``experiment lock write``.

``experiment run FOLDER`` trains it here with torchrun, in the kit's image, or as a chain of Slurm/PBS jobs;
``experiment status FOLDER`` shows its job segments and progress; ``experiment lock write FOLDER`` ends a
finished run by hand the way the launchers end it (``finish_run``). Each parses its
arguments, builds one ``Launch`` or reads the run's records, and calls one function."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from experiment import runlog
from experiment.launcher_names import CLUSTER_LAUNCHERS, LAUNCHER_NAMES

console = Console(stderr=True)
out = Console()  # `experiment status` prints its table on stdout


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
    mbs = 1 if t.micro_batch_size == "auto" else t.micro_batch_size  # auto picks a divisor of the per-rank batch
    if t.global_batch_size % (mbs * dp):
        _fail(f"training.global_batch_size={t.global_batch_size} is not a multiple of micro_batch_size x "
              f"data-parallel size {mbs * dp}; fix: change --nproc or the batch sizes")


def run(
    folder: Path = typer.Argument(..., help="training folder, e.g. training/demo"),
    launcher: Optional[str] = typer.Option(None, "--launcher", help=f"{' | '.join(LAUNCHER_NAMES)} (default: the folder's launch.launcher)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the command or job script instead of running it"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="processes per node (default: launch.nproc_per_node)"),
    container: bool = typer.Option(False, "--container", help="run inside the kit's image (podman/docker; in job scripts apptainer, or podman: launch.container_runtime)"),
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
    from experiment import determinism
    from experiment.launch import launchers, local
    from experiment.launch.finish import finish_run, runner_args

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


def status(folder: Path = typer.Argument(..., help="training folder run with --launcher slurm|pbs"),
           ) -> None:
    """Per job segment: queued, running, finished, or failed with the scheduler's reason and log tail, and the
    nodes it ran on (a node not up named with the scheduler's State and Reason); for a running job the last
    iteration each node reported; then iteration, tokens/s, MFU where known, and an ETA."""
    from experiment.launch.status import job_rows, node_progress, run_line

    folder = folder.resolve()
    if not (folder / "experiment.toml").is_file():
        out.print(f"[red]error[/red] {folder}/experiment.toml: not a training folder; give the folder that "
                  "was passed to `experiment run`")
        raise typer.Exit(2)
    rows = job_rows(folder)
    if not rows:
        out.print(f"{folder}: no job submitted (logs/chain.jsonl is empty); submit with "
                  f"`experiment run {folder} --launcher slurm`")
    else:
        table = Table(title=f"jobs of {folder.name}")
        for col in ("job", "state", "nodes", "iterations", "reason"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r.job_id, r.state, r.nodes, r.iterations, r.reason)
        # piped (a log, a test, grep): as wide as the rows need, so a reason is never broken across lines
        (out if out.is_terminal else Console(width=max(out.width, 200))).print(table)
        for r in rows:
            for note in r.node_notes:  # a node not up (State, Reason), the node that ended a failed step
                out.print(f"job {r.job_id}: {note}", markup=False, highlight=False, soft_wrap=True)
        if any(r.state == "running" for r in rows):  # the last step each node reported (the ranks' heartbeats)
            for line in node_progress(folder / runlog.LOGS):
                out.print(line, markup=False, highlight=False, soft_wrap=True)
        for r in rows:
            if r.log_tail:
                out.print(f"[bold]log of job {r.job_id}[/bold] (last lines):", highlight=False)
                out.print(r.log_tail, markup=False, highlight=False, soft_wrap=True)
    out.print(run_line(folder), highlight=False)


lock_app = typer.Typer(help="the reproducibility lockfile (run.lock.json)", no_args_is_help=True)


@lock_app.command("write")
def write(folder: Path = typer.Argument(..., help="training folder whose run finished"),
          no_cache: bool = typer.Option(False, "--no-cache", help="hash every file again"),
          launcher: str | None = typer.Option(None, "--launcher", help="how the run was started (default: "
                                              "the folder's launch.launcher)"),
          overrides: list[str] | None = typer.Option(None, "--set", help="the run's --set overrides (default: "
                                                     "the ones the runner recorded)")) -> None:
    """Write run.lock.json for a finished run (what `experiment run` does at its end)."""
    from experiment.folder import load_schema
    from experiment.launch.finish import finish_run
    from experiment.lock.hashing import default_cache_path

    kind = launcher or load_schema(folder, require_artifacts=False, overrides=tuple(overrides or ())
                                   ).config.launch.launcher
    path = finish_run(folder, launcher=kind, overrides=tuple(overrides) if overrides else None,
                      hash_cache=None if no_cache else default_cache_path(), say=lambda m: None)
    if path is None:
        console.print(f"[red]error[/red] {runlog.status_path(folder / runlog.LOGS)}: the run has not finished; fix: "
                      f"`experiment run {folder}` to finish it (it resumes), then write the lock")
        raise typer.Exit(1)
    console.print(f"[green]wrote[/green] {path}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("status")(status)
    app.add_typer(lock_app, name="lock")
