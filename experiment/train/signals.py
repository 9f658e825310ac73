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


_writer_manager = None  # the Manager behind megatron's write-results queue (kept: collecting it stops the server)


def _exit_with_parent(parent: int) -> None:
    """Initializer of the Manager's server process: die with the rank that started it. It ignores SIGTERM
    (below), so a rank killed with SIGKILL would otherwise leave it running, orphaned, ~275 MB each."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):  # not Linux: the scheduler's cleanup of the job is left
        pass
    import os

    if os.getppid() != parent:  # the rank died before prctl took effect
        os._exit(0)


def protect_checkpoint_writers() -> None:
    """Start megatron.core's checkpoint-writer result queue (a ``spawn``-ed multiprocessing Manager) with
    SIGTERM/SIGINT ignored, so the scheduler's signal, which reaches every process of the step, cannot
    kill it in the middle of a save (the ranks then fail with EOFError/ConnectionRefusedError and the
    checkpoint stays ``.partial``); the server exits with its rank (``_exit_with_parent``). The forked
    writer processes inherit the ranks' handler (a flag)."""
    global _writer_manager
    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async
    except ImportError:
        return
    if filesystem_async._results_queue is not None:
        return
    import multiprocessing
    import os
    from multiprocessing.managers import SyncManager

    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    try:  # what megatron's _get_write_results_queue does, with the initializer
        _writer_manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        _writer_manager.start(_exit_with_parent, (os.getpid(),))
        filesystem_async._results_queue = _writer_manager.Queue()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
