"""Time per training iteration: the kit's runner against a bare megatron.core loop, same model and data.

The anchor is the loop Megatron-Core's own examples write by hand: GPTModel + Megatron DDP + distributed
optimizer + OptimizerParamScheduler, ``get_forward_backward_func`` over micro-batches of the same
blended GPTDataset. The runner adds exactly what the kit does every step (loss all-reduce, per-domain
sample counts, losses.jsonl, TensorBoard scalars, the SIGTERM agreement all-reduce). Both run in the
same process, alternating rounds (A B A B ...) so machine noise hits both; the table reports medians
and the ratio. Evaluation and checkpoint saves are periodic, not per step, and are left out of both.

    python bench/train_step.py                      # CPU: tiny preset, seq 256 (what CI machines can do)
    python bench/train_step.py --preset llama3.2-1b --seq 2048 --mbs 1 --gbs 8   # GPU, bf16

On a GPU the table adds tokens/s/GPU and MFU (model FLOPs per token as Megatron-LM counts them,
against the GPU's dense bf16 peak).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/ holds scripts named like stdlib modules (tokenize.py): never import from it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))  # the real-text corpus builder of the tests



def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def make_folder(root: Path, args) -> Path:
    import mistral_common

    from tests.train.corpus import build_corpus
    from tests.train.corpus import make_folder as make

    sp = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    sig = build_corpus(root / "corpus", sp, chars_per_domain=args.chars)
    folder = make(root / "run", sig, nproc=1, iters=100000, mbs=args.mbs, gbs=args.gbs, seq_length=args.seq,
                  precision=args.precision, save_interval=10**6, eval_interval=10**6, eval_iters=0,
                  valid_fraction=0.0)
    toml = folder / "experiment.toml"
    text = toml.read_text().replace('preset = "tiny"', f'preset = "{args.preset}"')
    text = text.replace("deterministic = true", f"deterministic = {'true' if args.deterministic else 'false'}")
    toml.write_text(text)
    return folder


BOOKKEEPING: list[float] = []


def kit_round(folder_path: Path, iters: int) -> list[float]:
    from experiment.mixture.checks import load_checked
    from experiment.train.runner import RunOptions, run

    os.environ["MASTER_PORT"] = _free_port()
    result = run(load_checked(folder_path), RunOptions(max_iterations=iters, save=False, evaluate=False, plot=False))
    BOOKKEEPING.extend(result.bookkeeping_seconds[1:])
    return result.step_seconds


def bare_round(folder_path: Path, iters: int) -> list[float]:
    """Megatron-Core's hand-written loop (examples/run_simple_mcore_train_loop.py style)."""
    from functools import partial

    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.module import Float16Module

    from experiment.mixture.checks import load_checked
    from experiment.model import parallel as distributed
    from experiment.model.build import ParallelLayout, build_gpt_model, padded_vocab_size
    from experiment.train import data as train_data
    from experiment.train.attention import layer_spec
    from experiment.train.optim import build_optimizer, build_scheduler

    folder = load_checked(folder_path)
    cfg, t = folder.config, folder.config.training
    shape, seq, bf16 = cfg.model.shape, cfg.model.seq_length, t.precision == "bf16"
    os.environ["MASTER_PORT"] = _free_port()
    layout = ParallelLayout(t.tensor_parallel, t.pipeline_parallel)
    distributed.initialize(layout, seed=t.seed)
    gpt = build_gpt_model(shape, seq, layout, padded_vocab_size=padded_vocab_size(shape.vocab_size, 1),
                          layer_spec=layer_spec(t.attention),
                          params_dtype=torch.bfloat16 if bf16 else torch.float32, bf16=bf16,
                          deterministic=t.deterministic)
    if torch.cuda.is_available():
        gpt.cuda()
    model = DistributedDataParallel(gpt.config, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=True), Float16Module(gpt.config, gpt) if bf16 else gpt)
    optimizer = build_optimizer(model, t, bf16=bf16)
    scheduler = build_scheduler(optimizer, t, t.train_iters)
    gpt.config.finalize_model_grads_func = finalize_model_grads
    gpt.config.grad_scale_func = optimizer.scale_loss
    blend = train_data.blend_from_folder(folder)
    ds = train_data.build_train(blend, num_samples=(iters + 1) * t.global_batch_size, seq_length=seq,
                                seed=t.seed, valid_fraction=0.0, cache=folder.path / "logs" / "dataset_index")
    plan = train_data.BatchPlan(t.global_batch_size, t.micro_batch_size, 0, ps.get_data_parallel_world_size())

    def loss_func(mask, out):
        loss = (out.float().view(-1) * mask.view(-1)).sum() / mask.sum()
        return loss, {"lm loss": loss.detach()}

    def step_func(it, m):
        b = {k: v.cuda(non_blocking=True) for k, v in next(it).items()}
        return m(b["tokens"], b["position_ids"], b["attention_mask"], labels=b["labels"]), partial(loss_func, b["loss_mask"])

    fwd_bwd = get_forward_backward_func()
    times = []
    for i in range(iters):
        t0 = time.perf_counter()
        model.zero_grad_buffer()
        optimizer.zero_grad()
        fwd_bwd(forward_step_func=step_func, data_iterator=train_data.microbatches(ds, plan, i * t.global_batch_size),
                model=[model], num_microbatches=plan.num_microbatches, seq_length=seq,
                micro_batch_size=t.micro_batch_size, forward_only=False)
        optimizer.step()
        scheduler.step(increment=t.global_batch_size)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    distributed.shutdown()
    return times


def flops_per_token(shape, seq: int) -> float:
    """Megatron-LM's count (causal attention), the same the runner reports: experiment.train.throughput."""
    from experiment.train.throughput import flops_per_token as count

    return count(shape, seq)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--mbs", type=int, default=4)
    p.add_argument("--gbs", type=int, default=8)
    p.add_argument("--iters", type=int, default=12, help="iterations per round (the first of each is warmup)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default=None, help="fp32 | bf16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--chars", type=int, default=400_000, help="characters of real text per domain")
    args = p.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    on_gpu = torch.cuda.is_available()
    args.precision = args.precision or ("bf16" if on_gpu else "fp32")
    if not on_gpu:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    kit, bare = [], []
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as tmp:
        folder = make_folder(Path(tmp), args)
        for r in range(args.rounds):
            order = (("kit", kit_round, kit), ("bare", bare_round, bare))
            for name, fn, sink in (order if r % 2 == 0 else order[::-1]):  # alternate who goes first
                times = fn(folder, args.iters)
                sink.extend(times[1:])  # drop each round's first (warmup) iteration
                print(f"round {r + 1}/{args.rounds} {name}: median {statistics.median(times[1:]) * 1e3:.1f} ms",
                      file=sys.stderr, flush=True)
                (folder / "logs").exists() and __import__("shutil").rmtree(folder / "logs")

    from experiment.model.presets import PRESETS

    shape = PRESETS[args.preset]
    tokens = args.gbs * args.seq
    med_kit, med_bare = statistics.median(kit), statistics.median(bare)
    device = torch.cuda.get_device_name() if on_gpu else f"CPU ({os.cpu_count()} cores)"
    table = Table(title=f"train step: {args.preset}, seq {args.seq}, mbs {args.mbs}, gbs {args.gbs}, "
                        f"{args.precision}, {device}, {len(kit)} iterations each")
    for col in ("loop", "median ms/iter", "mean ms/iter", "tokens/s", "ratio to bare"):
        table.add_column(col, justify="right")
    from experiment.train.throughput import peak_flops

    peak = peak_flops(device) if on_gpu else None
    if peak:
        table.add_column("MFU", justify="right")
    for name, times, med in (("bare megatron.core", bare, med_bare), ("kit runner", kit, med_kit)):
        row = [name, f"{med * 1e3:.1f}", f"{statistics.mean(times) * 1e3:.1f}", f"{tokens / med:,.0f}",
               f"{med / med_bare:.3f}"]
        if peak:
            row.append(f"{tokens / med * flops_per_token(shape, args.seq) / peak:.1%}")
        table.add_row(*row)
    Console().print(table)
    book = statistics.median(BOOKKEEPING)
    print(f"runner overhead, whole iterations: {(med_kit / med_bare - 1) * 100:+.2f}% (goal < 2%; noisy on a shared host)")
    print(f"runner overhead, measured directly: {book * 1e3:.2f} ms/iter of kit-only work after the optimizer "
          f"step (loss all-reduce, domain counts, losses.jsonl, TensorBoard, signal check) = "
          f"{book / med_bare * 100:.2f}% of the bare iteration")


if __name__ == "__main__":
    main()
