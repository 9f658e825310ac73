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

from experiment import determinism, runlog
from experiment.atomic import write_atomic
from experiment.train.checkpointing import TrainState

log = logging.getLogger("experiment.train")

STATUS_NAME = runlog.STATUS


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


def _gpu_choice(t, shape, seq: int, world: int):
    """The spec/recompute choice on a GPU (None on CPU, where the local spec runs as before)."""
    import torch

    from experiment.train import gpu

    if t.fp8 and not (torch.cuda.is_available() and gpu.te_available()):
        from experiment.folder import FolderError, Problem

        raise FolderError([Problem(file="experiment.toml", field="training.fp8",
                                   message="FP8 needs a GPU with Transformer Engine, and this host has none",
                                   fix="set fp8 = false, or run in the GPU image (transformer_engine installed)")])
    if not torch.cuda.is_available():
        return None
    mem = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    dp = max(1, world // (t.tensor_parallel * t.pipeline_parallel))
    return gpu.choose(shape, seq, mem, te_available=gpu.te_available(), fp8=t.fp8, attention=t.attention,
                      recompute=t.recompute, micro_batch_size=t.micro_batch_size,
                      global_batch_size=t.global_batch_size, tp=t.tensor_parallel, pp=t.pipeline_parallel, dp=dp)


def _peak_memory_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def _world_record(world: int) -> dict:
    """Nodes and processes per node as torchrun started this run (``LOCAL_WORLD_SIZE``)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world) or world)
    return {"nnodes": max(1, world // max(local, 1)), "nproc_per_node": local}


def _write_status(log_dir: Path, payload: dict) -> None:
    write_atomic(log_dir / STATUS_NAME, json.dumps(payload, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------ run

@dataclass
class StepOutput:
    """One finished training step, as the after-step hooks see it."""

    iteration: int
    loss: float
    lr: float
    grad_norm: float | None
    seconds: float  # compute only (forward, backward, optimizer, loss all-reduce): what tokens/s reports


class Trainer:
    """One rank's training run, torchtitan-style: ``build`` turns the folder into model, optimizer and data,
    ``resume`` restores state, ``fit`` is the loop over ``train_step``, ``evaluate``, ``save`` and ``close``.

    Hooks: ``after_step`` callables get ``(trainer, StepOutput)`` after every step's bookkeeping,
    ``after_save`` callables get ``(trainer, checkpoint_dir)``; a hook sets ``trainer.stop_reason`` to end the
    run after the current step (with a save when ``options.save``).
    """

    def __init__(self, folder, options: RunOptions = RunOptions()):
        self.folder, self.options = folder, options
        self.cfg, self.t = folder.config, folder.config.training
        self.after_step: list = []
        self.after_save: list = []
        self.stop_reason: str | None = None

    # ---------------------------------------------------------------- build
    def build(self) -> "Trainer":
        """Process group, model, DDP, optimizer and scheduler (no state yet)."""
        import torch
        from megatron.core.distributed import (DistributedDataParallel, DistributedDataParallelConfig,
                                               finalize_model_grads)
        from megatron.core.transformer.module import Float16Module

        from experiment.model import parallel as distributed
        from experiment.model.build import ParallelLayout, build_gpt_model
        from experiment.train import checkpointing as ckpt
        from experiment.train import gpu
        from experiment.train import watchdog
        from experiment.train.optim import build_optimizer, build_scheduler

        t = self.t
        det_env = determinism.apply(t.deterministic)  # before any CUDA/NCCL work
        self.layout = ParallelLayout(t.tensor_parallel, t.pipeline_parallel)
        self.env = distributed.initialize(self.layout, seed=t.seed)
        _seed_host_rngs(t.seed)
        self.shape, self.seq = self.cfg.model.shape, self.cfg.model.seq_length
        self.bf16 = t.precision == "bf16"
        self.iters = train_iterations(t, self.seq)
        self.tokens_per_iter = t.global_batch_size * self.seq
        self.log_dir = self.folder.path / "logs"
        self.save_dir = self.folder.resolve(self.cfg.checkpoint.save)
        # heartbeat and hang check on every rank (armed from the second step on; training.hang_factor)
        self.watchdog = watchdog.Watchdog(self.log_dir, self.env.rank, self.env.world_size, t.hang_factor).start()
        if self.env.rank == 0:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / "determinism.json").write_text(json.dumps(det_env, indent=1, sort_keys=True) + "\n")
            removed = ckpt.remove_stale_partials(self.save_dir) if self.save_dir.is_dir() else []
            for p in removed:
                _say(f"removed {p.name}, a checkpoint a killed run did not finish")

        spec, extra = self._gpu_setup()
        self.layer_spec = spec  # recorded in run_status.json, and from there in the lock
        self.padded_vocab, self.base_dir = _model_vocab(self.folder, self.shape, self.layout)
        self.gpt = build_gpt_model(self.shape, self.seq, self.layout, padded_vocab_size=self.padded_vocab,
                                   layer_spec=gpu.layer_spec_for(spec),
                                   params_dtype=torch.bfloat16 if self.bf16 else torch.float32, bf16=self.bf16,
                                   deterministic=t.deterministic, **extra)
        if torch.cuda.is_available():
            self.gpt.cuda(torch.cuda.current_device())
        config = self.gpt.config
        module = Float16Module(config, self.gpt) if self.bf16 else self.gpt
        ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                   use_distributed_optimizer=True)
        self.model = DistributedDataParallel(config, ddp_config, module)
        self.optimizer = build_optimizer(self.model, t, bf16=self.bf16)
        self.scheduler = build_scheduler(self.optimizer, t, self.iters)
        config.finalize_model_grads_func = finalize_model_grads
        config.grad_scale_func = self.optimizer.scale_loss
        config.no_sync_func = self.model.no_sync
        return self

    def _gpu_setup(self) -> tuple[str, dict]:
        """Layer spec and TransformerConfig extras (recompute, FP8) for this GPU; FLOPs per token and peak for MFU."""
        import torch

        from experiment.train import gpu, throughput

        t = self.t
        self.choice = _gpu_choice(t, self.shape, self.seq, self.env.world_size)
        self.device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        self.flops_per_token = throughput.flops_per_token(self.shape, self.seq)
        self.peak = throughput.peak_flops(self.device_name, t.peak_tflops)
        if self.env.rank == 0 and self.choice is not None:
            c = self.choice
            _say(f"{self.device_name}: spec {c.spec}, recompute {c.recompute}, micro-batch {t.micro_batch_size} "
                 f"(suggested {c.micro_batch_size}: {c.reason}, ~{c.estimated_gib:.0f} GiB)")
        extra = {}
        if self.choice is not None:
            extra.update(gpu.recompute_config(self.choice.recompute))
            if self.choice.spec == "te-fp8":
                extra.update(fp8="hybrid", fp8_recipe="delayed")
        spec = self.choice.spec if self.choice is not None else ("local" if t.attention == "local" else "local-sdpa")
        return spec, extra

    # ---------------------------------------------------------------- resume
    def resume(self) -> "Trainer":
        """State: the run's own latest checkpoint > the base checkpoint > scratch; then the data."""
        from experiment.train import checkpointing as ckpt

        save_dir, log_dir = self.save_dir, self.log_dir
        from experiment.train.walltime import recorded_hashes

        state, notes = ckpt.load_training(save_dir, self.gpt, self.optimizer, self.scheduler, log_dir=log_dir,
                                          recorded=recorded_hashes(log_dir))
        for note in notes:
            _say(f"WARNING: {note}")
        if state is not None:
            _say(f"resumed from {ckpt.iteration_dir(save_dir, state.iteration)} "
                 f"(iteration {state.iteration}, {state.consumed_samples} samples consumed)")
        elif self.base_dir is not None:
            it, base_folder = ckpt.load_base(self.base_dir, self.gpt)
            # a fresh copy of the loaded weights into the optimizer's fp32 main params
            self.optimizer.reload_model_params()
            digest = ckpt.content_hash(base_folder) if self.env.rank == 0 else ""
            _say(f"base checkpoint loaded: {base_folder} (iteration {it}) {digest}")
            if self.env.rank == 0:
                (log_dir / "base_checkpoint.json").write_text(json.dumps(
                    {"path": str(base_folder), "iteration": it, "hash": digest}, indent=1) + "\n")
            state = TrainState()
        else:
            _say("training from scratch (checkpoint.from_scratch = true)")
            state = TrainState()
        self.state = state
        self.meta_json = _checkpoint_meta(self.folder, self.shape, self.padded_vocab, self.base_dir, self.bf16,
                                          self.layout)
        if _rank0() and self.base_dir is not None:
            _copy_tokenizer(self.base_dir, save_dir)
        self._build_data()
        return self

    def _build_data(self) -> None:
        """Datasets, batch plan, domain counter, metrics logger (after the state: a resume reads its mixture)."""
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from experiment.mixture import record as mixture_record
        from experiment.train import data as train_data
        from experiment.train import metrics

        cfg, t, log_dir, state = self.cfg, self.t, self.log_dir, self.state
        blend = train_data.blend_from_folder(self.folder)
        # a resume must read the blended index it started with: every rank checks, then rank 0 records the
        # mixture this run reads from now on (atomically, so a rank still checking reads the old or the new record)
        changes = (mixture_record.check_resume(log_dir, blend.plan, cfg.data.allow_mixture_change)
                   if state.consumed_samples else [])
        for change in changes:
            _say(f"WARNING: mixture changed on resume (data.allow_mixture_change = true): {change}")
        if self.env.rank == 0:
            mixture_record.write_record(log_dir, blend.plan)
        cache = log_dir / "dataset_index"  # megatron's index cache: derived data, kept with the run's outputs
        evaluate = self.options.evaluate and t.eval_iters
        self.train_ds = train_data.build_train(blend, num_samples=self.iters * t.global_batch_size,
                                               seq_length=self.seq, seed=t.seed,
                                               valid_fraction=cfg.data.valid_fraction, cache=cache)
        self.valid_sets = (train_data.build_valid_per_domain(
            blend, num_samples=t.eval_iters * t.global_batch_size, seq_length=self.seq, seed=t.seed,
            valid_fraction=cfg.data.valid_fraction, cache=cache) if evaluate else {})
        if evaluate:
            missing = sorted(set(blend.domains) - set(self.valid_sets))
            if missing:
                _say(f"WARNING: no held-out documents for {missing}: raise data.valid_fraction to evaluate them")
        self.plan = train_data.BatchPlan(t.global_batch_size, t.micro_batch_size,
                                         ps.get_data_parallel_rank(), ps.get_data_parallel_world_size())
        self.count_domains = _domain_counter(self.train_ds, blend)
        self.logger = (metrics.MetricsLogger(log_dir, state.iteration, folder=self.folder)
                       if self.env.rank == 0 else metrics.NullLogger())
        self.fwd_bwd = get_forward_backward_func()
        self.domain_samples = self.count_domains(0, state.consumed_samples) if state.consumed_samples else {}
        self._compute_seconds: list[float] = []

    # ---------------------------------------------------------------- steps
    def _microbatches(self, dataset, start: int):
        from experiment.train import data as train_data

        return train_data.microbatches(dataset, self.plan, start)

    def train_step(self) -> StepOutput:
        """One optimizer step over the global batch at ``state.consumed_samples``, logged."""
        from experiment.train import throughput

        t, state = self.t, self.state
        t0 = time.perf_counter()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        outputs = self.fwd_bwd(forward_step_func=_forward_step,
                               data_iterator=self._microbatches(self.train_ds, state.consumed_samples),
                               model=[self.model], num_microbatches=self.plan.num_microbatches, seq_length=self.seq,
                               micro_batch_size=t.micro_batch_size, forward_only=False)
        ok, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=t.global_batch_size)
        self._t_book = time.perf_counter()
        loss = _mean_loss(outputs)
        for d, c in self.count_domains(state.consumed_samples, t.global_batch_size).items():
            self.domain_samples[d] = self.domain_samples.get(d, 0) + c
        state.consumed_samples += t.global_batch_size
        state.iteration += 1
        dt = time.perf_counter() - t0
        lr = self.optimizer.param_groups[0]["lr"]
        tps = self.tokens_per_iter / dt
        self.logger.step(state.iteration, loss=loss, lr=lr, grad_norm=grad_norm,
                         consumed_samples=state.consumed_samples, tokens=state.consumed_samples * self.seq,
                         tokens_per_s=tps, tokens_per_s_per_gpu=tps / self.env.world_size,
                         domain_samples=self.domain_samples)
        self._compute_seconds.append(dt)
        speed = self.throughput()
        self.logger.scalars(state.iteration, {"throughput/mfu": speed["mfu"], "throughput/eta_s": speed["eta_s"],
                                              "throughput/tflops_per_gpu": speed["tflops_per_gpu"]})
        if state.iteration % t.log_interval == 0 or state.iteration == self.iters:
            mfu = "" if speed["mfu"] is None else f" MFU {speed['mfu']:.1%}"
            _say(f"iter {state.iteration}/{self.iters} loss {loss:.4f} lr {lr:.3e} "
                 f"grad {grad_norm if grad_norm is None else round(grad_norm, 4)} {tps:,.0f} tok/s "
                 f"({tps / self.env.world_size:,.0f}/GPU{mfu}) ETA {throughput.format_eta(speed['eta_s'])}")
        return StepOutput(state.iteration, loss, lr, grad_norm, dt)

    def throughput(self) -> dict:
        """tokens/s/GPU, TFLOP/s/GPU, MFU and ETA from this process's recent steps (warm-up left out)."""
        from experiment.train import throughput

        secs = self._compute_seconds
        recent = (secs[1:] if len(secs) > 1 else secs)[-20:]
        if not recent:
            return {"tokens_per_s_per_gpu": None, "tflops_per_gpu": None, "mfu": None, "eta_s": None}
        step = sum(recent) / len(recent)
        per_gpu = self.tokens_per_iter / step / self.env.world_size
        return {"tokens_per_s_per_gpu": per_gpu, "tflops_per_gpu": per_gpu * self.flops_per_token / 1e12, "step_s": step,
                "mfu": throughput.mfu(per_gpu, self.flops_per_token, self.peak),
                "eta_s": throughput.eta_seconds(secs, self.state.iteration, self.iters)}

    def evaluate(self, iteration: int) -> dict[str, float]:
        """Mean held-out loss per domain (forward only), logged."""
        import torch

        t, model = self.t, self.model
        self.watchdog.pause("eval")  # no step time while evaluating (the process-group timeout bounds it)
        model.eval()
        losses = {}
        with torch.no_grad():
            for domain, ds in self.valid_sets.items():
                vals = []
                for g in range(t.eval_iters):
                    out = self.fwd_bwd(forward_step_func=_forward_step,
                                       data_iterator=self._microbatches(ds, g * t.global_batch_size),
                                       model=[model], num_microbatches=self.plan.num_microbatches,
                                       seq_length=self.seq, micro_batch_size=t.micro_batch_size, forward_only=True)
                    vals.append(_mean_loss(out))
                losses[domain] = sum(vals) / len(vals)
        model.train()
        self.watchdog.unpause()
        self.logger.evaluation(iteration, losses)
        if losses:
            _say(f"eval @ {iteration}: " + ", ".join(f"{d} loss {v:.4f} ppl {math.exp(min(v, 50)):.1f}"
                                                      for d, v in losses.items()))
        return losses

    def save(self) -> Path:
        """A crash-safe checkpoint of the current state (timed, retention applied: ``walltime.Segment``); then the
        after-save hooks."""
        from experiment.train import checkpointing as ckpt

        self.watchdog.pause("save")  # no step time while saving (the process-group timeout bounds it)
        path = self.segment.save(partial(ckpt.save, self.save_dir, self.gpt, self.optimizer, self.scheduler,
                                         self.state, meta_json=self.meta_json, log_dir=self.log_dir),
                                 self.state.iteration)
        for hook in self.after_save:
            hook(self, path)
        self.watchdog.unpause()
        return path

    def _status_extra(self) -> dict:
        """What the live ``run_status.json`` adds to walltime.Progress's fields: speed per GPU, MFU, ETA."""
        return {k: None if v is None else round(v, 6) for k, v in self.throughput().items()}

    def write_status(self, state: str, checkpoint: str | None) -> None:
        """``run_status.json``: where the run is, its speed, MFU and ETA (rank 0)."""
        result = self.result
        speed = self.throughput()
        _write_status(self.log_dir, {
            "state": state, "iteration": self.state.iteration, "train_iters": self.iters,
            "consumed_samples": self.state.consumed_samples,
            "final_loss": None if result.final_loss is None else result.final_loss.hex(),
            "checkpoint": checkpoint, "device": self.device_name,
            "layer_spec": self.layer_spec,
            "recompute": "none" if self.choice is None else self.choice.recompute,
            "peak_memory_gib": _peak_memory_gib(),
            # how this run was started, read back by the one lock writer (experiment.launch.finish)
            "overrides": list(self.folder.overrides), **_world_record(self.env.world_size),
            **{k: None if v is None else round(v, 6) for k, v in speed.items()}})

    # ---------------------------------------------------------------- loop
    def fit(self) -> RunResult:
        """The loop: step, hooks, periodic evaluation, signal and time-budget check, periodic save."""
        from experiment.train.signals import StopRequest, protect_checkpoint_writers
        from experiment.train.walltime import WALLTIME_STATE, Segment

        t, state, options = self.t, self.state, self.options
        result = self.result = RunResult("finished", state.iteration, state.consumed_samples)
        self.last_eval = None
        _say(f"training {self.iters} iterations of {t.global_batch_size} x {self.seq} tokens on "
             f"{self.env.world_size} process(es) ({self.env.backend}, TP={self.layout.tensor_parallel}, "
             f"PP={self.layout.pipeline_parallel}, DP={self.plan.dp_size}), starting at iteration {state.iteration}")
        # the base model, for comparison
        self.before = self.evaluate(0) if self.valid_sets and state.iteration == 0 else None
        self.model.train()
        protect_checkpoint_writers()
        self.segment = Segment(self.folder, self.log_dir, self.save_dir, self.iters, self.tokens_per_iter,
                               self.env.rank == 0)  # time budget, live status, retention
        with StopRequest() as stop:
            while state.iteration < self.iters:
                t0 = time.perf_counter()
                step = self.train_step()
                self.watchdog.step(state.iteration)
                result.final_loss = step.loss
                for hook in self.after_step:
                    hook(self, step)
                stopping = options.max_iterations is not None and state.iteration >= options.max_iterations
                out_of_time = (self.segment.after_step(state.iteration, step.seconds, self._status_extra())
                               and state.iteration < self.iters)
                eval_seconds = 0.0
                if (self.valid_sets and not stopping and state.iteration % t.eval_interval == 0
                        and state.iteration < self.iters):
                    te = time.perf_counter()
                    self.last_eval = self.evaluate(state.iteration)
                    eval_seconds = time.perf_counter() - te
                stop_now = stop.requested()
                # the whole iteration with all per-step bookkeeping (metrics, signal check), without the periodic
                # evaluation and checkpoint: what bench/train_step.py compares with a bare loop
                t_end = time.perf_counter()
                result.step_seconds.append(t_end - t0 - eval_seconds)
                result.bookkeeping_seconds.append(t_end - self._t_book - eval_seconds)
                if stopping:
                    result.state = "stopped"
                    break
                if stop_now or out_of_time or self.stop_reason:
                    result.state = "interrupted" if stop_now or self.stop_reason else WALLTIME_STATE
                    why = f"signal {stop.signum}" if stop_now else ("time budget" if out_of_time else self.stop_reason)
                    _say(f"{why}: saving a checkpoint at iteration {state.iteration} and stopping")
                    if options.save:
                        self.save()
                    break
                if options.save and (state.iteration % t.save_interval == 0 or state.iteration == self.iters):
                    self.save()
                    if state.iteration < self.iters and stop.requested():  # signalled during the save: stop
                        result.state = "interrupted"
                        _say(f"signal {stop.signum} during the save of iteration {state.iteration}: stopping")
                        break
        if result.state == "finished" and self.valid_sets:
            self.last_eval = self.evaluate(state.iteration)
        return result

    def close(self) -> RunResult:
        """Metrics files, ``run_status.json``, the summary table; the process group goes down."""
        from experiment.model import parallel as distributed
        from experiment.train import checkpointing as ckpt

        self.watchdog.stop()
        result, state = self.result, self.state
        result.iteration, result.consumed_samples = state.iteration, state.consumed_samples
        png = self.logger.close(plot=self.options.plot and result.state != "stopped")
        if self.env.rank == 0:
            self.write_status(result.state, str(ckpt.iteration_dir(self.save_dir, state.iteration))
                              if self.options.save else None)
            _summary(self.folder, result, self.iters, self.last_eval, png, self.tokens_per_iter, self.before,
                     self.throughput())
        distributed.shutdown()
        return result


def run(folder, options: RunOptions = RunOptions()) -> RunResult:
    """Train the folder on this rank (call on every rank of a torchrun job)."""
    trainer = Trainer(folder, options).build().resume()
    trainer.fit()
    return trainer.close()


def _summary(folder, result: RunResult, iters: int, last_eval, png, tokens_per_iter: int, before=None,
             speed: dict | None = None) -> None:
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
    if speed and speed.get("tokens_per_s_per_gpu"):
        table.add_row("tokens / s / GPU (compute)", f"{speed['tokens_per_s_per_gpu']:,.0f}")
        table.add_row("TFLOP/s / GPU", f"{speed['tflops_per_gpu']:.1f}")
        if speed.get("mfu") is not None:
            table.add_row("MFU", f"{speed['mfu']:.1%}")
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

    from experiment import megatron_import
    from experiment.errors import disk_full
    from experiment.folder import FolderError
    from experiment.mixture.checks import load_checked
    from experiment.train.checkpointing import CheckpointLoadError

    megatron_import.install()  # before the first megatron import of this worker

    parser = argparse.ArgumentParser(prog="python -m experiment.train.runner")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--max-iterations", type=int, default=None)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--set", action="append", default=[], dest="overrides")  # experiment run --set
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    _quiet_known_warnings()
    places = [args.folder / "logs"]  # where a full disk is looked for when the error names no file
    try:
        folder = load_checked(args.folder, overrides=args.overrides)
        places.append(folder.resolve(folder.config.checkpoint.save))
        result = run(folder, RunOptions(max_iterations=args.max_iterations, save=not args.no_save))
    except FolderError as err:  # bad folder, or a resume that would change the mixture
        print(f"[experiment.train] refusing to start:\n{err}", file=sys.stderr, flush=True)
        return 2
    except CheckpointLoadError as err:  # checkpoints exist and none resumes: never a silent start from the base
        if _rank0():
            print(f"[experiment.train] refusing to resume: {err}", file=sys.stderr, flush=True)
        return 2
    except BaseException as err:  # a full disk mid-run: one message and the way back, not a traceback per rank
        full = disk_full(err, places, then="run the same command again: training resumes from "
                         "the last complete checkpoint (a checkpoint cut short is never used)")
        if full is not None:
            print("[experiment.train] stopped: " + "\n  ".join(full.lines()), file=sys.stderr, flush=True)
            return 1
        if type(err).__name__ == "CheckpointException" and not getattr(err, "failures", True):
            # torch tells only the coordinating rank why a checkpoint write failed; the others get an empty list
            print(f"[experiment.train] stopped: rank {os.environ.get('RANK', '?')}: the checkpoint write failed "
                  "on another rank (its message says why)", file=sys.stderr, flush=True)
            return 1
        raise
    return 0 if result.state in ("finished", "interrupted", "stopped", "walltime") else 1


if __name__ == "__main__":
    sys.exit(main())
