"""``experiment status FOLDER``: where a scheduled run stands, one row per job segment.

State per job: queued / running (the scheduler's queue), finished / stopped on time budget / failed (the
segment's own record in ``logs/chain.jsonl``), or what the scheduler says about a job that ended without
one (``scontrol show job``: state, reason, exit code) with the tail of its log. Then the run: iteration,
tokens/s, ETA and, where the runner measured it, MFU (``logs/run_status.json``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from experiment import runlog
from experiment.launch.launchers import queue_states

LOG_TAIL_LINES = 12
_QUEUE_WORDS = {"PENDING": "queued", "RUNNING": "running", "CONFIGURING": "running", "COMPLETING": "running",
                "REQUEUED": "queued", "SUSPENDED": "queued"}


@dataclass
class JobRow:
    job_id: str
    state: str
    iterations: str = ""
    reason: str = ""
    log_tail: str = ""


def scontrol_job(job: str) -> dict[str, str]:
    """``scontrol show job -o``'s fields, or {} once the scheduler forgot the job."""
    if shutil.which("scontrol") is None:
        return {}
    res = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True)
    if res.returncode:
        return {}
    out = {}
    for token in res.stdout.split():
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


def log_tail(folder: Path, job: str, lines: int = LOG_TAIL_LINES) -> str:
    path = folder / "logs" / f"slurm-{job}.out"
    if not path.is_file():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def job_rows(folder: Path) -> list[JobRow]:
    events = runlog.read_chain(Path(folder) / runlog.LOGS)
    queue = queue_states()
    rows: list[JobRow] = []
    for e in events:
        if e.get("event") != "submitted":
            continue
        job = e["job_id"]
        begin = next((x for x in reversed(events) if x.get("event") == "begin" and x["job_id"] == job), None)
        end = next((x for x in reversed(events) if x.get("event") == "end" and x["job_id"] == job), None)
        row = JobRow(job, "unknown")
        if begin:
            row.iterations = f"{begin['start_iteration']} ->"
        if end:
            row.iterations = f"{end['start_iteration']} -> {end['complete_iteration']}"
            row.state = {"finished": "finished", "walltime": "finished segment (time budget)",
                         "interrupted": "finished segment (signal)"}.get(end["state"], "failed")
            if row.state == "failed":
                row.reason = f"runner state {end['state']}, exit {end['rc']}"
                row.log_tail = log_tail(folder, job)
        if job in queue and queue[job][0] in _QUEUE_WORDS:
            row.state = _QUEUE_WORDS[queue[job][0]]
            reason = queue[job][1]
            row.reason = "" if reason in ("None", "") else reason
        elif not end:
            info = scontrol_job(job)
            js = info.get("JobState") or (queue.get(job, ("", ""))[0])
            if js in ("COMPLETED",) and begin:
                row.state = "finished"
            elif js:
                row.state = "failed" if js not in _QUEUE_WORDS else _QUEUE_WORDS[js]
                row.reason = f"{js}, reason {info.get('Reason', queue.get(job, ('', '?'))[1])}, exit code " \
                             f"{info.get('ExitCode', '?')}"
            else:
                row.state = "ended without a record"
                row.reason = "the scheduler no longer knows the job and the job wrote no segment record"
            if row.state == "failed" or not js:
                row.log_tail = log_tail(folder, job)
        rows.append(row)
    return rows


def run_line(folder: Path) -> str:
    status = runlog.read_status(Path(folder) / runlog.LOGS, strict=False)
    if not status:
        return f"run: no iteration yet ({runlog.status_path(runlog.LOGS)} not written)"
    parts = [f"run: {status.get('state', '?')}, iteration {status.get('iteration', '?')}/{status.get('train_iters', '?')}"]
    if status.get("tokens_per_s"):
        parts.append(f"{status['tokens_per_s']:,.0f} tokens/s")
    for key in ("mfu", "mfu_percent"):
        if status.get(key) is not None:
            value = status[key]
            parts.append(f"MFU {value:.1f}%" if key == "mfu_percent" or value > 1 else f"MFU {100 * value:.1f}%")
            break
    if status.get("eta_seconds") is not None and status.get("state") == "running":
        parts.append(f"ETA {_duration(status['eta_seconds'])} (compute only)")
    if status.get("updated"):
        parts.append(f"updated {_duration(time.time() - status['updated'])} ago")
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
