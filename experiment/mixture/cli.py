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
) -> None:
    """Plan the data mixture: Megatron --data-path, DATA_PATH bash, per-split JSON, train_data.sh, report, PNG."""
    from experiment.folder import errors
    from experiment.mixture.checks import check
    from experiment.mixture.plan import MixtureError
    from experiment.mixture.report import group

    loaded, problems = check(folder)
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
    table = Table(title=f"mixture of {loaded.config.name}: {plan.budget_tokens:,.0f} tokens ({plan.mode} mode)")
    for col in ("domain", "shards", "tokens available", "tokens seen", "mix %", "epochs"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for r in group(plan, lambda e: e.domain):
        table.add_row(r.key, f"{r.shards:,}", f"{r.available:,}", f"{r.seen:,}", f"{100 * r.weight:.2f}",
                      f"{r.epochs:.3f}")
    console.print(table)
    for fname, path in written.items():
        console.print(f"  wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("mix")(mix)
