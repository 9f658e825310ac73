"""One rank of ``bench/multinode.py``: started by torchrun (through ``multinode_agent``), it times its own
start, the process group's set-up, gloo all-reduces of a few sizes and a few training steps of a tiny
megatron.core GPT (data parallel over all ranks), and writes ``rank-<RANK>.json`` into ``--out``.

Clock: ``time.time()``; every "node" of the virtual cluster is this machine, so the ranks' and the bench's
times compare directly. ``BENCH_T_SRUN`` (the bench, just before ``srun``), ``BENCH_T_AGENT`` (torchrun's
process started) and ``BENCH_T_AGENT_READY`` (torchrun imported, its c10d rendezvous about to begin) come
through the environment torchrun hands its workers.

    python bench/multinode_probe.py agent -- TORCHRUN_ARGS... bench/multinode_probe.py --out DIR
"""

from __future__ import annotations

import time

T0 = time.time()  # before any import: the worker process has started

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# bench/ holds scripts named like stdlib modules (tokenize.py): never import from it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

SIZES = (1 << 10, 64 << 10, 1 << 20, 16 << 20)  # bytes of float32


def agent(argv: list[str]) -> None:
    """torchrun itself, with its start and its import time recorded for the workers."""
    os.environ["BENCH_T_AGENT"] = repr(T0)
    from torch.distributed.run import main as torchrun

    os.environ["BENCH_T_AGENT_READY"] = repr(time.time())
    sys.argv = ["torchrun", *argv]
    torchrun(argv)


def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1e3, 3)


def allreduce_times(sizes: tuple[int, ...], repeat: int) -> dict[str, dict]:
    import torch
    import torch.distributed as dist

    out = {}
    for size in sizes:
        x = torch.ones(size // 4, dtype=torch.float32)
        reps = repeat if size < (4 << 20) else max(3, repeat // 4)
        for _ in range(2):  # warm-up: gloo pairs, buffers
            dist.all_reduce(x)
        times = []
        for _ in range(reps):
            dist.barrier()
            t = time.perf_counter()
            dist.all_reduce(x)
            times.append(time.perf_counter() - t)
        out[str(size)] = {"bytes": size, "repeat": reps, "median_ms": _median_ms(times),
                          "min_ms": round(min(times) * 1e3, 3), "seconds": [round(s, 6) for s in times]}
    return out


def train_steps(steps: int, seq: int, mbs: int) -> dict:
    """The kit's tiny preset (2 layers, hidden 64, vocab 32000: 2.1M parameters, 8.4 MB of fp32 gradients)
    built as the kit builds it, Megatron DDP + distributed optimizer as in bench/train_step.py's bare loop,
    random tokens; one micro-batch of ``mbs`` x ``seq`` per rank and step."""
    import torch
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from experiment.model import parallel as distributed
    from experiment.model.build import build_gpt_model, padded_vocab_size
    from experiment.model.presets import PRESETS

    t = time.perf_counter()
    env = distributed.initialize(seed=1234)
    shape = PRESETS["tiny"]
    gpt = build_gpt_model(shape, seq, padded_vocab_size=padded_vocab_size(shape.vocab_size, 1),
                          params_dtype=torch.float32)
    model = DistributedDataParallel(gpt.config, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=True), gpt)
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, use_distributed_optimizer=True),
                                       [model])
    gpt.config.finalize_model_grads_func = finalize_model_grads
    build_s = time.perf_counter() - t
    gen = torch.Generator().manual_seed(1000 + env.rank)
    position_ids = torch.arange(seq).unsqueeze(0).expand(mbs, seq)

    def batches():
        while True:
            tokens = torch.randint(0, shape.vocab_size, (mbs, seq + 1), generator=gen)
            yield tokens[:, :-1], tokens[:, 1:]

    def loss_func(out):
        loss = out.float().mean()
        return loss, {"lm loss": loss.detach()}

    def step_func(it, m):
        tokens, labels = next(it)
        return m(tokens, position_ids, None, labels=labels), loss_func

    fwd_bwd = get_forward_backward_func()
    data = batches()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model.zero_grad_buffer()
        optimizer.zero_grad()
        fwd_bwd(forward_step_func=step_func, data_iterator=data, model=[model], num_microbatches=1,
                seq_length=seq, micro_batch_size=mbs, forward_only=False)
        optimizer.step()
        times.append(time.perf_counter() - t)
    params = sum(p.numel() for p in gpt.parameters())
    distributed.shutdown()
    return {"build_s": round(build_s, 3), "params": params, "seq": seq, "micro_batch": mbs,
            "seconds": [round(s, 5) for s in times], "median_ms": _median_ms(times[1:])}


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    t_import = time.time()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo")
    dist.barrier()
    t_pg = time.time()
    rank = dist.get_rank()
    record = {
        "rank": rank, "world_size": dist.get_world_size(), "local_rank": int(os.environ["LOCAL_RANK"]),
        "node_rank": int(os.environ.get("GROUP_RANK", -1)), "hostname": socket.gethostname(),
        "master_addr": os.environ.get("MASTER_ADDR"), "threads": torch.get_num_threads(),
        "t_srun": float(os.environ.get("BENCH_T_SRUN", "nan")), "t_agent": float(os.environ["BENCH_T_AGENT"]),
        "t_agent_ready": float(os.environ["BENCH_T_AGENT_READY"]), "t_worker": T0, "t_imported": t_import,
        "t_pg": t_pg,
    }
    record["allreduce"] = allreduce_times(SIZES, args.repeat)
    record["train"] = train_steps(args.steps, args.seq, args.mbs) if args.steps else None
    if dist.is_initialized():
        dist.destroy_process_group()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"rank-{rank}.json").write_text(json.dumps(record, indent=1) + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "agent":
        return agent(sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--repeat", type=int, default=20, help="all-reduces per size (a quarter for >= 4 MB)")
    p.add_argument("--steps", type=int, default=8, help="training steps (the first is left out of the median)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--mbs", type=int, default=2)
    worker(p.parse_args())


if __name__ == "__main__":
    main()
