"""One lm-evaluation-harness run on one exported checkpoint: the kit's local tasks, plus any ``--task``.

The kit's tasks are the YAML templates shipped in ``tasks/`` (read with lm-eval's own loader, so ``!function``
and the metric names are lm-eval's), each given its task name and local data file here. ``--task NAME`` adds
a standard lm-eval task (its registry) or one of the user's own YAML tasks (``--task-dir``, lm-eval's
``include_path``); each runs only when its dataset is on this machine. Nothing is read from the Hugging Face
Hub: ``HF_DATASETS_OFFLINE`` and ``HF_HUB_OFFLINE`` are set before lm-eval is imported.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from experiment.errors import KitError

TASKS = Path(__file__).parent / "tasks"
LANGUAGES = ("en", "ja")
INSTALL = "pip install 'midtrain-kit[eval]' (or: pip install 'lm-eval>=0.4.13')"


class EvalError(KitError):
    """``experiment eval`` cannot run: lm-eval missing, no checkpoint, no tokenizer (with the fix)."""


def require_lm_eval() -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's and datasets' per-request bars: the command prints its own lines
    try:
        import lm_eval  # noqa: F401
    except ModuleNotFoundError as err:
        raise EvalError(f"lm-evaluation-harness is not installed ({err.name}); fix: {INSTALL}") from None


def task_configs(heldout: dict[str, Path], cache: Path) -> dict[str, dict]:
    """lm-eval task configs by kit name (``ppl/<domain>``, ``mc/<lang>``) -> lm-eval config dict."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from experiment.evaluate.heldout import safe

    ppl, mc = load_yaml(TASKS / "heldout_ppl.yaml"), load_yaml(TASKS / "continuation_mc.yaml")
    out = {}
    for domain, path in heldout.items():
        out[f"ppl/{domain}"] = {**ppl, "task": f"kit_heldout_{safe(domain)}",
                                "dataset_kwargs": {"data_files": {"test": str(path)}, "cache_dir": str(cache)}}
    for lang in LANGUAGES:
        out[f"mc/{lang}"] = {**mc, "task": f"kit_continuation_{lang}",
                             "dataset_kwargs": {"data_files": {"test": str(TASKS / f"mc_{lang}.jsonl")},
                                                "cache_dir": str(cache)}}
    return out


OFFLINE_FIX = ("put the dataset in this machine's Hugging Face datasets cache (HF_DATASETS_CACHE, default "
               "~/.cache/huggingface/datasets): on a machine with network run lm_eval once with the task, or "
               "datasets.load_dataset(...) as the task's YAML names it, and copy that cache folder here")


def task_manager(names: list[str], task_dir: Path | None):
    """lm-eval's TaskManager: its registry only when a ``--task`` is asked for (indexing it costs seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=bool(names), include_path=str(task_dir) if task_dir else None)


def check_tasks(names: list[str], task_dir: Path | None) -> None:
    """Every ``--task`` is one lm-eval knows and its data loads offline: checked before any export."""
    if not names:
        return
    if task_dir is not None and not Path(task_dir).is_dir():
        raise EvalError(f"--task-dir {task_dir}: no such folder; fix: give a folder of lm-eval task YAML files",
                        field="--task-dir")
    from lm_eval.tasks import get_task_dict

    manager = task_manager(names, task_dir)
    for name in names:
        if name not in manager.all_tasks:
            raise EvalError(f"--task {name}: lm-eval knows no task of that name (neither its registry nor "
                            f"{task_dir or 'a --task-dir'}); fix: a name from `lm_eval ls tasks`, or a YAML task "
                            "in --task-dir", field="--task")
        try:
            get_task_dict([name], manager)  # builds the task, which loads its dataset
        except Exception as err:  # datasets' offline errors have no common class (ConnectionError, ValueError..)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise EvalError(f"--task {name}: its dataset is not on this machine ({reason})", field="--task",
                            fix=OFFLINE_FIX) from None


def evaluate(hf_dir: Path, tokenizer: Path, configs: dict[str, dict], batch_size: int = 4,
             limit: int | None = None, max_length: int | None = None, tasks: list[str] = (),
             task_dir: Path | None = None) -> dict[str, dict[str, float]]:
    """Run lm-eval (model ``hf``, CPU or the first GPU) and return {kit task name: {metric: value}}.

    One ``simple_evaluate`` per export: the model is loaded once for all its tasks, and lm-eval groups the
    requests of all tasks by kind (one pass of rolling windows, one of multiple-choice continuations).
    ``max_length``: the model's context here, so the rolling perplexity windows stay short (the command passes
    the run's ``seq_length``, at least 512 so that every multiple-choice item fits; a CPU is then not asked
    for the 8k-token attention of a model's full context)."""
    import logging

    import torch
    from lm_eval import simple_evaluate
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    by_task = {c["task"]: name for name, c in configs.items()} | {t: f"task/{t}" for t in tasks}
    results = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(hf_dir), "tokenizer": str(tokenizer), "dtype": "float32",
                    "device": "cuda" if torch.cuda.is_available() else "cpu",
                    **({"max_length": max_length} if max_length else {})},
        tasks=list(configs.values()) + list(tasks), task_manager=task_manager(list(tasks), task_dir),
        batch_size=batch_size, limit=limit, log_samples=False, bootstrap_iters=0,
    )
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results["results"].items():
        if task in by_task:
            out[by_task[task]] = {k.split(",")[0]: float(v) for k, v in metrics.items()
                                  if "," in k and "stderr" not in k and isinstance(v, (int, float))}
    return out


def cpu_workers(exports: int, processes: int | None = None) -> tuple[int, int]:
    """(processes, threads each) for ``exports`` models on this machine's CPUs: one process per export up to
    the cores (or ``processes``), the cores shared out. Measured on 2 cores (SmolLM2-135M, float32, docs/tracking.md): two
    1-thread processes gave 1.29x the tokens/s of one 2-thread process, with bitwise-equal logits."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(exports, cores, processes or cores))
    return workers, max(1, cores // workers)


def _worker(threads: int) -> None:
    """A worker's start: its share of the cores; lm-eval and transformers imported now (about 8 s, while the
    command still exports); and its Python stderr closed to lm-eval's per-batch progress bars (two workers'
    bars interleave into noise; lm-eval forces them on). Errors still reach the command: a worker's
    exception is raised again by its future."""
    import sys

    import torch

    torch.set_num_threads(threads)
    sys.stderr = open(os.devnull, "w")
    require_lm_eval()
    import lm_eval.models.huggingface  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401


def _ready() -> None:
    """A no-op task: submitting one per worker starts them all (the pool spawns a worker per pending task)."""


@contextmanager
def workers(exports: int, processes: int | None = None):
    """The processes :func:`evaluate_all` runs the exports in, started now so that their imports overlap the
    caller's exports: on CPU one per export up to the cores (:func:`cpu_workers`), since a 2-core machine
    runs two single-threaded forward passes faster than one two-threaded one; None (this process, one export
    after the other) on a GPU or with one worker."""
    import torch

    count, threads = cpu_workers(exports, processes)
    if torch.cuda.is_available() or count == 1:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn"), initializer=_worker,
                             initargs=(threads,)) as pool:
        for _ in range(count):
            pool.submit(_ready)
        yield pool


def _evaluate_export(hf_dir: Path, tokenizer: Path, heldout: dict[str, Path], cache: Path, *rest):
    """:func:`evaluate` with the kit's task configs built here: they hold lm-eval's loaded ``!function``, which
    does not pickle into a worker process."""
    return evaluate(hf_dir, tokenizer, task_configs(heldout, cache), *rest)


def evaluate_all(pool, exports: list[Path], tokenizer: Path, heldout: dict[str, Path], cache: Path,
                 batch_size: int = 4, limit: int | None = None, max_length: int | None = None,
                 tasks: list[str] = (), task_dir: Path | None = None, done=None) -> list[dict[str, dict[str, float]]]:
    """:func:`evaluate` on each export with the kit's tasks (:func:`task_configs` of ``heldout``), in order:
    side by side in ``pool`` (:func:`workers`), or one after the other here when it is None.
    ``done(index, seconds)`` is called as each export finishes."""
    import time
    from concurrent.futures import as_completed

    args = (tokenizer, heldout, cache, batch_size, limit, max_length, list(tasks), task_dir)
    start = time.perf_counter()
    results: list = [None] * len(exports)
    if pool is None:
        for i, hf_dir in enumerate(exports):
            results[i] = _evaluate_export(hf_dir, *args)
            if done:
                done(i, time.perf_counter() - start)
        return results
    futures = {pool.submit(_evaluate_export, hf_dir, *args): i for i, hf_dir in enumerate(exports)}
    for future in as_completed(futures):
        results[futures[future]] = future.result()
        if done:
            done(futures[future], time.perf_counter() - start)
    return results
