"""The training runner: one process per rank, started by torchrun as
``python -m experiment.train.runner FOLDER``.

Thin by design (torchtitan-style): the folder is turned into (model, data, optimizer, checkpointer,
metrics) and a plain loop drives megatron.core's ``get_forward_backward_func``, Megatron DDP, the
distributed optimizer and ``OptimizerParamScheduler``. Everything numeric is megatron.core's; what the
kit adds is the wiring, exact resume, crash-safe checkpoints and the metrics files.
"""

from __future__ import annotations

import json
import os
import shutil
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from experiment import determinism
from experiment.atomic import write_atomic
from experiment.train.checkpointing import TrainState

log = logging.getLogger("experiment.train")

STATUS_NAME = "run_status.json"


@dataclass(frozen=True)
class RunOptions:
    """What the command line may change about a run without touching the folder."""

    max_iterations: int | None = None  # stop (without the final save) after this many steps: benchmarks
    save: bool = True
    evaluate: bool = True
    plot: bool = True


@dataclass
class RunResult:
    state: str  # finished | interrupted | stopped
    iteration: int
    consumed_samples: int
    step_seconds: list[float] = field(default_factory=list)
    bookkeeping_seconds: list[float] = field(default_factory=list)  # per step, after the optimizer step
    final_loss: float | None = None


def train_iterations(training, seq_length: int) -> int:
    """The run's length in iterations (from train_iters, or a token budget rounded up to whole batches)."""
    from experiment.mixture.plan import parse_budget  # the one token-count syntax of the kit ("50B")

    if training.train_iters is not None:
        return training.train_iters
    return max(1, math.ceil(parse_budget(training.train_tokens) / (training.global_batch_size * seq_length)))


# ------------------------------------------------------------------------------------------ pieces

def _rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _say(message: str) -> None:
    if _rank0():
        print(f"[experiment.train] {message}", flush=True)


def _checkpoint_meta(folder, shape, padded_vocab: int, base_dir: Path | None, bf16: bool, layout) -> str:
    """``kit_checkpoint.json`` for the run's checkpoints: the base's, with this run's layout."""
    from experiment.ckpt import meta as ckpt_meta

    if base_dir is not None:
        meta = ckpt_meta.read(base_dir)
    else:
        meta = ckpt_meta.CheckpointMeta(
            shape=shape, vocab_size=shape.vocab_size, padded_vocab_size=padded_vocab, family="llama",
            hf_architecture="LlamaForCausalLM", hf_config={}, dtype="bfloat16" if bf16 else "float32",
            source=f"from_scratch:{folder.config.name}", source_hash="none",
        )
    meta = meta.model_copy(update={"saved_layout": {"tensor_parallel": layout.tensor_parallel,
                                                    "pipeline_parallel": layout.pipeline_parallel}})
    return meta.to_json()


def _copy_tokenizer(base_dir: Path, save_dir: Path) -> None:
    """The base's tokenizer files travel with the run's checkpoints, so `experiment ckpt export` of any
    iteration gives a complete Hugging Face folder. Copied once, through a temporary name."""
    src, dst = base_dir / "tokenizer", save_dir / "tokenizer"
    if not src.is_dir() or dst.is_dir():
        return
    save_dir.mkdir(parents=True, exist_ok=True)
    tmp = save_dir / ".tokenizer.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    os.replace(tmp, dst)


def _model_vocab(folder, shape, layout) -> tuple[int, Path | None]:
    """Padded vocabulary and base folder; the base's recorded shape must be the folder's."""
    from experiment.ckpt import meta as ckpt_meta
    from experiment.model.build import padded_vocab_size

    ck = folder.config.checkpoint
    if ck.from_scratch or ck.base is None:
        return padded_vocab_size(shape.vocab_size, layout.tensor_parallel), None
    base = folder.resolve(ck.base)
    meta = ckpt_meta.read(base)
    diff = meta.shape.differences(shape)
    if diff:
        raise ValueError(
            f"{base}/kit_checkpoint.json: the base checkpoint's shape differs from the folder's model "
            f"(base, folder): {diff}; fix: set [model] preset/overrides to the base's shape"
        )
    if meta.padded_vocab_size % layout.tensor_parallel:
        raise ValueError(f"{base}: padded vocabulary {meta.padded_vocab_size} does not split over "
                         f"tensor_parallel={layout.tensor_parallel}")
    return meta.padded_vocab_size, base


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    batch = {k: v.cuda(non_blocking=True) for k, v in batch.items()}
    output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
    return output, partial(_loss, batch["loss_mask"])


def _loss(loss_mask, output):
    mask = loss_mask.view(-1).float()
    loss = (output.float().view(-1) * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"lm loss": loss.detach().clone()}


def _mean_loss(outputs) -> float:
    """Mean of the micro-batch losses, averaged over data-parallel ranks (last pipeline stage holds them)."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if ps.is_pipeline_last_stage(ignore_virtual=True) and outputs:
        value = torch.stack([o["lm loss"].float() for o in outputs]).mean().reshape(1)
    else:
        value = torch.zeros(1, device=device)
    dist.all_reduce(value, group=ps.get_data_parallel_group())
    value /= ps.get_data_parallel_world_size()
    if ps.get_pipeline_model_parallel_world_size() > 1:  # everyone learns the last stage's value
        dist.all_reduce(value, group=ps.get_pipeline_model_parallel_group())
    return float(value.item())


def _domain_counter(dataset, blend):
    """A function (start, count) -> {domain: samples} from the blended dataset's own index."""
    import numpy as np

    index = getattr(dataset, "dataset_index", None)
    if index is None or not hasattr(dataset, "datasets"):
        domain = next((d for d, ps in blend.domains.items() if blend.prefixes[0] in ps), "all")
        return lambda start, count: {domain: count}
    domain_of = []
    for ds in dataset.datasets:
        path = getattr(ds, "dataset_path", None)
        domain_of.append(next((d for d, ps in blend.domains.items() if path in ps), "other"))

    def count(start: int, n: int) -> dict[str, int]:
        ids = np.asarray(index[start:start + n])
        out: dict[str, int] = {}
        for i, c in zip(*np.unique(ids, return_counts=True)):
            out[domain_of[int(i)]] = out.get(domain_of[int(i)], 0) + int(c)
        return out

    return count


def _seed_host_rngs(seed: int) -> None:
    """Python's and numpy's global generators (torch's are seeded by ``distributed.initialize``): they are
    part of the saved RNG state, so they must start from the seed for runs to be byte-identical."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)


def _write_status(log_dir: Path, payload: dict) -> None:
    write_atomic(log_dir / STATUS_NAME, json.dumps(payload, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------ run

def run(folder, options: RunOptions = RunOptions()) -> RunResult:
    """Train the folder on this rank (call on every rank of a torchrun job)."""
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.module import Float16Module

    from experiment.train import checkpointing as ckpt
    from experiment.train import data as train_data
    from experiment.model import parallel as distributed
    from experiment.train import metrics
    from experiment.train.attention import layer_spec
    from experiment.model.build import ParallelLayout, build_gpt_model
    from experiment.train.optim import build_optimizer, build_scheduler
    from experiment.train.signals import StopRequest, protect_checkpoint_writers
    from experiment.train.walltime import WALLTIME_STATE, Segment
    from experiment.mixture import record as mixture_record

    cfg = folder.config
    t = cfg.training
    det_env = determinism.apply(t.deterministic)  # before any CUDA/NCCL work
    layout = ParallelLayout(t.tensor_parallel, t.pipeline_parallel)
    env = distributed.initialize(layout, seed=t.seed)
    _seed_host_rngs(t.seed)
    shape, seq = cfg.model.shape, cfg.model.seq_length
    bf16 = t.precision == "bf16"
    iters = train_iterations(t, seq)
    log_dir = folder.path / "logs"
    save_dir = folder.resolve(cfg.checkpoint.save)
    if env.rank == 0:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "determinism.json").write_text(json.dumps(det_env, indent=1, sort_keys=True) + "\n")
        removed = ckpt.remove_stale_partials(save_dir) if save_dir.is_dir() else []
        for p in removed:
            _say(f"removed {p.name}, a checkpoint a killed run did not finish")

    # model
    padded_vocab, base_dir = _model_vocab(folder, shape, layout)
    gpt = build_gpt_model(shape, seq, layout, padded_vocab_size=padded_vocab, layer_spec=layer_spec(t.attention),
                          params_dtype=torch.bfloat16 if bf16 else torch.float32, bf16=bf16,
                          deterministic=t.deterministic)
    if torch.cuda.is_available():
        gpt.cuda(torch.cuda.current_device())
    config = gpt.config
    module = Float16Module(config, gpt) if bf16 else gpt
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=True)
    model = DistributedDataParallel(config, ddp_config, module)
    optimizer = build_optimizer(model, t, bf16=bf16)
    scheduler = build_scheduler(optimizer, t, iters)
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = model.no_sync

    # state: resume > base > scratch
    state, warnings = (ckpt.load_training(save_dir, gpt, optimizer, scheduler) if save_dir.is_dir() else (None, []))
    for w in warnings:
        _say(f"WARNING: {w}; using an older checkpoint")
    if state is not None:
        _say(f"resumed from {ckpt.iteration_dir(save_dir, state.iteration)} "
             f"(iteration {state.iteration}, {state.consumed_samples} samples consumed)")
    elif base_dir is not None:
        it, base_folder = ckpt.load_base(base_dir, gpt)
        # a fresh copy of the loaded weights into the optimizer's fp32 main params
        optimizer.reload_model_params()
        digest = ckpt.content_hash(base_folder) if env.rank == 0 else ""
        _say(f"base checkpoint loaded: {base_folder} (iteration {it}) {digest}")
        if env.rank == 0:
            (log_dir / "base_checkpoint.json").write_text(json.dumps(
                {"path": str(base_folder), "iteration": it, "hash": digest}, indent=1) + "\n")
        state = TrainState()
    else:
        _say("training from scratch (checkpoint.from_scratch = true)")
        state = TrainState()
    meta_json = _checkpoint_meta(folder, shape, padded_vocab, base_dir, bf16, layout)
    if _rank0() and base_dir is not None:
        _copy_tokenizer(base_dir, save_dir)

    # data
    blend = train_data.blend_from_folder(folder)
    # a resume must read the blended index it started with: every rank checks, then rank 0 records the mixture
    # this run reads from now on (atomically, so a rank still checking reads the old or the same new record)
    changes = (mixture_record.check_resume(log_dir, blend.plan, cfg.data.allow_mixture_change)
               if state.consumed_samples else [])
    for change in changes:
        _say(f"WARNING: mixture changed on resume (data.allow_mixture_change = true): {change}")
    if env.rank == 0:
        mixture_record.write_record(log_dir, blend.plan)
    cache = log_dir / "dataset_index"  # megatron's index cache: derived data, kept with the run's outputs
    valid_fraction = cfg.data.valid_fraction
    train_ds = train_data.build_train(blend, num_samples=iters * t.global_batch_size, seq_length=seq,
                                      seed=t.seed, valid_fraction=valid_fraction, cache=cache)
    valid_sets = (train_data.build_valid_per_domain(
        blend, num_samples=t.eval_iters * t.global_batch_size, seq_length=seq, seed=t.seed,
        valid_fraction=valid_fraction, cache=cache) if options.evaluate and t.eval_iters else {})
    if options.evaluate and t.eval_iters:
        missing = sorted(set(blend.domains) - set(valid_sets))
        if missing:
            _say(f"WARNING: no held-out documents for {missing}: raise data.valid_fraction to evaluate them")
    plan = train_data.BatchPlan(t.global_batch_size, t.micro_batch_size,
                                ps.get_data_parallel_rank(), ps.get_data_parallel_world_size())
    count_domains = _domain_counter(train_ds, blend)

    logger = (metrics.MetricsLogger(log_dir, state.iteration, folder=folder)
              if env.rank == 0 else metrics.NullLogger())
    fwd_bwd = get_forward_backward_func()
    tokens_per_iter = t.global_batch_size * seq
    domain_samples: dict[str, int] = {}
    if state.consumed_samples:
        domain_samples = count_domains(0, state.consumed_samples)

    def evaluate(iteration: int) -> dict[str, float]:
        model.eval()
        losses = {}
        with torch.no_grad():
            for domain, ds in valid_sets.items():
                vals = []
                for g in range(t.eval_iters):
                    out = fwd_bwd(forward_step_func=_forward_step,
                                  data_iterator=train_data.microbatches(ds, plan, g * t.global_batch_size),
                                  model=[model], num_microbatches=plan.num_microbatches, seq_length=seq,
                                  micro_batch_size=t.micro_batch_size, forward_only=True)
                    vals.append(_mean_loss(out))
                losses[domain] = sum(vals) / len(vals)
        model.train()
        logger.evaluation(iteration, losses)
        if losses:
            _say(f"eval @ {iteration}: " + ", ".join(f"{d} loss {v:.4f} ppl {math.exp(min(v, 50)):.1f}"
                                                      for d, v in losses.items()))
        return losses

    result = RunResult("finished", state.iteration, state.consumed_samples)
    last_eval = None
    _say(f"training {iters} iterations of {t.global_batch_size} x {seq} tokens on {env.world_size} "
         f"process(es) ({env.backend}, TP={layout.tensor_parallel}, PP={layout.pipeline_parallel}, "
         f"DP={plan.dp_size}), starting at iteration {state.iteration}")
    before = evaluate(0) if valid_sets and state.iteration == 0 else None  # the base model, for comparison
    model.train()
    protect_checkpoint_writers()
    segment = Segment(folder, log_dir, save_dir, iters, tokens_per_iter, env.rank == 0)  # time budget, status, retention
    save_now = partial(ckpt.save, save_dir, gpt, optimizer, scheduler, state, meta_json=meta_json)
    with StopRequest() as stop:
        while state.iteration < iters:
            t0 = time.perf_counter()
            model.zero_grad_buffer()
            optimizer.zero_grad()
            outputs = fwd_bwd(forward_step_func=_forward_step,
                              data_iterator=train_data.microbatches(train_ds, plan, state.consumed_samples),
                              model=[model], num_microbatches=plan.num_microbatches, seq_length=seq,
                              micro_batch_size=t.micro_batch_size, forward_only=False)
            ok, grad_norm, _ = optimizer.step()
            scheduler.step(increment=t.global_batch_size)
            t_book = time.perf_counter()
            loss = _mean_loss(outputs)
            for d, c in count_domains(state.consumed_samples, t.global_batch_size).items():
                domain_samples[d] = domain_samples.get(d, 0) + c
            state.consumed_samples += t.global_batch_size
            state.iteration += 1
            dt = time.perf_counter() - t0  # compute only: what tokens/s reports
            lr = optimizer.param_groups[0]["lr"]
            logger.step(state.iteration, loss=loss, lr=lr, grad_norm=grad_norm,
                        consumed_samples=state.consumed_samples, tokens=state.consumed_samples * seq,
                        tokens_per_s=tokens_per_iter / dt, tokens_per_s_per_gpu=tokens_per_iter / dt / env.world_size,
                        domain_samples=domain_samples)
            if state.iteration % t.log_interval == 0 or state.iteration == iters:
                _say(f"iter {state.iteration}/{iters} loss {loss:.4f} lr {lr:.3e} "
                     f"grad {grad_norm if grad_norm is None else round(grad_norm, 4)} "
                     f"{tokens_per_iter / dt:,.0f} tok/s")
            result.final_loss = loss
            stopping = options.max_iterations is not None and state.iteration >= options.max_iterations
            eval_seconds = 0.0
            if valid_sets and not stopping and state.iteration % t.eval_interval == 0 and state.iteration < iters:
                te = time.perf_counter()
                last_eval = evaluate(state.iteration)
                eval_seconds = time.perf_counter() - te
            stop_now = stop.requested()
            out_of_time = segment.after_step(state.iteration, dt) and state.iteration < iters
            # the whole iteration with all per-step bookkeeping (metrics, signal check), but without the
            # periodic evaluation and checkpoint: what bench/train_step.py compares with a bare loop
            t_end = time.perf_counter()
            result.step_seconds.append(t_end - t0 - eval_seconds)
            result.bookkeeping_seconds.append(t_end - t_book - eval_seconds)
            if stopping:
                result.state = "stopped"
                break
            if stop_now or out_of_time:
                result.state = "interrupted" if stop_now else WALLTIME_STATE
                _say(f"{f'signal {stop.signum}' if stop_now else 'time budget'}: saving a checkpoint at "
                     f"iteration {state.iteration} and stopping")
                if options.save:
                    segment.save(save_now, state.iteration)
                break
            if options.save and (state.iteration % t.save_interval == 0 or state.iteration == iters):
                segment.save(save_now, state.iteration)
                if state.iteration < iters and stop.requested():  # signalled during the save: it is done, stop
                    result.state = "interrupted"
                    _say(f"signal {stop.signum} during the save of iteration {state.iteration}: stopping")
                    break
    if result.state == "finished" and valid_sets:
        last_eval = evaluate(state.iteration)
    result.iteration, result.consumed_samples = state.iteration, state.consumed_samples
    png = logger.close(plot=options.plot and result.state != "stopped")
    if env.rank == 0:
        _write_status(log_dir, {"state": result.state, "iteration": state.iteration, "train_iters": iters,
                                "consumed_samples": state.consumed_samples,
                                "final_loss": None if result.final_loss is None else result.final_loss.hex(),
                                "checkpoint": str(ckpt.iteration_dir(save_dir, state.iteration))
                                if options.save else None})
        _summary(folder, result, iters, last_eval, png, tokens_per_iter, before)
    distributed.shutdown()
    return result


def _summary(folder, result: RunResult, iters: int, last_eval, png, tokens_per_iter: int, before=None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {folder.config.name}: {result.state}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("iterations", f"{result.iteration}/{iters}")
    table.add_row("samples consumed", str(result.consumed_samples))
    if result.final_loss is not None:
        table.add_row("final train loss", f"{result.final_loss:.4f}")
    steady = result.step_seconds[1:] or result.step_seconds
    if steady:
        mean = sum(steady) / len(steady)
        table.add_row("s / iteration (steady)", f"{mean:.3f}")
        table.add_row("tokens / s", f"{tokens_per_iter / mean:,.0f}")
    for domain, loss in (last_eval or {}).items():
        start = f"{before[domain]:.4f} -> " if before and domain in before else ""
        table.add_row(f"valid loss {domain}", f"{start}{loss:.4f} (ppl {math.exp(min(loss, 50)):.1f})")
    if png:
        table.add_row("loss curve", str(png))
    Console(stderr=True).print(table)


def _quiet_known_warnings() -> None:
    """Warnings every step would repeat on every rank and that need no action from the user: megatron-core
    0.16 calls collectives torch 2.13 renamed, falls back to torch norms without Apex (expected here), and reads
    ``.grad`` of non-leaf tensors."""
    import warnings

    renamed = r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated"
    warnings.filterwarnings("ignore", category=FutureWarning, message=renamed)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    # megatron reads .grad of non-leaf tensors; under the CPU layer's torch-function mode torch warns once per rank
    warnings.filterwarnings("ignore", category=UserWarning,
                            message=r"The \.grad attribute of a Tensor that is not a leaf")


def main(argv: list[str] | None = None) -> int:
    """Entry point of each torchrun worker: ``python -m experiment.train.runner FOLDER [--max-iterations N]``."""
    import argparse

    from experiment import megatron_jit
    from experiment.folder import FolderError
    from experiment.mixture.checks import load

    megatron_jit.install()  # before the first megatron import of this worker

    parser = argparse.ArgumentParser(prog="python -m experiment.train.runner")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--max-iterations", type=int, default=None)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--set", action="append", default=[], dest="overrides")  # experiment run --set
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    _quiet_known_warnings()
    try:
        folder = load(args.folder, overrides=args.overrides)
        result = run(folder, RunOptions(max_iterations=args.max_iterations, save=not args.no_save))
    except FolderError as err:  # bad folder, or a resume that would change the mixture
        print(f"[experiment.train] refusing to start:\n{err}", file=sys.stderr, flush=True)
        return 2
    return 0 if result.state in ("finished", "interrupted", "stopped", "walltime") else 1


if __name__ == "__main__":
    sys.exit(main())
