"""A hang is not a stall: every rank's heartbeat, and a watchdog that ends a run that stopped making progress.

A rank that stops (a GPU fault, a frozen node, a deadlocked collective) leaves the others waiting in the
next collective until the process-group timeout, and the job burns its walltime. So every rank runs a
daemon thread that

- rewrites ``logs/heartbeat/rank-<r>.json`` (iteration, phase, when it last made progress, ``time``: when
  the thread last wrote it, ``host``: the node it runs on; ``experiment status`` shows them per node) after every step, on every phase change and every ``tick`` seconds; a rank
  whose ``time`` stops moving is stopped as a whole (SIGSTOP, a frozen node, the GIL held forever);
- knows the median time between finished steps (the first step, saves and evaluations left out: while a
  save or an evaluation runs the watchdog is paused and the process-group timeout is the bound);
- when no step finished for ``hang_factor`` x that step time (counted as at least ``MIN_STEP_SECONDS``, so
  tiny CPU steps do not trip on noise), writes this rank's Python stacks (``faulthandler``, all threads)
  to ``logs/hang/rank-<r>.txt``, reads every rank's heartbeat, and leaves with ``HANG_EXIT``: torchrun then
  tears the job down and the job chain resumes from the last checkpoint. The lowest live rank prints one
  line naming the rank(s) whose heartbeat stopped (or that are behind) and marks ``run_status.json``
  ``"hung"``.

gloo waits (and CUDA synchronizations on a GPU) release the GIL, so the thread runs while the main thread
is blocked in a collective with the stopped rank. ``Watchdog.step``/``pause``/``unpause`` only take a lock
and set an event: the file writes are the thread's, off the training loop.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from experiment import runlog
from experiment.atomic import write_atomic

HEARTBEAT_DIR = "heartbeat"  # under logs/
HANG_DIR = "hang"  # under logs/
HUNG_STATE = "hung"  # run_status.json's state after a hang (the chain treats it as a failed segment)
HANG_EXIT = 3  # the rank's exit status; torchrun's own is 1
MIN_STEP_SECONDS = 3.0  # the step time the limit is counted from is at least this (factor 20: at least 60 s)
RECENT_STEPS = 50  # the median is over this many recent steps


def tick_seconds(factor: float, min_step: float = MIN_STEP_SECONDS) -> float:
    """How often the thread rewrites the heartbeat and checks: a sixth of the shortest limit, 0.2 to 10 s. A
    heartbeat older than ``3 x tick`` (half the shortest limit) counts as stopped."""
    return min(10.0, max(0.2, factor * min_step / 6))


@dataclass
class HangRule:
    """The decision, on one rank's monotonic clock: no step finished for ``factor`` x the median step time."""

    factor: float
    min_step: float = MIN_STEP_SECONDS
    last: float | None = None  # the last progress: a finished step, or the end of a save/evaluation
    paused: str | None = None  # the phase that pauses the rule ("save", "eval")
    steps: deque = field(default_factory=lambda: deque(maxlen=RECENT_STEPS))

    def step(self, now: float) -> None:
        """A step finished. The first one only starts the clock (its warm-up is not a step time)."""
        if self.last is not None and self.paused is None:
            self.steps.append(now - self.last)
        self.last = now

    def pause(self, phase: str) -> None:
        self.paused = phase

    def unpause(self, now: float) -> None:
        """After a save or evaluation: the wait starts again (its time is not a step's)."""
        self.paused = None
        if self.last is not None:
            self.last = now

    def step_seconds(self) -> float | None:
        return statistics.median(self.steps) if self.steps else None

    def limit(self) -> float | None:
        """Seconds without progress that make a hang; None while off or not measured yet."""
        step = self.step_seconds()
        if self.factor <= 0 or step is None:
            return None
        return self.factor * max(step, self.min_step)

    def overdue(self, now: float) -> float | None:
        """Seconds waited since the last progress when that is past the limit, else None."""
        limit = self.limit()
        if limit is None or self.paused is not None or self.last is None:
            return None
        waited = now - self.last
        return waited if waited > limit else None


# ------------------------------------------------------------------------------------------ heartbeats

def heartbeat_path(log_dir: Path, rank: int) -> Path:
    return Path(log_dir) / HEARTBEAT_DIR / f"rank-{rank}.json"


def read_heartbeats(log_dir: Path, world_size: int) -> dict[int, dict | None]:
    """Every rank's last heartbeat (None: none written, or unreadable)."""
    beats: dict[int, dict | None] = {}
    for rank in range(world_size):
        try:
            beats[rank] = json.loads(heartbeat_path(log_dir, rank).read_text())
        except (OSError, ValueError):
            beats[rank] = None
    return beats


@dataclass(frozen=True)
class Verdict:
    stopped: list[int]  # ranks whose heartbeat stopped (or never came)
    behind: list[int]  # live ranks at a lower iteration than the furthest rank
    reporter: int  # the lowest live rank: it prints the line and writes run_status.json


def judge(beats: dict[int, dict | None], me: int, now: float, stale_after: float) -> Verdict:
    """Which ranks stopped, which are behind, and who reports (``now``: wall clock, as the heartbeats)."""
    stopped = [r for r, b in sorted(beats.items())
               if r != me and (b is None or now - float(b.get("time", 0)) > stale_after)]
    live = [r for r in sorted(beats) if r not in stopped]
    known = [b["iteration"] for b in beats.values() if b and b.get("iteration") is not None]
    top = max(known, default=None)
    behind = [r for r in live if top is not None and beats[r] and (beats[r].get("iteration") or 0) < top]
    return Verdict(stopped, behind, min(live, default=me))


def describe(verdict: Verdict, beats: dict[int, dict | None], now: float) -> str:
    """The part of the hang line that names ranks."""
    parts = []
    for r in verdict.stopped:
        b = beats.get(r)
        if b is None:
            parts.append(f"rank {r} wrote no heartbeat")
        else:
            parts.append(f"rank {r}'s heartbeat stopped at iteration {b.get('iteration')} ({b.get('phase')}, "
                         f"{now - float(b.get('time', 0)):.0f} s ago, pid {b.get('pid')} on {b.get('host')})")
    for r in verdict.behind:
        b = beats[r] or {}
        parts.append(f"rank {r} is alive but behind at iteration {b.get('iteration')} ({b.get('phase')}, on "
                     f"{b.get('host')})")
    if not parts:
        its = sorted({b.get("iteration") for b in beats.values() if b} - {None})
        parts.append(f"every rank is alive at iteration {', '.join(map(str, its)) or '?'} and waits "
                     "(a collective or I/O that does not return; see the stacks)")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------ the thread

class Watchdog:
    """One rank's heartbeat writer and hang check. ``hang_factor <= 0``: off (no thread, no files)."""

    def __init__(self, log_dir: Path, rank: int, world_size: int, factor: float, *,
                 min_step: float = MIN_STEP_SECONDS, tick: float | None = None,
                 clock=time.monotonic, exit=os._exit):
        self.log_dir, self.rank, self.world_size = Path(log_dir), rank, world_size
        self.rule = HangRule(factor, min_step)
        self.enabled = factor > 0
        self.tick = tick if tick is not None else tick_seconds(factor, min_step)
        self.clock, self._exit = clock, exit
        self.iteration: int | None = None
        self.phase = "start"
        self.progress = time.time()
        self.host = socket.gethostname()
        self._armed_said = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # the training loop's calls: a lock and an event, no I/O
    def start(self) -> "Watchdog":
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="experiment-watchdog", daemon=True)
            self._thread.start()
        return self

    def step(self, iteration: int) -> None:
        """A training step finished (call on every rank after every step)."""
        if not self.enabled:
            return
        with self._lock:
            self.rule.step(self.clock())
            self.iteration, self.phase, self.progress = iteration, "train", time.time()
            limit = self.rule.limit()
        self._wake.set()
        if limit is not None and not self._armed_said:
            self._armed_said = True
            if self.rank == 0:
                print(f"[experiment.train] watchdog: step time {self.rule.step_seconds():.2f} s; no progress for "
                      f"{limit:.0f} s ends the run (training.hang_factor = {self.rule.factor:g})", flush=True)

    def pause(self, phase: str) -> None:
        """A save or an evaluation starts: no step time, the process-group timeout bounds it."""
        if not self.enabled:
            return
        with self._lock:
            self.rule.pause(phase)
            self.phase, self.progress = phase, time.time()
        self._wake.set()

    def unpause(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.rule.unpause(self.clock())
            self.phase, self.progress = "train", time.time()
        self._wake.set()

    def stop(self) -> None:
        """The run ends normally: the thread writes a last heartbeat (phase "done") and leaves."""
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._thread = None

    # the thread
    def _run(self) -> None:
        while True:
            self._wake.wait(self.tick)
            self._wake.clear()
            if self._stop.is_set():
                self._beat("done")
                return
            self._beat()
            with self._lock:
                waited = self.rule.overdue(self.clock())
            if waited is not None:
                self._trip(waited)
                return

    def _beat(self, phase: str | None = None) -> None:
        with self._lock:
            record = {"rank": self.rank, "iteration": self.iteration, "phase": phase or self.phase,
                      "progress": round(self.progress, 3), "time": round(time.time(), 3), "pid": os.getpid(),
                      "host": self.host}
        try:
            write_atomic(heartbeat_path(self.log_dir, self.rank), json.dumps(record, sort_keys=True) + "\n")
        except OSError:  # a heartbeat that cannot be written (a full disk) must not end a run that works
            pass

    def _trip(self, waited: float) -> None:
        """No progress past the limit: stacks, the verdict, run_status.json, and out."""
        step, limit = self.rule.step_seconds(), self.rule.limit()
        self.phase = "hang"
        self._beat()  # the others see this rank alive (it is reporting, not stopped)
        hang_dir = self.log_dir / HANG_DIR
        try:
            hang_dir.mkdir(parents=True, exist_ok=True)
            with open(hang_dir / f"rank-{self.rank}.txt", "w") as fh:
                fh.write(f"rank {self.rank} (pid {os.getpid()} on {self.host}): no progress for "
                         f"{waited:.1f} s after iteration {self.iteration} (step time {step:.3f} s, limit "
                         f"{limit:.1f} s)\n\n")
                fh.flush()
                faulthandler.dump_traceback(file=fh, all_threads=True)
        except OSError:
            pass
        now = time.time()
        beats = read_heartbeats(self.log_dir, self.world_size)
        verdict = judge(beats, self.rank, now, stale_after=3 * self.tick)
        if verdict.reporter == self.rank:
            print(f"[experiment.train] hang: no progress for {waited:.0f} s ({waited / step:.1f} x the step time "
                  f"of {step:.2f} s; limit {limit:.0f} s: training.hang_factor = {self.rule.factor:g} x the step "
                  f"time, counted as at least {self.rule.min_step:g} s); "
                  f"{describe(verdict, beats, now)}; Python stacks of the live ranks in {hang_dir}/; leaving "
                  f"with exit {HANG_EXIT} so the job ends (the next start resumes from the last checkpoint)",
                  file=sys.stderr, flush=True)
            self._write_status(waited, step, verdict, beats)
        sys.stdout.flush()
        sys.stderr.flush()
        self._exit(HANG_EXIT)

    def _write_status(self, waited: float, step: float, verdict: Verdict, beats: dict) -> None:
        """``run_status.json`` becomes "hung" (the live status's other fields kept)."""
        try:
            status = runlog.read_status(self.log_dir)
        except ValueError:
            status = {}
        if status.get("state") == HUNG_STATE:
            return
        status.update(state=HUNG_STATE, updated=round(time.time(), 3), hang={
            "seconds": round(waited, 1), "step_seconds": round(step, 3), "factor": self.rule.factor,
            "stopped_ranks": verdict.stopped, "behind_ranks": verdict.behind, "reported_by": self.rank,
            "stopped_hosts": sorted({(beats.get(r) or {}).get("host") or "?" for r in verdict.stopped}),
            "iterations": {str(r): (b or {}).get("iteration") for r, b in beats.items()}})
        try:
            runlog.write_status(self.log_dir, status)
        except OSError:
            pass
