"""``training.micro_batch_size = "auto"`` on a GPU: each candidate micro-batch (``gpu.choose``: those that fit the
memory estimate and divide the per-rank batch) is timed over a few forward/backward passes of the first global
batch, and the fastest is kept.

The probe changes no training state: no optimizer or scheduler step, the gradient buffers are zeroed after it,
no data is consumed (the run's first step reads the same samples) and the model has no dropout. Every rank times
every candidate and the ranks agree on the slowest rank's time per candidate, so all pick the same size. The
pick is written to ``run_status.json`` and the lock, and ``experiment reproduce`` passes it again instead of
measuring (``lock/verify.py:locked_overrides``).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

PROBE_PASSES = 2  # timed passes per candidate, after one untimed warm-up pass (kernel choice, compile)


def kept(log_dir, iteration: int, candidates: tuple[int, ...]) -> int | None:
    """On resume (``iteration`` > 0), the micro-batch this run's status records, if it is still a candidate."""
    if iteration <= 0:
        return None
    from experiment import runlog

    mbs = runlog.read_status(log_dir, strict=False).get("micro_batch_size")
    return mbs if isinstance(mbs, int) and mbs in candidates else None


def pick(trainer, candidates: tuple[int, ...]) -> tuple[int, dict[int, float]]:
    """The fastest micro-batch of ``candidates`` (seconds per global batch, forward and backward) and every
    candidate's time (``inf``: out of memory)."""
    import torch
    import torch.distributed as dist

    from experiment.train import data as train_data
    from experiment.train.loss import forward_step

    seconds: dict[int, float] = {}
    for mbs in candidates:
        plan = replace(trainer.plan, micro_batch_size=mbs)
        passes = []
        try:
            for _ in range(PROBE_PASSES + 1):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                trainer.model.zero_grad_buffer()
                trainer.fwd_bwd(forward_step_func=forward_step,
                                data_iterator=train_data.microbatches(trainer.train_ds, plan,
                                                                      trainer.state.consumed_samples),
                                model=[trainer.model], num_microbatches=plan.num_microbatches,
                                seq_length=trainer.seq, micro_batch_size=mbs, forward_only=False)
                torch.cuda.synchronize()
                passes.append(time.perf_counter() - t0)
            seconds[mbs] = min(passes[1:])
        except torch.cuda.OutOfMemoryError:
            seconds[mbs] = math.inf
        torch.cuda.empty_cache()
    trainer.model.zero_grad_buffer()
    if dist.is_initialized() and dist.get_world_size() > 1:  # one pick for all ranks: the slowest rank's times
        t = torch.tensor([seconds[m] for m in candidates], dtype=torch.float64, device="cuda")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        seconds = dict(zip(candidates, t.tolist()))
    fitting = {m: s for m, s in seconds.items() if math.isfinite(s)}
    if not fitting:
        raise RuntimeError(f"micro_batch_size = \"auto\": every candidate {list(candidates)} ran out of GPU memory; "
                           "set training.micro_batch_size = 1 and recompute = \"full\"")
    return min(fitting, key=fitting.get), seconds
