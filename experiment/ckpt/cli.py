"""``experiment ckpt import|export|check``: Hugging Face <-> Megatron-Core conversion and the logits check.

Each command validates its inputs (all of them, before writing anything), then calls one function of
``experiment.ckpt.hf_import`` / ``hf_export`` / ``compare`` and prints a short summary table.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from experiment.ckpt import prefetch

console = Console(stderr=True)
ckpt_app = typer.Typer(help="Checkpoints: Hugging Face <-> Megatron-Core, any TP/PP layout, with a logits check.",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(ckpt_app, name="ckpt")


def _fail(err: Exception) -> None:
    from experiment.errors import print_error

    print_error(err, console)
    raise typer.Exit(2)


def _quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")  # "Apex is not installed" etc.


def _libraries(megatron: bool = True):
    """(``experiment.ckpt.hf_import``, ``hf_export``) with torch (and megatron.core, for a process that
    converts) imported, the garbage collector paused over the imports, and no teardown once the command
    succeeded (``experiment.short_lived``: 0.5 s and 0.3 s of a ~3 s start and exit)."""
    from experiment.short_lived import exit_when_done, paused_gc

    exit_when_done()
    with paused_gc():
        from experiment.ckpt import conversion, hf_export, hf_import

        if megatron:
            conversion.import_libraries()
    return hf_import, hf_export


def _init_single() -> bool:
    """A one-process group for export/check; True when this command started it (and must end it)."""
    import torch.distributed as dist

    from experiment.model import parallel as distributed

    owned = not dist.is_initialized()
    distributed.initialize()
    return owned


def _summary(title: str, rows: list[tuple[str, str]], stats=None, as_json: bool = False) -> None:
    """The result on stdout (``experiment.summary``): field/value rows, the time over the command's wall."""
    from experiment.summary import Column, Summary, command_seconds, emit

    wall = command_seconds()
    extra = {"wall_seconds": round(wall, 3)}
    if stats is not None:
        rows = [*rows, ("time", f"{wall:.1f} s wall ({stats.seconds:.1f} s converting), {stats.bytes / 1e6 / wall:.0f} MB/s")]
        extra |= {"tensors": stats.tensors, "bytes": stats.bytes, "convert_seconds": round(stats.seconds, 3)}
    result = Summary(title, [Column("field"), Column("value")], extra=extra)
    for k, v in rows:
        result.add(k, v)
    emit(result, as_json)


@ckpt_app.command("import")
def import_cmd(
    source: Path = typer.Argument(..., help="Hugging Face model folder (config.json + safetensors), or a .gguf file"),
    out_dir: Path = typer.Argument(..., help="new kit checkpoint folder (must not hold a checkpoint)"),
    tp: int = typer.Option(1, "--tp", help="tensor-parallel size of the saving ranks"),
    pp: int = typer.Option(1, "--pp", help="pipeline-parallel size of the saving ranks"),
    gguf_cache: Path | None = typer.Option(None, help="where a .gguf source is dequantized to a HF folder "
                                           "(default: <OUT_DIR's parent>/<gguf name>-hf); reused when complete"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object on stdout instead of the table"),
) -> None:
    """Hugging Face (or GGUF) -> Megatron-Core distributed checkpoint (iter_0000001/ + kit_checkpoint.json).

    TP x PP > 1 runs under torchrun with one CPU/GPU process per rank (started for you)."""
    _quiet()
    under_torchrun = "WORLD_SIZE" in os.environ  # set by torchrun; the CLI is the one place that reads it
    if not under_torchrun:  # the disk reads the weights while torch imports (the launcher's ranks too)
        prefetch.start(prefetch.import_inputs(source))
    hf_import, _ = _libraries(megatron=tp * pp == 1 or under_torchrun)  # a launcher only starts torchrun
    from experiment.ckpt import gguf
    from experiment.ckpt.conversion import refuse_existing_output
    from experiment.ckpt.meta import CheckpointError
    from experiment.model.build import ParallelLayout

    layout = ParallelLayout(tp, pp)
    try:
        refuse_existing_output(out_dir, "OUT_DIR")
        if source.suffix == ".gguf":
            cache = gguf_cache or out_dir.absolute().parent / f"{source.stem}-hf"
            if not under_torchrun:
                console.print(f"dequantizing {source} -> {cache}")
            source = gguf.materialize(source, cache)
        src = hf_import.plan_import(source, out_dir, layout)
    except CheckpointError as err:
        _fail(err)
    if tp * pp > 1 and not under_torchrun:
        from experiment import torchrun

        cmd = torchrun.command("experiment.cli", ("ckpt", "import", str(source), str(out_dir), "--tp", str(tp),
                                                  "--pp", str(pp)), nproc_per_node=tp * pp, torchrun=torchrun.HERE)
        console.print(f"starting {tp * pp} ranks: {' '.join(cmd[2:])}")
        raise typer.Exit(subprocess.call(cmd))

    import torch.distributed as dist

    from experiment.model import parallel as distributed

    owned = not dist.is_initialized()
    distributed.initialize(layout)
    try:
        stats = hf_import.import_checkpoint(src, out_dir, layout)
    except CheckpointError as err:
        _fail(err)
    finally:
        if owned:
            distributed.shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        shape = src.shape
        _summary(f"imported {src.family.architecture}", [
            ("source", str(src.path)), ("checkpoint", str(stats.out)),
            ("layers / hidden / heads / kv", f"{shape.num_layers} / {shape.hidden_size} / "
                                             f"{shape.num_attention_heads} / {shape.num_query_groups}"),
            ("vocab (padded)", f"{shape.vocab_size} ({stats.out and _padded(stats.out)})"),
            ("layout saved", f"TP={tp} PP={pp}"), ("dtype", src.dtype),
            ("tensors", str(stats.tensors)), ("size", f"{stats.bytes / 1e6:.1f} MB"),
        ], stats, as_json)


def _padded(ckpt_dir: Path) -> int:
    from experiment.ckpt.meta import read_meta

    return read_meta(ckpt_dir).padded_vocab_size


@ckpt_app.command("export")
def export_cmd(
    ckpt_dir: Path = typer.Argument(..., help="kit checkpoint folder (import or training output)"),
    hf_dir: Path = typer.Argument(..., help="new Hugging Face folder (must be absent or empty)"),
    iteration: int | None = typer.Option(None, help="iteration to export (default: latest_checkpointed_iteration.txt)"),
    max_shard_mb: int | None = typer.Option(None, help="safetensors shard size in MB (default: transformers' "
                                            "save_pretrained default, 50GB in transformers 5)"),
    dtype: str | None = typer.Option(None, help="float32|bfloat16|float16 (default: the imported source's dtype)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object on stdout instead of the table"),
) -> None:
    """Megatron-Core checkpoint (any TP/PP layout) -> Hugging Face folder (safetensors + config + tokenizer)."""
    _quiet()
    _, hf_export = _libraries()
    from experiment.ckpt.meta import CheckpointError
    from experiment.model import parallel as distributed

    owned = _init_single()
    try:
        stats = hf_export.export_checkpoint(ckpt_dir, hf_dir, iteration, dtype=dtype,
                                            max_shard_bytes=None if max_shard_mb is None else max_shard_mb * 1_000_000)
    except CheckpointError as err:
        _fail(err)
    finally:
        if owned:
            distributed.shutdown()
    _summary("exported", [("checkpoint", str(ckpt_dir)), ("Hugging Face folder", str(stats.out)),
                          ("tensors", str(stats.tensors)), ("size", f"{stats.bytes / 1e6:.1f} MB")], stats, as_json)


@ckpt_app.command("check")
def check_cmd(
    hf_dir: Path = typer.Argument(..., help="the Hugging Face folder the checkpoint came from"),
    ckpt_dir: Path = typer.Argument(..., help="kit checkpoint folder"),
    text: Path | None = typer.Option(None, help="UTF-8 text file to tokenize (default: PEP 20, shipped with Python)"),
    seq_length: int = typer.Option(128, min=2),
    batches: int = typer.Option(4, min=1),
    iteration: int | None = typer.Option(None),
    max_abs_diff: float = typer.Option(1e-3, help="tolerance on the max |logit difference|"),
    min_top1: float = typer.Option(0.99, help="minimum share of tokens with the same argmax"),
    max_kl: float = typer.Option(1e-5, help="tolerance on the mean KL(HF || Megatron) per token"),
) -> None:
    """Run both models on the same token batches; exit 1 when they disagree beyond the tolerances."""
    from experiment.ckpt import compare
    from experiment.ckpt.meta import CheckpointError
    from experiment.model import parallel as distributed

    _quiet()
    hf_fix = "pass the Hugging Face folder `experiment ckpt export` wrote (config.json, *.safetensors, tokenizer)"
    if not (hf_dir / "config.json").is_file():
        _fail(CheckpointError(f"{hf_dir / 'config.json'}: missing: {hf_dir} is not a Hugging Face model folder; "
                              f"fix: {hf_fix}"))
    try:
        body = text.read_text(encoding="utf-8") if text else compare.default_text()
    except (OSError, UnicodeDecodeError) as err:
        _fail(CheckpointError(f"{text}: cannot read it as UTF-8 text ({err}); fix: pass a text file"))
    owned = _init_single()
    try:
        report = compare.check_logits(hf_dir, ckpt_dir, body, seq_length=seq_length, batches=batches,
                                      iteration=iteration)
    except CheckpointError as err:
        _fail(err)
    except (OSError, ValueError) as err:  # transformers' own loading errors, wrapped at the boundary
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _fail(CheckpointError(f"{hf_dir}: transformers cannot load it ({reason}); fix: {hf_fix}"))
    finally:
        if owned:
            distributed.shutdown()
    tol = compare.Tolerance(max_abs_diff, min_top1, max_kl)
    ok = report.passes(tol)
    table = Table(title=f"logits check: {'[green]pass[/green]' if ok else '[red]FAIL[/red]'}")
    for col in ("metric", "value", "tolerance"):
        table.add_column(col)
    table.add_row("tokens", str(report.tokens), "")
    table.add_row("max |logit diff|", f"{report.max_abs_diff:.3e}", f"<= {tol.max_abs_diff:g}")
    table.add_row("mean KL(HF||mcore)", f"{report.mean_kl:.3e}", f"<= {tol.max_kl:g}")
    table.add_row("top-1 agreement", f"{report.top1_agreement:.4f}", f">= {tol.min_top1:g}")
    table.add_row("max |logit| (scale)", f"{report.logit_scale:.2f}", "")
    Console().print(table)
    if not ok:
        raise typer.Exit(1)
