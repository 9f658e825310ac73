"""The `experiment` command: each subcommand parses its arguments, builds one validated object and
calls one library function. Heavy imports (torch, megatron) happen inside the commands, so
`experiment --help` and `experiment check` stay fast."""

from __future__ import annotations

import importlib
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from experiment import __version__

app = typer.Typer(
    name="experiment",
    help="midtrain-kit: continual pretraining of open LLMs with Megatron-Core, reproducibly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

# Feature modules that add commands: each exposes register(app). Explicit list, no discovery magic.
COMMAND_MODULES = (
    "experiment.data.cli",      # experiment data tokenize|count|merge|dedup|signature|sample
    "experiment.mixture.cli",   # experiment mix
    "experiment.ckpt.cli",      # experiment ckpt import|export|check
    "experiment.train.cli",     # experiment run
    "experiment.launch.cli",    # experiment status
    "experiment.lock.cli",      # experiment reproduce, experiment lock ...
    "experiment.compare",       # experiment compare A B
    "experiment.report",        # experiment report FOLDER
    "experiment.evaluate.cli",  # experiment eval FOLDER
    "experiment.demo",          # experiment demo
)


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="print the kit's version")) -> None:
    from experiment import megatron_jit

    megatron_jit.install()  # this process opts in: no torch.compile decorations without a GPU
    from experiment.summary import start_command

    start_command()  # summaries' wall time (from the process's start when run by main())
    if version:
        typer.echo(__version__)
        raise typer.Exit()


@app.command()
def check(folder: Path = typer.Argument(..., help="training folder, e.g. training/demo")) -> None:
    """Validate a training folder and print every problem at once (file, field, fix)."""
    from experiment.mixture.checks import check as check_folder

    loaded, problems = check_folder(folder)
    if problems:
        table = Table(title=f"{len(problems)} problem(s) in {folder}", show_lines=True)
        for col in ("file", "field", "kind", "problem", "fix"):
            table.add_column(col, overflow="fold")
        for p in problems:
            kind = "[yellow]not present yet[/yellow]" if p.missing_artifact else "[red]error[/red]"
            table.add_row(p.file, p.field, kind, p.message, p.fix)
        console.print(table)
    if loaded is None or any(not p.missing_artifact for p in problems):
        raise typer.Exit(1)
    absent = sum(p.missing_artifact for p in problems)
    note = f" ({absent} artifact(s) not present yet: `experiment run` needs them)" if absent else ""
    console.print(f"[green]ok[/green] {folder}: {loaded.config.name} is a valid training folder{note}")


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_all()


def main() -> None:
    """The one error handler: any ``KitError`` (bad input, unusable place) becomes one message naming file,
    field and fix, and exit code 1; never a traceback."""
    from experiment.errors import KitError, print_error

    from experiment.summary import start_command

    start_command(from_process_start=True)
    try:
        app()
    except KitError as err:
        print_error(err, console)
        raise SystemExit(1) from None
    except OSError as err:  # a foreign error about a path the user gave, wrapped at the boundary
        if not err.filename:
            raise
        print_error(KitError(err.strerror or str(err), file=err.filename,
                             fix="check the path and its permissions"), console)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
