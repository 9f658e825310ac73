"""torch.distributed + megatron parallel state, set up once per process (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from experiment import megatron_import
from experiment.model import cpu
from experiment.model.build import ParallelLayout

# How long a collective waits for a rank before it fails (every process group, megatron's included): not torch's
# 30 minutes for gloo (megatron-core's default too). Megatron-LM's --distributed-timeout-minutes default; long
# enough for the slowest rank's checkpoint write or dataset index build, which the other ranks wait for. Hangs
# between steps are the hang watchdog's (experiment.train.watchdog), usually much sooner.
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    backend: str


def initialize(layout: ParallelLayout = ParallelLayout(), seed: int = 1234, timeout: timedelta = TIMEOUT) -> DistEnv:
    """Init the process group from torchrun's environment (or a single process without it), then
    megatron's model-parallel groups and RNG trackers, all with ``timeout`` for their collectives. Applies the
    CPU layer when there is no GPU."""
    megatron_import.install()
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    on_cpu = cpu.apply()
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "gloo" if on_cpu else "nccl"
    if not dist.is_initialized():
        if not on_cpu:
            torch.cuda.set_device(local_rank)
        # a single process outside torchrun gets its own port, without writing it into os.environ
        # (child processes would inherit it and collide with this process's store)
        init_method = None if "MASTER_ADDR" in os.environ else f"tcp://127.0.0.1:{_free_port()}"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world, timeout=timeout)
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(
            tensor_model_parallel_size=layout.tensor_parallel,
            pipeline_model_parallel_size=layout.pipeline_parallel,
            distributed_timeout_minutes=max(1, round(timeout.total_seconds() / 60)),
        )
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    return DistEnv(rank, world, local_rank, backend)


def shutdown() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
