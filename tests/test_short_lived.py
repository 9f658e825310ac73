"""experiment.short_lived: the collector paused over imports, and a successful command that asked for it
leaving without teardown, its output flushed; nothing else changes how a process ends."""

from __future__ import annotations

import gc
import subprocess
import sys

from experiment.short_lived import paused_gc

_PROBE = """
import atexit, sys
from experiment.short_lived import exit_when_done, leave
atexit.register(lambda: print("teardown ran"))
print("result", flush=False)           # still buffered when leave() runs: it must flush it
print("progress", file=sys.stderr)
{ask}
leave({code})
print("returned")
"""


def _run(ask: bool, code: int) -> subprocess.CompletedProcess:
    src = _PROBE.format(ask="exit_when_done()" if ask else "", code=code)
    return subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=60)


def test_a_command_that_asked_leaves_at_once_with_its_output():
    for code in (0, None):  # typer's success is SystemExit(0); sys.exit() gives None
        proc = _run(ask=True, code=code)
        assert proc.returncode == 0
        assert proc.stdout.split() == ["result"], code  # flushed; neither "returned" nor the atexit handler
        assert "progress" in proc.stderr


def test_a_failed_command_or_one_that_did_not_ask_ends_normally():
    for ask, code in ((True, 1), (False, 0)):
        proc = _run(ask=ask, code=code)
        assert proc.stdout.split() == ["result", "returned", "teardown", "ran"], (ask, code)


def test_paused_gc_pauses_inside_freezes_after_and_restores():
    gc.unfreeze()
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        made = [[] for _ in range(10)]
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    del made
    gc.unfreeze()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # a collector paused by the caller stays paused
    finally:
        gc.enable()
        gc.unfreeze()
