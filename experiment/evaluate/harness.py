"""One lm-evaluation-harness run on one exported checkpoint, with the kit's local tasks only.

The tasks are the YAML templates shipped in ``tasks/`` (read with lm-eval's own loader, so ``!function``
and the metric names are lm-eval's), each given its task name and local data file here. Nothing is read from
the Hugging Face Hub: ``HF_DATASETS_OFFLINE`` and ``HF_HUB_OFFLINE`` are set before lm-eval is imported.
"""

from __future__ import annotations

import os
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


def evaluate(hf_dir: Path, tokenizer: Path, configs: dict[str, dict], batch_size: int = 4,
             limit: int | None = None, max_length: int | None = None) -> dict[str, dict[str, float]]:
    """Run lm-eval (model ``hf``, CPU or the first GPU) and return {kit task name: {metric: value}}.

    ``max_length``: the model's context here, so the rolling perplexity windows stay short (the command passes
    the run's ``seq_length``, at least 512 so that every multiple-choice item fits; a CPU is then not asked
    for the 8k-token attention of a model's full context)."""
    import logging

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    by_task = {c["task"]: name for name, c in configs.items()}
    results = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(hf_dir), "tokenizer": str(tokenizer), "dtype": "float32",
                    "device": "cuda" if torch.cuda.is_available() else "cpu",
                    **({"max_length": max_length} if max_length else {})},
        tasks=list(configs.values()), task_manager=TaskManager(include_defaults=False),
        batch_size=batch_size, limit=limit, log_samples=False, bootstrap_iters=0,
    )
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results["results"].items():
        if task in by_task:
            out[by_task[task]] = {k.split(",")[0]: float(v) for k, v in metrics.items()
                                  if "," in k and "stderr" not in k and isinstance(v, (int, float))}
    return out
