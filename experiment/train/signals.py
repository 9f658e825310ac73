"""SIGTERM/SIGINT (Slurm/PBS preemption, Ctrl-C) become a request to save and stop at the next
iteration boundary, agreed on by all ranks, instead of killing the process mid-step."""

from __future__ import annotations

import signal


class StopRequest:
    """Installs the handlers; ``requested(group)`` is true on every rank once any rank got a signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def requested(self) -> bool:
        """Collective: all ranks return the same answer (a MAX all-reduce of the local flags)."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([0 if self.signum is None else int(self.signum)], dtype=torch.int32,
                            device="cuda" if torch.cuda.is_available() else "cpu")
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())


def protect_checkpoint_writers() -> None:
    """Start megatron.core's checkpoint-writer result queue (a ``spawn``-ed multiprocessing Manager) with
    SIGTERM/SIGINT ignored, so the scheduler's signal, which reaches every process of the step, cannot
    kill it in the middle of a save (the ranks then fail with EOFError/ConnectionRefusedError and the
    checkpoint stays ``.partial``). The forked writer processes inherit the ranks' handler (a flag)."""
    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async
    except ImportError:
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        filesystem_async._get_write_results_queue()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
