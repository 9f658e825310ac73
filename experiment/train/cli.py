"""``experiment run FOLDER``: validate the folder, then train it here (torchrun), in the kit's image, or
through a Slurm/PBS job script. Parses, builds one ``Launch``, calls one function."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error[/red] {message}")
    raise typer.Exit(code)


def _load(folder: Path, require_artifacts: bool = True, overrides: tuple[str, ...] = ()):
    """The validated folder. Rendering a job script with --dry-run does not need the base checkpoint and
    shards on this host (they live on the cluster's filesystem); running does."""
    from experiment.folder import FolderError
    from experiment.mixture.checks import load

    try:
        return load(folder, require_artifacts=require_artifacts, overrides=overrides)
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


def _write_lock(loaded, launch, launcher: str) -> None:
    """After a finished local run: the reproducibility lockfile (``experiment.lock``)."""
    from experiment.lock import lockfile

    status_file = loaded.path / "logs" / "run_status.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    if status.get("state") != "finished":
        return
    path = lockfile.write_run_lock(
        loaded,
        launch={"launcher": launcher, "nnodes": launch.nnodes, "nproc_per_node": launch.nproc_per_node},
        determinism_env=dict(launch.env),
        resolved_args={"runner_args": list(launch.runner_args)},
    )
    console.print(f"lockfile: {path}")


def run(
    folder: Path = typer.Argument(..., help="training folder, e.g. training/demo"),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="local | slurm | pbs (default: the folder's launch.launcher)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the command or job script instead of running it"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="processes per node (default: launch.nproc_per_node)"),
    container: bool = typer.Option(False, "--container", help="run inside the kit's image (podman/docker; apptainer in job scripts)"),
    image: Optional[str] = typer.Option(None, "--image", help="image ref (or .sif for job scripts); default: the folder's image.ref"),
    host: bool = typer.Option(False, "--host", help="run on this host's Python environment (the default; overrides --container)"),
    max_iterations: Optional[int] = typer.Option(None, "--max-iterations", help="stop after N iterations (smoke tests)"),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="override a field of experiment.toml for this run, e.g. --set training.lr=1e-4 "
        "(repeatable; validated like the file, recorded in run.lock.json)"),
) -> None:
    """Train a folder: local torchrun, inside the kit's image, or a Slurm/PBS job script."""
    from experiment.launch import local
    from experiment import determinism

    sets = tuple(overrides or ())
    preview = _load(folder, require_artifacts=False, overrides=sets)
    kind = launcher or preview.config.launch.launcher
    loaded = preview if dry_run and kind != "local" else _load(folder, overrides=sets)
    cfg = loaded.config
    if kind not in ("local", "slurm", "pbs"):
        _fail(f"--launcher {kind!r}: use local, slurm or pbs")
    nnodes = 1 if kind == "local" else cfg.launch.nnodes
    per_node = nproc or cfg.launch.nproc_per_node
    _check_world(loaded, nnodes, per_node)
    runner_args = (("--max-iterations", str(max_iterations)) if max_iterations else ()) + tuple(
        a for o in sets for a in ("--set", o))
    launch = local.Launch(loaded.path, nnodes, per_node,
                          tuple(sorted(determinism.environment(cfg.training.deterministic).items())), runner_args)
    use_container = container and not host
    image_ref = image or cfg.image.ref

    if kind == "local":
        if use_container:
            from experiment.launch import container as ctr

            plan = ctr.plan(loaded, image_ref, digest=cfg.image.digest,
                            command=(*ctr.inner_run_command(loaded, per_node), "--host"))
            plan = dataclasses.replace(plan, env={**plan.env, **dict(launch.env)})
            if dry_run:
                typer.echo(local.command_line(ctr.engine_argv(plan)))
                return
            rc = ctr.run(plan)
        else:
            if dry_run:
                exports = " ".join(f"{k}={v}" for k, v in launch.env)
                typer.echo((exports + " " if exports else "") + local.command_line(local.local_argv(launch)))
                return
            rc = local.run_local(launch)
            if rc == 0:
                _write_lock(loaded, launch, kind)
        raise typer.Exit(rc)

    from experiment.launch import jobscript

    prefix = None
    if use_container:
        from experiment.launch import container as ctr

        # the cluster runs the image with apptainer; no local engine is needed to write the script
        env = {ctr.IMAGE_REF_VAR: image_ref, **({ctr.IMAGE_DIGEST_VAR: cfg.image.digest} if cfg.image.digest else {})}
        plan = ctr.ContainerRun("apptainer", image_ref, ctr.folder_mounts(loaded), (), {**env, **dict(launch.env)},
                                loaded.path)
        prefix = ctr.apptainer_line(plan, image_ref).rstrip()
    settings = jobscript.ClusterSettings(kind, cfg.name, cfg.launch.walltime, cfg.launch.partition,
                                         cfg.launch.account, gpus=cfg.image.flavor == "gpu", container_prefix=prefix)
    text = jobscript.render(launch, settings)
    path = jobscript.write(loaded.path, kind, text)
    jobscript.check_syntax(path)
    if dry_run:
        typer.echo(text)
        console.print(f"job script written to {path} (not submitted: --dry-run)")
        return
    console.print(f"submitted {path}: {jobscript.submit(path, kind)}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
