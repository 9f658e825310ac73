"""``experiment status FOLDER``: where a scheduled run stands, one row per job segment.

State per job: queued / running (the scheduler's queue), finished / stopped on time budget / failed (the
segment's own record in ``logs/chain.jsonl``), or what the scheduler says about a job that ended without
one (``scontrol show job``: state, reason, exit code) with the tail of its log. Then the run: iteration,
tokens/s, ETA and, where the runner measured it, MFU (``logs/run_status.json``).

Per node: the hosts each segment ran on (the chain's ``begin`` record, else the scheduler's node list, else
the ranks' start lines in the job's log); for a running job the last iteration each node reported (the ranks'
heartbeats, ``logs/heartbeat/rank-<r>.json``, grouped by host); a node of a queued or running job that is not
up (DOWN, DRAIN, NOT_RESPONDING: its slurmd stopped or the node is lost) with the scheduler's ``State`` and
``Reason`` (``scontrol show node -o``); and for a failed segment the node that ended it (``step_failures``:
srun's lines in the job's log, a node whose task never ended or could not start).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiment import runlog
from experiment.launch.launchers import queue_states
from experiment.launcher_names import hostnames

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
    nodes: str = ""  # the hosts the segment ran on, "node1, node2"
    node_notes: list[str] = field(default_factory=list)  # nodes not up, the node that ended a failed step


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
    nodes_info: list[dict[str, str]] | None = None  # scontrol show node, asked once when a job is queued/running
    for e in events:
        if e.get("event") != "submitted":
            continue
        job = e["job_id"]
        begin = next((x for x in reversed(events) if x.get("event") == "begin" and x["job_id"] == job), None)
        end = next((x for x in reversed(events) if x.get("event") == "end" and x["job_id"] == job), None)
        row = JobRow(job, "unknown")
        hosts = list((begin or {}).get("hosts") or [])
        if begin:
            row.iterations = f"{begin['start_iteration']} ->"
        if end:
            row.iterations = f"{end['start_iteration']} -> {end['complete_iteration']}"
            row.state = {"finished": "finished", "walltime": "finished segment (time budget)",
                         "interrupted": "finished segment (signal)"}.get(end["state"], "failed")
            if row.state == "failed":
                row.reason = f"runner state {end['state']}, exit {end['rc']}"
                row.log_tail = log_tail(folder, job)
                row.node_notes = step_failures(_log_text(folder, job), hosts or _log_hosts(folder, job))
        # the segment's own end record wins over a job still RUNNING/COMPLETING its last lines (`chain end`)
        step_over = end is not None and (begin is None or events.index(end) > events.index(begin))
        if job in queue and queue[job][0] in _QUEUE_WORDS and not (step_over and queue[job][0] in (
                "RUNNING", "COMPLETING", "CONFIGURING")):
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
                row.node_notes = step_failures(_log_text(folder, job), hosts or _log_hosts(folder, job))
        if job in queue and queue[job][0] == "COMPLETING" and not end:  # a step that failed, a node that lags
            row.node_notes = step_failures(_log_text(folder, job), hosts or _log_hosts(folder, job))
        if row.state in ("queued", "running"):
            info = scontrol_job(job)
            if not hosts and info.get("NodeList") not in (None, "", "(null)"):
                hosts = hostnames(info["NodeList"])
            if nodes_info is None:
                nodes_info = scontrol_nodes()
            down = nodes_not_up(nodes_info, hosts if row.state == "running" and hosts else None,
                                info.get("Partition"))
            row.node_notes += [f"node {n} is not up: {why}" for n, why in down]
            if down and row.state == "queued":
                row.reason = ", ".join(filter(None, [row.reason, "waits for " + ", ".join(n for n, _ in down)]))
        row.nodes = ", ".join(hosts or _log_hosts(folder, job))
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ nodes

_RANK_LINE = re.compile(r"^\[experiment\.train\] rank (\d+)/(\d+) on (\S+) \(node rank (\d+), local rank (\d+)\)")
_SRUN_EXIT = re.compile(r"^srun: error: (\S+): tasks? ([\d,-]+): (.+)$")
_SRUN_RUNNING = re.compile(r"^srun: StepId=\S+ tasks? ([\d,-]+): running$")
_SRUN_LAUNCH = re.compile(r"Task launch for StepId=\S+ failed on node (\S+): (.+)$")
# torchrun's c10d rendezvous: a node whose agent could not reach the first node's store
_RDZV_UNREACHED = re.compile(r"(?:TCP client failed to connect/validate to host|trying to connect to \()\s*"
                             r"([\w.-]+)(?::|, )(\d+)")
NOT_UP = {"DOWN", "DRAIN", "DRAINED", "DRAINING", "FAIL", "FAILING", "NOT_RESPONDING", "NO_RESPOND",
          "POWERED_DOWN", "POWER_DOWN", "UNKNOWN"}


def _log_text(folder: Path, job: str) -> str:
    path = Path(folder) / "logs" / f"slurm-{job}.out"
    return path.read_text(errors="replace") if path.is_file() else ""


def rank_hosts(log: str) -> dict[int, tuple[str, int]]:
    """{rank: (host, node rank)} from the ranks' start lines (``console.rank_line``) in a job's log."""
    out = {}
    for line in log.splitlines():
        m = _RANK_LINE.match(line.strip())
        if m:
            out[int(m.group(1))] = (m.group(3), int(m.group(4)))
    return out


def _log_hosts(folder: Path, job: str) -> list[str]:
    """The hosts of a job in node-rank order, as its ranks' start lines name them."""
    ranks = rank_hosts(_log_text(folder, job))
    return list(dict.fromkeys(h for _, h in sorted((g, h) for h, g in ranks.values())))


def _tasks(spec: str) -> list[int]:
    """srun's task list ("1", "1-3", "0,2")."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out += list(range(int(lo), int(hi if hi.isdigit() else lo) + 1))
    return out


def step_failures(log: str, hosts: list[str]) -> list[str]:
    """The node(s) that ended a multi-node step, from srun's lines in the job's log (one task per node, task i
    on ``hosts[i]``): a node where the step could not start, a node whose task never ended (its processes
    killed or the node lost: srun gave up on it after ``--wait``), else the nodes whose task exited with an
    error (the first one is where it began)."""
    launch, running, exited = {}, [], []
    for line in log.splitlines():
        line = line.strip()
        m = _SRUN_LAUNCH.search(line)
        if m:
            launch.setdefault(m.group(1), m.group(2))
            continue
        m = _SRUN_RUNNING.match(line)
        if m:
            running += [t for t in _tasks(m.group(1)) if t not in running]
            continue
        m = _SRUN_EXIT.match(line)
        if m and (m.group(1), m.group(3)) not in exited:
            exited.append((m.group(1), m.group(3)))
    notes = [f"node {n}: the step could not start there ({why})" for n, why in launch.items()]
    for t in running:
        node = hosts[t] if t < len(hosts) else f"task {t}"
        notes.append(f"node {node}: its processes stopped answering (srun's task {t} never ended: killed, or the "
                     "node lost); the other ranks lost their peer and the step ended")
    if not notes and ("Timed out waiting for job step" in log or "forcing job termination" in log):
        silent = [h for h in hosts if h not in {n for n, _ in exited}] if exited else []
        notes = [f"node {h}: its task never reported an exit (its processes killed, or the node lost); the other "
                 "ranks lost their peer and the step ended" for h in silent]
    unreached = _RDZV_UNREACHED.search(log)
    if not notes and unreached and exited:
        # the node(s) whose torchrun gave up on their own; the others were then terminated by srun
        endpoint = f"{unreached.group(1)}:{unreached.group(2)}"
        gave_up = [n for n, what in exited if "Terminated" not in what] or [exited[0][0]]
        notes = [f"node {n}: could not join the rendezvous at {endpoint} (its torchrun could not reach the c10d "
                 "store there and gave up); check that the node names resolve on every node and that the port "
                 "is open between the nodes" for n in gave_up]
        notes += [f"node {n}: {what.rstrip('.')}" for n, what in exited if n not in gave_up]
    if not notes:
        notes = [f"node {n}: {what.rstrip('.')}" for n, what in exited]
    return notes


def scontrol_nodes() -> list[dict[str, str]]:
    """``scontrol show node -o``: one dict of fields per node ([] without a scheduler)."""
    from experiment.launch.partition import fields

    if shutil.which("scontrol") is None:
        return []
    res = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True)
    return [fields(line) for line in res.stdout.splitlines() if line.startswith("NodeName=")] if not res.returncode \
        else []


def nodes_not_up(nodes: list[dict[str, str]], hosts: list[str] | None = None,
                 partition: str | None = None) -> list[tuple[str, str]]:
    """(node, "State=...; Reason=...") for each node of ``hosts`` (else of ``partition``, else every node)
    that is not up: DOWN, DRAIN, NOT_RESPONDING (``*`` in sinfo), FAIL ..."""
    out = []
    for n in nodes:
        name = n.get("NodeName", "?")
        if hosts is not None and name not in hosts:
            continue
        if hosts is None and partition and partition not in n.get("Partitions", "").split(","):
            continue
        state = n.get("State", "")
        if not set(state.split("+")) & NOT_UP:
            continue
        reason = n.get("Reason", "")
        out.append((name, f"State={state}; " + (f"Reason={reason}" if reason and reason != "(null)" else
                                                 "no Reason yet (its slurmd does not answer; Slurm sets DOWN, "
                                                 "Reason=Not responding after SlurmdTimeout)")))
    return out


def node_progress(log_dir: Path, now: float | None = None) -> list[str]:
    """Per host, from the ranks' heartbeats: the last iteration it reported, its ranks and phase, and how long
    ago its newest heartbeat was written."""
    from experiment.train.watchdog import HEARTBEAT_DIR

    now = time.time() if now is None else now
    hosts: dict[str, list[dict]] = {}
    for path in sorted((Path(log_dir) / HEARTBEAT_DIR).glob("rank-*.json")):
        try:
            beat = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        hosts.setdefault(beat.get("host") or "?", []).append(beat)
    lines = []
    for host, beats in sorted(hosts.items()):
        its = [b["iteration"] for b in beats if b.get("iteration") is not None]
        ranks = ", ".join(str(b.get("rank")) for b in sorted(beats, key=lambda b: b.get("rank", 0)))
        phases = "/".join(sorted({str(b.get("phase")) for b in beats}))
        age = now - max(float(b.get("time", 0)) for b in beats)
        lines.append(f"node {host}: iteration {max(its) if its else '-'} (rank{'s' if len(beats) > 1 else ''} "
                     f"{ranks}, {phases}), heartbeat {_duration(age)} ago")
    return lines


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
