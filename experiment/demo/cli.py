"""``experiment demo`` (the whole demo) and its parts, ``experiment demo corpus`` and ``experiment demo data``.

The demo registers its own commands, so no library package imports it (``experiment data`` once owned the
corpus and the data half, the one upward import of the data layer).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from experiment.data.cli import friendly

console = Console(stderr=True)
demo_app = typer.Typer(help="The embedded default run on real text, and its parts.", no_args_is_help=False,
                       invoke_without_command=True)


@demo_app.callback()
def demo(
    ctx: typer.Context,
    corpus_mb: float = typer.Option(3.0, "--corpus-mb", help="megabytes of sample text to build"),
    container: bool = typer.Option(False, "--container", help="run the training inside the CPU image"),
) -> None:
    """The embedded default: corpus -> tokenize -> mixture -> import SmolLM2 -> train -> export -> reproduce -> eval."""
    if ctx.invoked_subcommand is None:
        from experiment.demo import run_demo

        raise typer.Exit(run_demo(Path.cwd(), corpus_mb, container))


@demo_app.command("corpus")
@friendly
def corpus(
    out: Path = typer.Argument(..., help="folder for the JSONL sample shards"),
    mb: float = typer.Option(1.0, "--mb", help="megabytes of text to collect"),
    shard_mb: float = typer.Option(16.0, help="maximum shard size in MB"),
) -> None:
    """Build a real multi-language, multi-domain sample corpus from installed Debian packages."""
    from experiment.demo.corpus import build_sample

    build_sample(out, mb=mb, shard_mb=shard_mb, console=console)


@demo_app.command("data")
@friendly
def data(
    work: Path = typer.Option(Path("work/data-demo"), help="folder for the raw sample and the shards"),
    signatures: Path = typer.Option(Path("data_signatures"), help="where the signature is written"),
    tokenizer: Path = typer.Option(None, "--tokenizer", "-t", help="default: mistral-common's SentencePiece model"),
    mb: float = typer.Option(2.0, "--mb", help="sample size in MB"),
    name: str = typer.Option("demo-data", help="signature name"),
) -> None:
    """The data half of the demo: corpus -> tokenize -> count -> signature (prints where outputs are)."""
    from experiment.demo.data import run_data_demo

    run_data_demo(work, signatures, tokenizer, mb, name, console=console)


def register(app: typer.Typer) -> None:
    app.add_typer(demo_app, name="demo")
