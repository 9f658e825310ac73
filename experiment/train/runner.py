"""The training runner: one process per rank, started by torchrun as
``python -m experiment.train.runner FOLDER``.

Thin by design (torchtitan-style): the folder is turned into (model, data, optimizer, checkpointer,
metrics) and a plain loop drives megatron.core's ``get_forward_backward_func``, Megatron DDP, the
distributed optimizer and ``OptimizerParamScheduler``. Everything numeric is megatron.core's; what the
kit adds is the wiring, exact resume, crash-safe checkpoints and the metrics files.

This module reads as set up, loop, finish; what each stage decides lives beside it: ``build`` (GPU choice,
vocabulary, datasets), ``resume`` (own checkpoint, base or scratch), ``loss`` (what the schedule computes)
and ``final_report`` (the last ``run_status.json`` and the summary table).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from experiment import determinism
from experiment.train.console import rank0, rank_line, say
from experiment.train.loss import forward_step, mean_loss

log = logging.getLogger("experiment.train")


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


# ------------------------------------------------------------------------------------------ run

@dataclass
class StepOutput:
    """One finished training step, as the loop sees it."""

    iteration: int
    loss: float
    lr: float
    grad_norm: float | None
    seconds: float  # compute only (forward, backward, optimizer, loss all-reduce): the log line's tokens/s


class Trainer:
    """One rank's training run, torchtitan-style: ``build`` turns the folder into model, optimizer and data,
    ``resume`` restores state, ``fit`` is the loop over ``train_step``, ``evaluate``, ``save`` and ``close``."""

    def __init__(self, folder, options: RunOptions = RunOptions()):
        self.folder, self.options = folder, options
        self.cfg, self.t = folder.config, folder.config.training

    # ---------------------------------------------------------------- build
    def build(self) -> "Trainer":
        """Process group, model, DDP, optimizer and scheduler (no state yet)."""
        import torch
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )
        from megatron.core.transformer.module import Float16Module

        from experiment.model import parallel as distributed
        from experiment.model.build import ParallelLayout, build_gpt_model
        from experiment.train import gpu, watchdog
        from experiment.train.build import device_setup, model_vocab, prepare_folders, seed_host_rngs
        from experiment.train.optim import build_optimizer, build_scheduler

        t = self.t
        det_env = determinism.apply(t.deterministic)  # before any CUDA/NCCL work
        names = [*determinism.environment(t.deterministic), "OMP_NUM_THREADS"]
        print(rank_line(os.environ, names), flush=True)  # every rank: its host, node rank and environment
        self.layout = ParallelLayout(t.tensor_parallel, t.pipeline_parallel)
        self.env = distributed.initialize(self.layout, seed=t.seed)
        seed_host_rngs(t.seed)
        self.shape, self.seq = self.cfg.model.shape, self.cfg.model.seq_length
        self.bf16 = t.precision == "bf16"
        self.iters = train_iterations(t, self.seq)
        self.tokens_per_iter = t.global_batch_size * self.seq
        self.log_dir = self.folder.path / "logs"
        self.save_dir = self.folder.resolve(self.cfg.checkpoint.save)
        # heartbeat and hang check on every rank (armed from the second step on; training.hang_factor)
        self.watchdog = watchdog.Watchdog(self.log_dir, self.env.rank, self.env.world_size, t.hang_factor).start()
        if self.env.rank == 0:
            prepare_folders(self.log_dir, self.save_dir, det_env)

        self.device = device_setup(t, self.shape, self.seq, self.env)
        self.auto_micro_batch = t.micro_batch_size == "auto"
        self._use_micro_batch(self.device.micro_batch_size)  # "auto": the estimate's, until measured
        self.padded_vocab, self.base_dir = model_vocab(self.folder, self.shape, self.layout)
        self.gpt = build_gpt_model(self.shape, self.seq, self.layout, padded_vocab_size=self.padded_vocab,
                                   layer_spec=gpu.layer_spec_for(self.device.layer_spec, self.device.fusions),
                                   linear_cross_entropy="linear-cross-entropy" in self.device.fusions,
                                   params_dtype=torch.bfloat16 if self.bf16 else torch.float32, bf16=self.bf16,
                                   deterministic=t.deterministic, **self.device.extra)
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

    def _use_micro_batch(self, mbs: int) -> None:
        """The run from here on with ``mbs`` as its micro-batch (``micro_batch_size = "auto"`` resolved)."""
        from dataclasses import replace

        if self.t.micro_batch_size != mbs:
            self.t = self.t.model_copy(update={"micro_batch_size": mbs})
            self.cfg = self.cfg.model_copy(update={"training": self.t})
            self.folder = replace(self.folder, config=self.cfg)
        self.device = replace(self.device, micro_batch_size=mbs)
        if hasattr(self, "plan"):
            self.plan = replace(self.plan, micro_batch_size=mbs)

    def _pick_micro_batch(self) -> None:
        """``micro_batch_size = "auto"`` on a GPU: time the candidates that fit, keep the fastest."""
        from dataclasses import replace

        from experiment.train import autobatch

        candidates = self.device.choice.candidates if self.device.choice is not None else ()
        if not self.auto_micro_batch or len(candidates) < 2:
            return
        kept = autobatch.kept(self.log_dir, self.state.iteration, candidates)
        if kept is not None:  # a resumed run keeps its micro-batch: another one would change the bits mid-run
            self._use_micro_batch(kept)
            say(f"micro_batch_size auto: {kept}, as this run's earlier segment measured (logs/run_status.json)")
            return
        best, seconds = autobatch.pick(self, candidates)
        self._use_micro_batch(best)
        self.device = replace(self.device, micro_batch_timings={str(m): round(s, 4) for m, s in seconds.items()})
        say("micro_batch_size auto: " + ", ".join(f"{m}: {s:.3f} s" for m, s in seconds.items())
            + f" per global batch (forward + backward); using {best}")

    # ---------------------------------------------------------------- resume
    def resume(self) -> "Trainer":
        """State: the run's own latest checkpoint > the base checkpoint > scratch; then the data."""
        from experiment.train.resume import checkpoint_meta, copy_tokenizer, load_state

        self.state = load_state(self.save_dir, self.log_dir, self.base_dir, self.gpt, self.optimizer,
                                self.scheduler, rank=self.env.rank)
        self.meta_json = checkpoint_meta(self.folder, self.shape, self.padded_vocab, self.base_dir, self.bf16,
                                         self.layout)
        if rank0() and self.base_dir is not None:
            copy_tokenizer(self.base_dir, self.save_dir)
        self._build_data()
        return self

    def _build_data(self) -> None:
        """Datasets, batch plan, domain counter, metrics logger (after the state: a resume reads its mixture)."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from experiment.train import metrics
        from experiment.train.build import build_data

        state = self.state
        self.train_ds, self.valid_sets, self.plan, self.count_domains = build_data(
            self.folder, self.iters, self.seq, log_dir=self.log_dir, resuming=bool(state.consumed_samples),
            rank=self.env.rank, evaluate=self.options.evaluate)
        self.fwd_bwd = get_forward_backward_func()
        self._pick_micro_batch()  # before the logger: the trackers record the folder with the number in use
        self.logger = (metrics.MetricsLogger(self.log_dir, state.iteration, folder=self.folder)
                       if self.env.rank == 0 else metrics.NullLogger())
        self.domain_samples = self.count_domains(0, state.consumed_samples) if state.consumed_samples else {}
        self._compute_seconds: list[float] = []  # forward..optimizer: the current step's log line
        self._whole_seconds: list[float] = []  # whole iterations with every per-step bookkeeping: speed and MFU

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
        outputs = self.fwd_bwd(forward_step_func=forward_step,
                               data_iterator=self._microbatches(self.train_ds, state.consumed_samples),
                               model=[self.model], num_microbatches=self.plan.num_microbatches, seq_length=self.seq,
                               micro_batch_size=t.micro_batch_size, forward_only=False)
        ok, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=t.global_batch_size)
        self._t_book = time.perf_counter()
        loss = mean_loss(outputs)
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
            say(f"iter {state.iteration}/{self.iters} loss {loss:.4f} lr {lr:.3e} "
                f"grad {grad_norm if grad_norm is None else round(grad_norm, 4)} {tps:,.0f} tok/s "
                f"({tps / self.env.world_size:,.0f}/GPU{mfu}) ETA {throughput.format_eta(speed['eta_s'])}")
        return StepOutput(state.iteration, loss, lr, grad_norm, dt)

    def throughput(self) -> dict:
        """tokens/s/GPU, TFLOP/s/GPU, MFU and ETA from this process's recent steps (warm-up left out).

        The window is the whole iteration (``fit``'s ``step_seconds``: forward, backward, optimizer, loss
        all-reduce, metrics files, TensorBoard, trackers, status, signal check; periodic eval and saves left
        out), the same window bench/train_step.py's bare loop is timed over; before the first whole iteration
        ends, the compute time of the step so far."""
        from experiment.train import throughput

        secs = self._whole_seconds or self._compute_seconds
        recent = (secs[1:] if len(secs) > 1 else secs)[-20:]
        if not recent:
            return {"tokens_per_s_per_gpu": None, "tflops_per_gpu": None, "mfu": None, "eta_s": None}
        step = sum(recent) / len(recent)
        per_gpu = self.tokens_per_iter / step / self.env.world_size
        flops = self.device.flops_per_token
        return {"tokens_per_s_per_gpu": per_gpu, "tflops_per_gpu": per_gpu * flops / 1e12, "step_s": step,
                "mfu": throughput.mfu(per_gpu, flops, self.device.peak),
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
                    out = self.fwd_bwd(forward_step_func=forward_step,
                                       data_iterator=self._microbatches(ds, g * t.global_batch_size),
                                       model=[model], num_microbatches=self.plan.num_microbatches,
                                       seq_length=self.seq, micro_batch_size=t.micro_batch_size, forward_only=True)
                    vals.append(mean_loss(out))
                losses[domain] = sum(vals) / len(vals)
        model.train()
        self.watchdog.unpause()
        self.logger.evaluation(iteration, losses)
        if losses:
            say(f"eval @ {iteration}: " + ", ".join(f"{d} loss {v:.4f} ppl {math.exp(min(v, 50)):.1f}"
                                                     for d, v in losses.items()))
        return losses

    def save(self) -> Path:
        """A crash-safe checkpoint of the current state (timed, retention applied: ``walltime.Segment``)."""
        from experiment.train import checkpointing as ckpt

        self.watchdog.pause("save")  # no step time while saving (the process-group timeout bounds it)
        path = self.segment.save(partial(ckpt.save, self.save_dir, self.gpt, self.optimizer, self.scheduler,
                                         self.state, meta_json=self.meta_json, log_dir=self.log_dir),
                                 self.state.iteration)
        self.watchdog.unpause()
        return path

    def _status_extra(self) -> dict:
        """What the live ``run_status.json`` adds to walltime.Progress's fields: speed per GPU, MFU, ETA, and
        the micro-batch in use (a resumed ``auto`` run keeps it)."""
        speed = {k: None if v is None else round(v, 6) for k, v in self.throughput().items()}
        return {**speed, "micro_batch_size": self.device.micro_batch_size}

    # ---------------------------------------------------------------- loop
    def fit(self) -> RunResult:
        """The loop: step, periodic evaluation, signal and time-budget check, periodic save."""
        from experiment.train.signals import StopRequest, protect_checkpoint_writers
        from experiment.train.walltime import WALLTIME_STATE, Segment

        t, state, options = self.t, self.state, self.options
        result = self.result = RunResult("finished", state.iteration, state.consumed_samples)
        self.last_eval = None
        say(f"training {self.iters} iterations of {t.global_batch_size} x {self.seq} tokens on "
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
                stopping = options.max_iterations is not None and state.iteration >= options.max_iterations
                # the last whole step (this one's bookkeeping is not over yet): the budget's and live status's window
                last = self._whole_seconds[-1] if self._whole_seconds else step.seconds
                out_of_time = (self.segment.after_step(state.iteration, last, self._status_extra())
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
                self._whole_seconds.append(result.step_seconds[-1])
                result.bookkeeping_seconds.append(t_end - self._t_book - eval_seconds)
                if stopping:
                    result.state = "stopped"
                    break
                if stop_now or out_of_time:
                    result.state = "interrupted" if stop_now else WALLTIME_STATE
                    why = f"signal {stop.signum}" if stop_now else "time budget"
                    say(f"{why}: saving a checkpoint at iteration {state.iteration} and stopping")
                    if options.save:
                        self.save()
                    break
                if options.save and (state.iteration % t.save_interval == 0 or state.iteration == self.iters):
                    self.save()
                    if state.iteration < self.iters and stop.requested():  # signalled during the save: stop
                        result.state = "interrupted"
                        say(f"signal {stop.signum} during the save of iteration {state.iteration}: stopping")
                        break
        if result.state == "finished" and self.valid_sets:
            self.last_eval = self.evaluate(state.iteration)
        return result

    def close(self) -> RunResult:
        """Metrics files, ``run_status.json``, the summary table; the process group goes down."""
        from experiment.model import parallel as distributed
        from experiment.train import checkpointing as ckpt
        from experiment.train.final_report import print_summary, write_final_status

        self.watchdog.stop()
        result, state = self.result, self.state
        result.iteration, result.consumed_samples = state.iteration, state.consumed_samples
        png = self.logger.close(plot=self.options.plot and result.state != "stopped")
        if self.env.rank == 0:
            checkpoint = str(ckpt.iteration_dir(self.save_dir, state.iteration)) if self.options.save else None
            write_final_status(self.log_dir, result, train_iters=self.iters, checkpoint=checkpoint, device=self.device,
                               overrides=self.folder.overrides, world_size=self.env.world_size, speed=self.throughput())
            print_summary(self.folder, result, self.iters, self.last_eval, png, self.tokens_per_iter, self.before,
                          self.throughput())
        distributed.shutdown()
        return result


def run(folder, options: RunOptions = RunOptions()) -> RunResult:
    """Train the folder on this rank (call on every rank of a torchrun job)."""
    trainer = Trainer(folder, options).build().resume()
    trainer.fit()
    return trainer.close()


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
        if rank0():
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
