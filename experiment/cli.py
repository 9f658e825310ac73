"""The `experiment` command: each subcommand parses its arguments, builds one validated object and
calls one library function. Heavy imports (torch, megatron) happen inside the commands, and ``main``
imports only the module of the command it runs (``experiment data tokenize`` does not import the lockfile,
compare or report code: 0.25 s of start-up), so every command starts fast."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from experiment import __version__

_app = typer.Typer(
    name="experiment",
    help="midtrain-kit: continual pretraining of open LLMs with Megatron-Core, reproducibly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

# Feature modules that add commands, each with the top-level names its register(app) adds (a test checks
# them against what it registers). Explicit list, no discovery magic.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "experiment.data.cli": ("data",),              # experiment data tokenize|count|merge|dedup|signature
    "experiment.mixture.cli": ("mix",),            # experiment mix
    "experiment.ckpt.cli": ("ckpt",),              # experiment ckpt import|export|check
    "experiment.launch.cli": ("run", "status", "lock"),  # experiment run, status, lock write
    "experiment.lock.cli": ("reproduce",),         # experiment reproduce LOCK
    "experiment.compare": ("compare",),            # experiment compare A B
    "experiment.report": ("report",),              # experiment report FOLDER
    "experiment.evaluate.cli": ("eval",),          # experiment eval FOLDER
    "experiment.demo.cli": ("demo",),              # experiment demo [corpus|data]
}
_registered: set[str] = set()


@_app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="print the kit's version")) -> None:
    from experiment import megatron_import

    megatron_import.install()  # this process opts in: no torch.compile decorations without a GPU
    from experiment.summary import start_command

    start_command()  # summaries' wall time (from the process's start when run by main())
    if version:
        typer.echo(__version__)
        raise typer.Exit()


@_app.command("check")
def check_command(folder: Path = typer.Argument(..., help="training folder, e.g. training/demo")) -> None:
    """Validate a training folder and print every problem at once (file, field, fix)."""
    from experiment.mixture.checks import check_all

    loaded, problems = check_all(folder)
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


def modules_for(argv: list[str] | None) -> list[str]:
    """The command modules a command line needs: the one owning its first word, none for ``check``, all
    for anything else (``--help``, a typo: typer then lists every command)."""
    words = [a for a in argv or () if not a.startswith("-")]
    if words:
        if words[0] == "check":
            return []
        for module, names in COMMAND_MODULES.items():
            if words[0] in names:
                return [module]
    return list(COMMAND_MODULES)


def register_commands(argv: list[str] | None = None) -> typer.Typer:
    """The app with the commands ``argv`` needs (all of them when ``argv`` is None), each module once."""
    for name in modules_for(argv):
        if name not in _registered:
            importlib.import_module(name).register(_app)
            _registered.add(name)
    return _app


def __getattr__(name: str):
    """``experiment.cli.app``: the app with every command (tests, the generated CLI reference)."""
    if name == "app":
        return register_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """The one error handler: any ``KitError`` (bad input, unusable place) becomes one message naming file,
    field and fix, and exit code 1; never a traceback."""
    from experiment.errors import KitError, disk_full, print_error
    from experiment.summary import start_command

    start_command(from_process_start=True)
    app = register_commands(sys.argv[1:])
    try:
        app()
    except SystemExit as done:  # typer ends every command with one
        from experiment.short_lived import leave

        leave(done.code)
        raise
    except KitError as err:
        print_error(err, console)
        raise SystemExit(1) from None
    except Exception as err:  # a foreign error the user can fix, wrapped at the boundary: a full disk, a bad path
        known = disk_full(err, [Path.cwd(), *(Path(a) for a in sys.argv[1:] if not a.startswith("-"))])
        if known is None and isinstance(err, OSError) and err.filename:
            known = KitError(err.strerror or str(err), file=err.filename, fix="check the path and its permissions")
        if known is None:
            raise
        print_error(known, console)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
