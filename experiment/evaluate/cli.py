"""``experiment eval FOLDER [--checkpoints all|last|iter_N]``: export each chosen checkpoint (or reuse its
export under ``logs/eval/export/``), run the kit's lm-eval tasks on it, and write the table, JSON and PNG."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)
OUT = Path("logs") / "eval"


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)


def choose(save_dir: Path, spec: str) -> list[int]:
    """Iterations of the run's complete checkpoints that ``spec`` names (all | last | iter_N | N)."""
    from experiment.evaluate.harness import EvalError
    from experiment.train.checkpointing import usable_iterations

    good = sorted(usable_iterations(save_dir)[0]) if save_dir.is_dir() else []
    if not good:
        raise EvalError(f"{save_dir}: no complete checkpoint; fix: run `experiment run` first (checkpoint.save)")
    if spec == "all":
        return good
    if spec == "last":
        return good[-1:]
    digits = spec.removeprefix("iter_")
    if digits.isdigit() and int(digits) in good:
        return [int(digits)]
    raise EvalError(f"--checkpoints {spec}: not a complete checkpoint of {save_dir} (have: "
                    f"{', '.join(f'iter_{i}' for i in good)}); fix: use all, last or iter_N", field="--checkpoints")


def export(ckpt_dir: Path, iteration: int | None, dest: Path) -> Path:
    """The Hugging Face export of one checkpoint, reused when a complete one is there."""
    if (dest / "config.json").is_file():
        return dest
    from experiment.ckpt import hf_export
    from experiment.model import parallel as distributed

    distributed.initialize()
    try:
        hf_export.export_checkpoint(ckpt_dir, dest, iteration, dtype="float32", show_progress=False)
    finally:
        distributed.shutdown()
    return dest


def eval_cmd(
    folder: Path = typer.Argument(..., help="training folder, e.g. training/demo"),
    checkpoints: str = typer.Option("all", "--checkpoints", help="all | last | iter_N: which of the run's checkpoints"),
    base: bool = typer.Option(True, "--base/--no-base", help="also evaluate the base checkpoint (the reference)"),
    tokenizer: Path | None = typer.Option(None, help="Hugging Face tokenizer folder (default: the one exported "
                                          "with the checkpoint; from-scratch runs have none)"),
    target: list[str] = typer.Option([], "--target", help="a target domain (repeatable; default: the mix's rule, "
                                     "docs/tracking.md)"),
    max_docs: int = typer.Option(16, min=1, help="held-out documents per domain"),
    max_tokens: int | None = typer.Option(None, min=1, help="held-out tokens per domain (the last document cut "
                                          "there; default: all of --max-docs): the eval's cost is its tokens"),
    limit: int | None = typer.Option(None, min=1, help="items per task (default: all)"),
    batch_size: int = typer.Option(4, min=1, help="lm-eval's batch size (requests per forward pass)"),
    processes: int | None = typer.Option(None, min=1, help="CPU only: checkpoints evaluated side by side, the cores "
                                         "shared out (default: one per checkpoint up to the cores; 1: one after "
                                         "the other with all cores)"),
    overrides: list[str] = typer.Option([], "--set", help="section.key=value over experiment.toml (default: the "
                                        "overrides the run recorded in run.lock.json)"),
    tasks: list[str] = typer.Option([], "--task", help="also run this lm-eval task (repeatable): a standard one "
                                    "whose dataset is in the local Hugging Face cache, or one from --task-dir"),
    task_dir: Path | None = typer.Option(None, "--task-dir", help="a folder of your own lm-eval task YAML files "
                                         "(lm-eval's include_path)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object on stdout"),
) -> None:
    """lm-evaluation-harness on the run's checkpoints: held-out perplexity per domain, multiple choice per
    language, and the gain on the target domains against the loss on the replay domains (PNG)."""
    # a KitError (lm-eval missing, no checkpoint, no tokenizer, a bad folder) reaches the CLI's one handler
    _eval(folder, checkpoints, base, tokenizer, target, max_docs, limit, batch_size, as_json, overrides, tasks,
          task_dir, max_tokens, processes)


def run_tasks(pool, processes, exports, tok_dir, docs, cache, batch_size, limit, max_length, tasks, task_dir) -> list:
    """lm-eval on every export (side by side in ``pool``: ``harness.evaluate_all``), one row each, in order."""
    from experiment.evaluate import harness, results

    workers, threads = harness.cpu_workers(len(exports), processes)
    labels = [label for label, _, _ in exports]
    console.print(f"lm-eval {', '.join(labels)}: {len(docs) + len(harness.LANGUAGES) + len(tasks)} task(s) each"
                  + (f", {workers} processes x {threads} thread(s)" if pool is not None else ""))
    metrics = harness.evaluate_all(pool, [hf for _, _, hf in exports], tok_dir, docs, cache, batch_size, limit,
                                   max_length, tasks, task_dir,
                                   done=lambda i, s: console.print(f"  {labels[i]} done ({s:.0f} s)"))
    return [results.from_metrics(label, step, m) for (label, step, _), m in zip(exports, metrics)]


def recorded_overrides(folder_path: Path) -> list[str]:
    """The ``--set`` overrides the run recorded in its lockfile (so ``[tracking]`` switched on with ``--set``
    for the run reaches the same trackers here)."""
    import json

    from experiment.lock import lockfile

    lock = folder_path / lockfile.LOCK_NAME
    try:
        return list(json.loads(lock.read_text())["config"]["overrides"]) if lock.is_file() else []
    except (ValueError, KeyError, TypeError):
        return []


def _eval(folder_path, checkpoints, base, tokenizer, target, max_docs, limit, batch_size, as_json, overrides,
          tasks=(), task_dir=None, max_tokens=None, processes=None) -> None:
    import warnings

    from experiment.evaluate import harness, heldout, results
    from experiment.evaluate.harness import EvalError
    from experiment.mixture.checks import load_checked
    from experiment.mixture.plan import plan_folder

    harness.require_lm_eval()
    harness.check_tasks(list(tasks), task_dir)  # a missing task or dataset is said before minutes of exports
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    folder = load_checked(folder_path, overrides=overrides or recorded_overrides(folder_path))
    cfg = folder.config
    out_dir = folder.path / OUT
    save_dir = folder.resolve(cfg.checkpoint.save)
    chosen: list[tuple[str, int, Path, int | None]] = []  # label, step, checkpoint folder, iteration
    if base and not cfg.checkpoint.from_scratch and cfg.checkpoint.base:
        chosen.append(("base", 0, folder.resolve(cfg.checkpoint.base), None))
    chosen += [(f"iter_{i:07d}", i, save_dir, i) for i in choose(save_dir, checkpoints)]
    with harness.workers(len(chosen), processes) as pool:  # started now: their imports overlap the exports
        exports = []
        for label, step, ckpt, it in chosen:
            console.print(f"export {label} -> {out_dir / 'export' / label}")
            exports.append((label, step, export(ckpt, it, out_dir / "export" / label)))
        tok_dir = tokenizer or exports[-1][2]
        if not any((tok_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise EvalError(f"{tok_dir}: no tokenizer files; fix: pass --tokenizer FOLDER (a Hugging Face tokenizer "
                            "folder of the tokenizer the data was tokenized with)", field="--tokenizer")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        docs = heldout.write_documents(folder, tok, out_dir / "tasks", max_docs, max_tokens)
        if not docs:
            console.print("[yellow]no held-out documents (data.valid_fraction = 0): perplexity tasks skipped[/yellow]")
        rows = run_tasks(pool, processes, exports, tok_dir, docs, out_dir / "hf-datasets", batch_size, limit,
                         max(cfg.model.seq_length, 512), list(tasks), task_dir)
    targets = heldout.targets(plan_folder(folder), target) & set(docs) if docs else set(target)
    results.add_gains(rows, targets)
    png = results.plot(rows, out_dir, f"{cfg.name}: target gain vs replay loss")
    payload = results.emit(rows, targets, out_dir, as_json, {"png": str(png)})
    sent = results.track(folder, rows, [out_dir / results.JSON_NAME, png])
    console.print(f"wrote {out_dir / results.JSON_NAME} and {png}" + (f"; sent to {', '.join(sent)}" if sent else ""))
    return payload
