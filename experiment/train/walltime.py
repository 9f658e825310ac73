"""The job's time budget: save and stop cleanly before the scheduler's time limit.

A save that starts at the scheduler's SIGTERM may not finish (torchrun kills its workers ~30 s after it
forwards the signal; an 8B checkpoint with optimizer state is ~100 GB). So, like Megatron-LM's
``--exit-duration-in-mins``, the runner learns the job's end time and, before every step, checks that
one more step plus a save (the longest step and the slowest save measured on this run, or the previous
segment's save) still end ``exit_margin`` seconds before it. If not, it saves now and stops with
``state = "walltime"`` in ``logs/run_status.json``: the job script then submits the next segment.

The same object writes the live ``run_status.json`` (iteration, tokens/s, ETA) that ``experiment status``
reads. Pure Python: no torch here, so the launchers can use ``parse_duration``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from experiment import runlog
from experiment.duration import parse_duration  # noqa: F401  (re-exported: the runner's callers use it here)
from experiment.launcher_names import current_job

END_TIME_VAR = "MIDTRAIN_JOB_END_TIME"  # epoch seconds; set by tests or a scheduler without squeue
WALLTIME_STATE = "walltime"
STATUS_INTERVAL_S = 5.0

def job_end_time(environ: dict | None = None) -> float | None:
    """The job's end as epoch seconds: $MIDTRAIN_JOB_END_TIME, $SLURM_JOB_END_TIME (Slurm >= 23.02),
    ``squeue -h -j $SLURM_JOB_ID -o %e`` (Slurm 22.05) or $PBS walltime from the start; None outside a job."""
    env = os.environ if environ is None else environ
    for var in (END_TIME_VAR, "SLURM_JOB_END_TIME"):
        if env.get(var, "").strip().isdigit():
            return float(env[var])
    job = env.get("SLURM_JOB_ID")
    if job:
        try:
            res = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=30)
            text = res.stdout.strip()
            if res.returncode == 0 and text and text not in ("N/A", "Unknown"):
                return datetime.fromisoformat(text).timestamp()  # local time, as squeue prints it
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None
    pbs_wall = env.get("PBS_WALLTIME")  # seconds, set by PBS Pro in the job's environment
    start = env.get("MIDTRAIN_JOB_START")  # written by the PBS script at start (epoch seconds)
    if pbs_wall and pbs_wall.isdigit() and start and start.isdigit():
        return float(start) + float(pbs_wall)
    return None


def last_save_seconds(log_dir: Path) -> float | None:
    """The slowest of the recent saves logged in ``saves.jsonl`` (the previous segment's, on resume)."""
    values = [float(r["seconds"]) for r in runlog.read_saves(log_dir)[-5:] if "seconds" in r]
    return max(values) if values else None


def log_save(log_dir: Path, iteration: int, seconds: float, path: Path) -> None:
    """One line per checkpoint: how long it took (the budget reads it back in the next segment) and the hash
    of each of its files (from its manifest): the record of every save, which outlives retention; a resume
    checks a checkpoint against it, and the lock carries it."""
    try:
        hashes = json.loads((Path(path) / "kit_manifest.json").read_text()).get("hashes")
    except (OSError, ValueError):
        hashes = None
    runlog.append_save(log_dir, {"iteration": iteration, "seconds": round(seconds, 3), "path": path.name,
                                 "time": round(time.time(), 3), "files": hashes})


def recorded_hashes(log_dir: Path) -> dict[int, dict[str, str]]:
    """Iteration -> {file: hash} of its latest save, for saves that recorded hashes."""
    return {int(r["iteration"]): r["files"] for r in runlog.read_saves(log_dir) if r.get("files")}


@dataclass
class TimeBudget:
    """Decides, before each step, whether one more step and a save still fit in the job's time."""

    end_time: float | None
    margin: float
    save_seconds: float | None = None
    longest_step: float = 0.0
    started: float = field(default_factory=time.time)

    @classmethod
    def for_job(cls, margin: float, log_dir: Path, environ: dict | None = None) -> "TimeBudget":
        return cls(job_end_time(environ), margin, last_save_seconds(log_dir))

    def record_step(self, seconds: float) -> None:
        self.longest_step = max(self.longest_step, seconds)

    def record_save(self, seconds: float) -> None:
        self.save_seconds = max(self.save_seconds or 0.0, seconds)

    def needed(self) -> float:
        """Seconds one more step plus a save need, with the margin."""
        return self.longest_step + (self.save_seconds or 0.0) + self.margin

    def left(self, now: float | None = None) -> float | None:
        return None if self.end_time is None else self.end_time - (now or time.time())

    def out_of_time(self, now: float | None = None) -> bool:
        """Local answer (rank 0's clock); the runner agrees on it across ranks with ``agree``."""
        left = self.left(now)
        return left is not None and left < self.needed()


def agree(flag: bool) -> bool:
    """All ranks take rank 0's decision (a broadcast), so every rank stops at the same step."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32,
                     device="cuda" if torch.cuda.is_available() else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


class Progress:
    """The live ``logs/run_status.json`` (rank 0): written every few seconds while training, so
    ``experiment status`` shows iteration, tokens/s and an ETA; the runner's final write replaces it."""

    def __init__(self, log_dir: Path, train_iters: int, tokens_per_iter: int, enabled: bool):
        self.log_dir = Path(log_dir)
        self.train_iters, self.tokens_per_iter, self.enabled = train_iters, tokens_per_iter, enabled
        self.start_iteration: int | None = None
        self.started = time.time()
        self.last_write = 0.0
        self.job = (current_job() or (None, None))[1]

    def step(self, iteration: int, step_seconds: float, extra: dict | None = None) -> None:
        if not self.enabled:
            return
        if self.start_iteration is None:
            self.start_iteration = iteration - 1
        now = time.time()
        if now - self.last_write < STATUS_INTERVAL_S and iteration < self.train_iters:
            return
        self.last_write = now
        done = iteration - self.start_iteration
        per_iter = (now - self.started) / max(done, 1)
        payload = {"state": "running", "iteration": iteration, "train_iters": self.train_iters,
                   "tokens_per_s": self.tokens_per_iter / step_seconds if step_seconds > 0 else None,
                   "eta_seconds": round(per_iter * (self.train_iters - iteration), 1),
                   "updated": round(now, 3), "job_id": self.job, **(extra or {})}
        runlog.write_status(self.log_dir, payload)


class Segment:
    """What the runner calls around its loop in a (possibly scheduled) job: the time budget, the live
    status, and timed saves with retention. Two calls in the loop: ``after_step`` and ``save``."""

    def __init__(self, folder, log_dir: Path, save_dir: Path, train_iters: int, tokens_per_iter: int, rank0: bool):
        cfg = folder.config
        self.log_dir, self.save_dir, self.rank0 = Path(log_dir), Path(save_dir), rank0
        self.keep_last, self.keep_every = cfg.checkpoint.keep_last, cfg.checkpoint.keep_every
        budget = TimeBudget.for_job(cfg.launch.exit_margin_seconds, self.log_dir) if rank0 else \
            TimeBudget(None, cfg.launch.exit_margin_seconds)
        budget.end_time = _share(budget.end_time)
        self.budget = budget
        self.progress = Progress(self.log_dir, train_iters, tokens_per_iter, rank0)
        if rank0 and budget.end_time is not None:
            print(f"[experiment.train] job ends at {datetime.fromtimestamp(budget.end_time).isoformat()} "
                  f"({budget.left():.0f} s left); saving and stopping when one step + save "
                  f"({budget.save_seconds or 0:.1f} s measured) + {budget.margin:.0f} s margin no longer fit",
                  flush=True)

    def after_step(self, iteration: int, seconds: float, extra: dict | None = None) -> bool:
        """Record the step; True (on every rank) when the run must save and stop now."""
        self.budget.record_step(seconds)
        if self.progress.start_iteration is None and self.rank0:
            _note_first_step(self.log_dir, iteration)
        self.progress.step(iteration, seconds, extra)
        if self.budget.end_time is None:
            return False
        return agree(self.rank0 and self.budget.out_of_time())

    def save(self, save_fn, iteration: int):
        """Run the (collective) save, time it, log it, and apply retention on rank 0."""
        t0 = time.perf_counter()
        path = save_fn()
        seconds = time.perf_counter() - t0
        self.budget.record_save(seconds)
        if self.rank0:
            log_save(self.log_dir, iteration, seconds, Path(path))
            print(f"[experiment.train] saved {Path(path).name} in {seconds:.2f} s", flush=True)
            from experiment.train.retention import prune

            for old in prune(self.save_dir, self.keep_last, self.keep_every):
                print(f"[experiment.train] retention: deleted {old.name}", flush=True)
        return path


def _note_first_step(log_dir: Path, iteration: int) -> None:
    """In a scheduled job, when the segment's first step ended (``logs/chain.jsonl``): what
    ``bench/slurm_segments.py`` measures the gap between segments with."""
    job = (current_job() or (None, None))[1]
    if not job:
        return
    runlog.append_chain(log_dir, {"event": "first_step", "job_id": job, "iteration": iteration})


def _share(value: float | None) -> float | None:
    """Rank 0's end time on every rank (one broadcast at start; only rank 0 asks the scheduler)."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return value
    if not dist.is_initialized():
        return value
    t = torch.tensor([-1.0 if value is None else value], dtype=torch.float64,
                     device="cuda" if torch.cuda.is_available() else "cpu")
    dist.broadcast(t, src=0)
    return None if t.item() < 0 else float(t.item())
