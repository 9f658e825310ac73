"""``experiment status FOLDER``: the job segments of a scheduled run and the run's progress."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def status(folder: Path = typer.Argument(..., help="training folder run with --launcher slurm|pbs"),
           ) -> None:
    """Per job segment: queued, running, finished, or failed with the scheduler's reason and log tail;
    then iteration, tokens/s, MFU where known, and an ETA."""
    from experiment.launch.status import job_rows, run_line

    folder = folder.resolve()
    if not (folder / "experiment.toml").is_file():
        console.print(f"[red]error[/red] {folder}/experiment.toml: not a training folder; give the folder that "
                      "was passed to `experiment run`")
        raise typer.Exit(2)
    rows = job_rows(folder)
    if not rows:
        console.print(f"{folder}: no job submitted (logs/chain.jsonl is empty); submit with "
                      f"`experiment run {folder} --launcher slurm`")
    else:
        table = Table(title=f"jobs of {folder.name}")
        for col in ("job", "state", "iterations", "reason"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r.job_id, r.state, r.iterations, r.reason)
        console.print(table)
        for r in rows:
            if r.log_tail:
                console.print(f"[bold]log of job {r.job_id}[/bold] (last lines):", highlight=False)
                console.print(r.log_tail, markup=False, highlight=False, soft_wrap=True)
    console.print(run_line(folder), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
