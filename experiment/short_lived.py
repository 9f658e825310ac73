"""A short command's process that loads torch and megatron.core: paused collector while importing, no
teardown at the end.

Why: for `experiment ckpt import` of a 2.5 GB model the data moves in ~2 s, and the process around it
cost more than that on the 2-core VM:
- **Importing.** torch and megatron.core create about a million long-lived objects, and Python's cyclic
  garbage collector walks all of them several times while they load: 0.55 s of a 2.85 s start-up.
  ``paused_gc()`` pauses it over the imports, then freezes what is alive (``gc.freeze``: moved to the
  permanent generation, never walked again) and resumes it for the work. torchtitan's
  ``GarbageCollection`` likewise takes the collector off its automatic schedule.
- **Exiting.** Python's finalization of torch and megatron.core (module teardown, a last collection)
  takes ~0.3 s, after the result is on disk and printed. A command that asks for it with
  ``exit_when_done()`` leaves through ``os._exit`` once ``experiment.cli.main`` has flushed its output;
  atexit handlers do not run, so only commands that need none ask (checkpoint conversion: its files are
  fsynced and renamed, its result printed). Tests that call a command in-process never go through
  ``main`` and are not affected.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_exit_when_done = False


@contextmanager
def paused_gc() -> Iterator[None]:
    """``with paused_gc(): import torch, ...``: no automatic collection inside; survivors frozen after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def exit_when_done() -> None:
    """This command needs no teardown: ``experiment.cli.main`` may end the process once it succeeded."""
    global _exit_when_done
    _exit_when_done = True


def leave(code: int | str | None) -> None:
    """Called by ``main`` with the command's ``SystemExit`` code: a successful command (0 or None) that
    asked for it leaves now, its output flushed; anything else returns and exits normally."""
    if code in (0, None) and _exit_when_done:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
