"""`experiment mix FOLDER [--out DIR]`: check, plan and write the mixture outputs (atomically)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def _problems_table(title: str, problems) -> Table:
    table = Table(title=title, show_lines=True)
    for col in ("file", "entry", "problem", "fix"):
        table.add_column(col, overflow="fold")
    for p in problems:
        table.add_row(p.file, p.field, p.message, p.fix)
    return table


def write_outputs(folder, out: Path) -> tuple[object, dict[str, Path]]:
    """Plan ``folder``'s mixture and write every output under ``out``; returns (plan, name -> path)."""
    from experiment.atomic import write_atomic
    from experiment.mixture import outputs, report
    from experiment.mixture.plan import plan_folder

    plan = plan_folder(folder)
    name = folder.config.name
    files = outputs.render_all(plan, name)
    fp = outputs.fingerprint(plan)
    files["report.md"] = report.markdown(plan, name, fp, folder.config.data.valid_fraction)
    written = {}
    for fname, content in files.items():
        write_atomic(out / fname, content)
        written[fname] = out / fname
    write_atomic(out / "mixture.png", report.chart_png(plan, name))
    written["mixture.png"] = out / "mixture.png"
    return plan, written


def mix(
    folder: Path = typer.Argument(..., help="training folder, e.g. training/demo"),
    out: Path = typer.Option(None, "--out", help="output folder (default: FOLDER/mixture)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object on stdout instead of the table"),
) -> None:
    """Plan the data mixture: Megatron --data-path, DATA_PATH bash, per-split JSON, train_data.sh, report, PNG."""
    from experiment.folder import errors
    from experiment.mixture.checks import check_all
    from experiment.mixture.datatypes import MixtureError
    from experiment.mixture.report import group

    loaded, problems = check_all(folder)
    blocking = errors(problems)
    if loaded is None or blocking:
        console.print(_problems_table(f"{len(blocking or problems)} problem(s) in {folder}", blocking or problems))
        raise typer.Exit(1)
    missing = [p for p in problems if p.missing_artifact]
    if missing:
        console.print(f"[yellow]{len(missing)} artifact(s) not present yet[/yellow] (planning from the "
                      f"signature's counts), first: {missing[0]}")
    target = out if out is not None else loaded.path / "mixture"
    try:
        plan, written = write_outputs(loaded, target)
    except MixtureError as err:
        console.print(_problems_table(f"{len(err.problems)} mixture problem(s)", err.problems))
        raise typer.Exit(1) from None
    from experiment.summary import Column, Summary, command_seconds, count, emit, fixed

    for fname, path in written.items():
        console.print(f"  wrote {path}")  # a log line (stderr); the result is the table below (stdout)
    seconds = command_seconds()
    result = Summary(f"mixture of {loaded.config.name}: {plan.budget_tokens:,.0f} tokens ({plan.mode} mode)",
                     [Column("domain"), Column("shards", count, True), Column("tokens available", count, True),
                      Column("tokens seen", count, True), Column("mix %", fixed(2), True), Column("epochs", fixed(3), True)],
                     extra={"budget_tokens": plan.budget_tokens, "mode": plan.mode, "wall_seconds": round(seconds, 3),
                            "written": {k: str(v) for k, v in written.items()}},
                     caption=f"{seconds:.2f} s wall")
    for r in group(plan, lambda e: e.domain):
        result.add(r.key, r.shards, r.available, r.seen, 100 * r.weight, r.epochs)
    emit(result, as_json)


def register(app: typer.Typer) -> None:
    app.command("mix")(mix)
