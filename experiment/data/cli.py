"""``experiment data tokenize|count|merge|dedup|signature``: parse, build one object, call one function.

Bad input ends with a ``DataError`` printed as ``file:line: problem`` plus its fix, and exit code 2.
"""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)  # progress, logs and errors; results go to stdout (``experiment.summary.emit``)
data_app = typer.Typer(help="Data pipeline: raw text -> counted, signed Megatron shards.", no_args_is_help=True)


JSON_OPTION = typer.Option(False, "--json", help="print the result as one JSON object on stdout instead of the table")


def emit(result, as_json: bool) -> None:
    from experiment.summary import emit as emit_summary

    emit_summary(result, as_json)


def friendly(fn):
    """Print DataError as file:line + fix (exit 2) instead of a traceback: every data-handling command's
    wrapper (``experiment data ...``, and ``experiment demo corpus|data``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from experiment.data.errors import DataError

        try:
            return fn(*args, **kwargs)
        except DataError as err:
            from experiment.errors import print_error

            print_error(err, console)
            raise typer.Exit(2) from None

    return wrapper


@data_app.command()
@friendly
def tokenize(
    inputs: list[Path] = typer.Argument(..., help="input files or folders (.jsonl, .jsonl.gz, .jsonl.zst, .parquet, .txt)"),
    output: Path = typer.Option(..., "--output", "-o", help="folder for the .bin/.idx shards"),
    tokenizer: Path = typer.Option(..., "--tokenizer", "-t", help="HF tokenizer folder, tokenizer.json or SentencePiece .model"),
    text_key: str = typer.Option("text", help="JSON key / Parquet column holding the text"),
    backend: str = typer.Option("auto", help="auto (the first fast backend proven identical: gigatoken), a fast backend by name, or reference"),
    language: str = typer.Option(None, help="language part of the shard names (else read from input names)"),
    domain: str = typer.Option(None, help="domain part of the shard names"),
    subdomain: str = typer.Option(None, help="subdomain part (default: the input file's stem)"),
    eod_token: str = typer.Option(None, help="end-of-document token (default: the tokenizer's eos)"),
    reserve_mb: float = typer.Option(0.0, help="keep at least this much space free on the output disk"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
    cache_dir: Path = typer.Option(Path.home() / ".cache" / "midtrain-kit", help="keeps the tokenizer converted for gigatoken"),
    whole_files: bool = typer.Option(True, help="let gigatoken read plain .jsonl inputs whole (each line checked first)"),
    group_mb: float = typer.Option(128.0, help="whole .jsonl files encoded together, at most this much text per call"),
    threads: int = typer.Option(None, help="cores to use in this process (default: all; with --tasks: per task)"),
    tasks: int = typer.Option(1, help="share the inputs over this many datatrove tasks (processes or Slurm array tasks)"),
    workers: int = typer.Option(None, help="--executor local: tasks running at once (default: one per core)"),
    executor: str = typer.Option("local", help="with --tasks: local (processes here) or slurm (a job array)"),
    partition: str = typer.Option(None, help="slurm: partition"),
    time_limit: str = typer.Option("04:00:00", "--time", help="slurm: time limit per task"),
    cpus_per_task: int = typer.Option(16, help="slurm: cores per task (its encoder threads)"),
    mem_per_cpu_gb: float = typer.Option(2.0, help="slurm: memory per core, GB"),
    env_command: str = typer.Option(None, help="slurm: shell line that puts the kit on PATH in the job (e.g. source .venv/bin/activate)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Tokenize each input shard into one counted Megatron shard (EOD appended, restartable)."""
    from experiment.data.tokenize import TokenizeConfig, run

    cfg = TokenizeConfig(
        inputs=list(inputs), output=output, tokenizer=tokenizer, text_key=text_key, backend=backend,
        language=language, domain=domain, subdomain=subdomain, eod_token=eod_token,
        reserve_bytes=int(reserve_mb * 1e6), progress=not no_progress, cache_dir=cache_dir,
        whole_files=whole_files, group_bytes=int(group_mb * 1e6), threads=threads,
    )
    if tasks == 1 and executor == "local":
        report = run(cfg, console=console)
    else:
        from experiment.data.tokenize_tasks import SlurmOptions, run_tasks

        slurm = SlurmOptions(partition=partition, time=time_limit, cpus_per_task=cpus_per_task, mem_per_cpu_gb=mem_per_cpu_gb,
                             env_command=env_command)
        report = run_tasks(cfg, tasks, workers=workers, executor=executor, slurm=slurm, console=console)
    if report is not None:
        from experiment.data.tokenize_report import summary

        emit(summary(report), as_json)


@data_app.command()
@friendly
def count(
    paths: list[Path] = typer.Argument(..., help="folders or prefixes of .bin/.idx pairs (any tool's)"),
    language: str = typer.Option(None, help="for names outside the convention"),
    domain: str = typer.Option(None, help="for names outside the convention"),
    subdomain: str = typer.Option(None, help="for names outside the convention (default: the file name)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the new names, rename nothing"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Recount .bin/.idx pairs with megatron.core and rename them ..._dc=_sc=_tc=."""
    from experiment.data.count import count as run_count
    from experiment.summary import Column, Summary, command_seconds
    from experiment.summary import count as n

    results = run_count(list(paths), language, domain, subdomain, dry_run)
    seconds = command_seconds()
    out = Summary(f"{len(results)} shard(s){' (dry run)' if dry_run else ''}",
                  [Column("shard"), Column("docs", n, True), Column("sentences", n, True), Column("tokens", n, True), Column("change")],
                  extra={"wall_seconds": round(seconds, 3), "dry_run": dry_run}, caption=f"{seconds:.2f} s wall")
    for r in results:
        change = "unchanged" if not r.renamed else ("fixed wrong counts" if r.name_was_wrong else "renamed")
        out.add(r.new.name, r.counts.docs, r.counts.sentences, r.counts.tokens, change)
    emit(out, as_json)


@data_app.command()
@friendly
def merge(
    inputs: list[Path] = typer.Argument(..., help="JSONL shards or folders"),
    output: Path = typer.Option(..., "--output", "-o", help="folder for the merged shards"),
    target_mb: float = typer.Option(256.0, help="target shard size in MB"),
    text_key: str = typer.Option("text", help="key that must hold the text in every record"),
    language: str = typer.Option(None), domain: str = typer.Option(None), subdomain: str = typer.Option(None),
    as_json: bool = JSON_OPTION,
) -> None:
    """Merge many small JSONL shards into shards of about --target-mb, per language/domain/subdomain."""
    from experiment.data.merge import merge as run_merge
    from experiment.summary import Column, Summary, command_seconds, fixed
    from experiment.summary import count as n

    groups = run_merge(list(inputs), output, target_mb, text_key, language, domain, subdomain)
    seconds = command_seconds()
    total_mb = sum(g.bytes for g in groups) / 1e6
    out = Summary(f"merged into {output}",
                  [Column("group"), Column("inputs", n, True), Column("outputs", n, True), Column("records", n, True),
                   Column("MB", fixed(1), True)],
                  extra={"wall_seconds": round(seconds, 3), "output": str(output)},
                  caption=f"{total_mb:.1f} MB in {seconds:.2f} s wall" + (f" = {total_mb / seconds:.1f} MB/s" if seconds > 0 else ""))
    for g in groups:
        out.add(g.stem, len(g.inputs), len(g.outputs), g.records, g.bytes / 1e6)
    emit(out, as_json)


@data_app.command()
@friendly
def dedup(
    input_dir: Path = typer.Argument(..., help="folder of .jsonl shards"),
    output: Path = typer.Option(..., "--output", "-o", help="folder for the deduplicated shards (same names)"),
    text_key: str = typer.Option("text"),
    num_perm: int = typer.Option(64, help="MinHash permutations (seed 004: 64)"),
    threshold: float = typer.Option(0.85, help="Jaccard threshold (seed 004: 0.85)"),
    ngram: int = typer.Option(5, help="words per shingle"),
    as_json: bool = JSON_OPTION,
) -> None:
    """MinHash near-duplicate removal across all shards (datatrove's minhash pipeline)."""
    from experiment.data.dedup import dedup as run_dedup
    from experiment.summary import Column, Summary, command_seconds
    from experiment.summary import count as n

    report = run_dedup(input_dir, output, text_key, num_perm, threshold, ngram)
    seconds = command_seconds()
    out = Summary(f"dedup -> {output}", [Column("LSH bands", n, True), Column("rows per band", n, True),
                                         Column("kept", n, True), Column("removed", n, True), Column("wall s", lambda v: f"{v:.2f}", True)],
                  extra={"output": str(output), "outputs": [str(p) for p in report.outputs]})
    out.add(report.bands, report.rows, report.kept, report.removed, round(seconds, 3))
    emit(out, as_json)


@data_app.command()
@friendly
def signature(
    shard_dir: Path = typer.Argument(..., help="folder of counted .bin/.idx shards"),
    name: str = typer.Option(..., "--name", "-n", help="signature name: data_signatures/<name>.json"),
    out_dir: Path = typer.Option(Path("data_signatures"), "--out-dir", help="where signatures live"),
    tokenizer: Path = typer.Option(None, "--tokenizer", "-t", help="tokenizer (default: the folder's tokenizer_info.json)"),
    algorithm: str = typer.Option("blake3", help="content hash: blake3 or xxh3"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a data signature: every shard's counts, sizes and content hashes, plus the tokenizer's hash."""
    from experiment.data import signature as sig
    from experiment.data.errors import DataError

    if tokenizer is not None:
        from experiment.data.encoders import load_encoder
        from experiment.data.tokenize_output import tokenizer_info
        from experiment.data.tokenizer_spec import resolve_tokenizer

        info = tokenizer_info(load_encoder(resolve_tokenizer(tokenizer), "reference"))
    else:
        from experiment.data.tokenize_output import TOKENIZER_INFO

        path = shard_dir / TOKENIZER_INFO
        if not path.is_file():
            raise DataError(path, "no record of the tokenizer these shards were made with", "pass --tokenizer")
        info = sig.TokenizerInfo.model_validate_json(path.read_text())
    from experiment.summary import Column, Summary, command_seconds, fixed
    from experiment.summary import count as n

    built = sig.build(shard_dir, name, out_dir, info, algorithm)
    written = sig.write(built, out_dir)
    seconds = command_seconds()
    nbytes = sum(s.bin_bytes + s.idx_bytes for s in built.shards)
    out = Summary(f"signature {written}", [Column("shards", n, True), Column("tokens", n, True), Column("GB hashed", fixed(2), True),
                                           Column("wall s", fixed(2), True), Column("tokenizer")],
                  extra={"signature": str(written), "hash_algorithm": built.hash_algorithm})
    out.add(len(built.shards), sum(s.tokens for s in built.shards), nbytes / 1e9, round(seconds, 3), info.name)
    emit(out, as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
