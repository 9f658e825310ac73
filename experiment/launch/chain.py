"""A scheduled run as a chain of job segments: what the job script runs before and after its torchrun step.

``begin`` (before the step) records the segment: job id, node count, the iteration it resumes from, the
image digest, and the work the previous segment lost (iterations it trained past its last complete
checkpoint). ``end`` (after the step) reads what the runner left (``logs/run_status.json``, the
checkpoints) and either

- writes ``run.lock.json`` with every segment, when the run reached its length;
- submits the next segment (``sbatch --dependency=afterany:<this job>`` / ``qsub -W depend=afterany:``)
  when the runner stopped cleanly on its time budget or a signal, or died after making progress;
- stops the chain (exit 1) when a segment made no progress after a clean stop, or two segments in a row
  made none: a real failure is not retried forever. ``launch.max_segments`` caps the chain too.

The records go to ``logs/chain.jsonl`` (``experiment status`` reads them).

    python -m experiment.launch.chain begin FOLDER [--set K=V ...]
    python -m experiment.launch.chain end FOLDER --rc RC --script launch/slurm.sh [--set K=V ...]

The ``--set`` overrides are the run's own (the job script passes them to every step that loads the folder).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from experiment import runlog
from experiment.launcher_names import current_job, job_hosts, job_nodes, job_restarts
from experiment.train.walltime import WALLTIME_STATE
from experiment.train.watchdog import HUNG_STATE  # the runner's watchdog ended the segment

CLEAN_STOPS = (WALLTIME_STATE, "interrupted")


def _job() -> tuple[str, str]:
    return current_job() or ("none", "local")


def _complete_iteration(folder) -> int:
    from experiment.train.checkpointing import usable_iterations

    save = folder.resolve(folder.config.checkpoint.save)
    good, _ = usable_iterations(save) if save.is_dir() else ([], [])
    return good[0] if good else 0


def _reached_iteration(folder) -> int:
    """The last iteration the runner logged (it may be past the last complete checkpoint)."""
    records = runlog.read_losses(folder.path / runlog.LOGS, strict=False)
    return max((int(r["iteration"]) for r in records if "iteration" in r), default=0)


def _image_digest() -> str | None:
    from experiment.lock import environment

    digest = os.environ.get(environment.IMAGE_DIGEST_VAR)
    if digest:
        return digest
    image = environment.detect_image()
    return getattr(image, "digest", None) if image else None


def segments(folder_path: Path, pending: list[dict] = ()) -> list[dict]:
    """One row per segment from the chain records (and ``pending`` ones not written yet): job id, nodes,
    iterations start -> end, image digest, lost iterations, how it ended."""
    rows: list[dict] = []
    for e in [*runlog.read_chain(Path(folder_path) / runlog.LOGS), *pending]:
        if e.get("event") == "begin":
            rows.append({"job_id": e["job_id"], "nodes": e.get("nodes", 1), **({"hosts": e["hosts"]} if e.get("hosts") else {}),
                         "start_iteration": e["start_iteration"],
                         "end_iteration": None, "image_digest": e.get("image_digest"),
                         "lost_iterations": e.get("lost_iterations", 0), "state": "running"})
        elif e.get("event") == "end" and rows and rows[-1]["job_id"] == e["job_id"]:
            rows[-1].update(end_iteration=e["complete_iteration"], state=e["state"], returncode=e["rc"])
    return rows


def begin(folder) -> int:
    scheduler, job = _job()
    logs = folder.path / runlog.LOGS
    events = runlog.read_chain(logs)
    done = [e for e in events if e.get("event") == "begin"]
    if len(done) >= folder.config.launch.max_segments:
        print(f"[chain] launch.max_segments={folder.config.launch.max_segments} segments already ran; not "
              "starting another (raise it in experiment.toml and resubmit)", file=sys.stderr)
        return 1
    from experiment.launch.datacheck import segment_problems

    problems = segment_problems(folder)  # changed shards; checkpoints none of which would resume
    if problems:
        runlog.append_chain(logs, {"event": "stopped", "job_id": job,
                                   "why": "; ".join(p.splitlines()[0] for p in problems)})
        print(f"[chain] refusing to start segment {len(done) + 1}:\n  " + "\n  ".join(problems),
              file=sys.stderr, flush=True)
        return 2
    start = _complete_iteration(folder)
    ends = [e for e in events if e.get("event") == "end"]
    lost = max(0, ends[-1]["reached_iteration"] - start) if ends else 0
    hosts = job_hosts()
    runlog.append_chain(logs, {"event": "begin", "job_id": job, "scheduler": scheduler, "nodes": job_nodes(),
                               "hosts": hosts, "restart": job_restarts(), "start_iteration": start,
                               "image_digest": _image_digest(), "lost_iterations": lost, "segment": len(done) + 1})
    note = f", {lost} iteration(s) of the previous segment lost (past its last complete checkpoint)" if lost else ""
    on = f" on {', '.join(hosts)}" if hosts else ""
    print(f"[chain] segment {len(done) + 1} (job {job}) starts at iteration {start}{on}{note}", flush=True)
    return 0


NEXT_ON_HOST = 3  # `chain end --submit-on-host`: a next segment is due; the job script submits it (inside an image)


def end(folder, rc: int, script: Path | None, submit_on_host: bool = False) -> int:
    from experiment.train.runner import train_iterations

    scheduler, job = _job()
    cfg = folder.config
    iters = train_iterations(cfg.training, cfg.model.seq_length)
    logs = folder.path / runlog.LOGS
    status = runlog.read_status(logs, strict=False)
    complete, reached = _complete_iteration(folder), _reached_iteration(folder)
    events = runlog.read_chain(logs)
    begins = [e for e in events if e.get("event") == "begin" and e["job_id"] == job]
    start = begins[-1]["start_iteration"] if begins else 0
    state = status.get("state", "unknown")
    if state == "running" or rc != 0 and state not in (*CLEAN_STOPS, HUNG_STATE):
        state = "failed"  # a hung segment keeps its name ("hung"); both resubmit by the same rules
    finished = complete >= iters
    if finished:
        state = "finished"
    progress = complete > start
    event = {"event": "end", "job_id": job, "rc": rc, "state": state, "start_iteration": start,
             "complete_iteration": complete, "reached_iteration": reached, "progress": progress}
    if finished:  # the lock first: a finished record means the lockfile is there
        path = write_lock(folder, scheduler, event)
        runlog.append_chain(logs, event)
        print(f"[chain] run complete at iteration {complete}/{iters}; lockfile: {path}", flush=True)
        return 0
    if state in ("failed", HUNG_STATE):
        _say_failed_nodes(folder, job, begins[-1].get("hosts", []) if begins else [])
    previous = [e for e in events if e.get("event") == "end"]
    stalled_before = bool(previous) and not previous[-1].get("progress", True)
    no_progress = not progress and (state in CLEAN_STOPS or stalled_before)
    if not no_progress and len([e for e in events if e.get("event") == "begin"]) < cfg.launch.max_segments:
        # the next segment is submitted before this one's end is recorded, and the record names it: a reader
        # (`wait`, `status`) never sees a failed end as the chain's last word while its successor is queued
        if submit_on_host:  # inside the image there is no sbatch: the job script submits, then `chain submitted`
            runlog.append_chain(logs, {**event, "next_job": "pending"})
            print(f"[chain] segment {job} ended ({state}) at iteration {complete}/{iters}; the job script submits "
                  "the next segment", flush=True)
            return NEXT_ON_HOST
        try:
            submitted = submit_next(folder, scheduler, job, script)
        except Exception:
            runlog.append_chain(logs, event)
            runlog.append_chain(logs, {"event": "stopped", "job_id": job, "why": "the next segment could not be "
                                       "submitted"})
            raise
        runlog.append_chain(logs, {**event, "next_job": submitted})
        print(f"[chain] segment {job} ended ({state}) at iteration {complete}/{iters}; next segment: job "
              f"{submitted}", flush=True)
        return 0
    runlog.append_chain(logs, event)
    if no_progress:
        runlog.append_chain(logs, {"event": "stopped", "job_id": job, "why": "no progress"})
        print(f"[chain] segment {job} ended ({state}, exit {rc}) without completing a checkpoint past iteration "
              f"{start}; stopping the chain. See logs/slurm-{job}.out; fix the cause (or raise launch.walltime) and "
              f"run `experiment run {folder.path} --launcher {scheduler}` again", file=sys.stderr, flush=True)
        return 1
    runlog.append_chain(logs, {"event": "stopped", "job_id": job, "why": "launch.max_segments"})
    print(f"[chain] launch.max_segments={cfg.launch.max_segments} reached at iteration {complete}/{iters}; "
          "stopping", file=sys.stderr)
    return 1


def _say_failed_nodes(folder, job: str, hosts: list[str]) -> None:
    """One line naming the node that ended a failed step (srun's lines in this job's log, read by
    ``status.step_failures``): the node whose processes died or could not start, not the survivor that then
    lost its peer."""
    from experiment.launch.status import step_failures

    log = folder.path / runlog.LOGS / f"slurm-{job}.out"
    notes = step_failures(log.read_text(errors="replace"), hosts) if log.is_file() else []
    if notes:
        print(f"[chain] segment {job} failed: " + "; ".join(notes), file=sys.stderr, flush=True)


def submit_next(folder, scheduler: str, job: str, script: Path | None) -> str:
    from experiment.launch.launchers import LAUNCHERS, Prepared, Request
    from experiment.launch.local import Launch

    script = script or folder.path / "launch" / f"{scheduler}.sh"
    launcher = LAUNCHERS[scheduler]
    prepared = Prepared(Request(folder, Launch(folder.path)), "", script=Path(script))
    return launcher.submit(prepared, dependency=job, by="chain").job_id


def write_lock(folder, scheduler: str, last_end: dict) -> Path:
    """The lock of a finished chain: every segment, through the one way a run ends (``finish.finish_run``)."""
    from experiment.launch.finish import finish_run

    segs = [{k: s[k] for k in ("job_id", "nodes", "hosts", "start_iteration", "end_iteration", "image_digest",
                               "lost_iterations", "state") if k in s} for s in segments(folder.path, [last_end])]
    path = finish_run(folder.path, launcher=scheduler, overrides=folder.overrides, launch={"segments": segs},
                      say=lambda m: print(f"[chain] {m}", flush=True))
    if path is None:
        from experiment.launch.launchers import LaunchError

        raise LaunchError(f"{runlog.status_path(folder.path / runlog.LOGS)}: the run reached its length but the runner "
                          "did not record it as finished; fix: run `experiment lock write "
                          f"{folder.path}` after checking its logs")
    return path


def submitted(folder, after: str, job: str) -> int:
    """Record the next segment the job script submitted on the host (``job``; empty: the submission failed,
    and the chain stops with the scheduler's message above it in the log)."""
    logs = folder.path / runlog.LOGS
    if not job:
        runlog.append_chain(logs, {"event": "stopped", "job_id": after, "why": "the next segment could not be "
                                   "submitted (the scheduler's message is in this job's log)"})
        print(f"[chain] the next segment after job {after} could not be submitted; see the lines above",
              file=sys.stderr, flush=True)
        return 1
    runlog.append_chain(logs, {"event": "submitted", "job_id": job, "by": "chain", "after": after})
    print(f"[chain] next segment: job {job}", flush=True)
    return 0


def wait(folder_path: Path, poll: float = 2.0, timeout: float | None = None) -> str:
    """Block until the chain's last segment ended with nothing after it; returns its state."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        events = runlog.read_chain(Path(folder_path) / runlog.LOGS)
        last = events[-1] if events else {}
        if last.get("event") == "end" and last.get("state") in ("finished", "failed") and not last.get("next_job"):
            return last["state"]
        if last.get("event") == "stopped":
            return "failed"
        time.sleep(poll)
    return "timeout"


def main(argv: list[str] | None = None) -> int:
    from experiment.folder import FolderError, load_schema

    parser = argparse.ArgumentParser(prog="python -m experiment.launch.chain")
    parser.add_argument("action", choices=("begin", "end", "submitted"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rc", type=int, default=0)
    parser.add_argument("--script", type=Path, default=None)
    parser.add_argument("--submit-on-host", action="store_true",
                        help="end: leave the next submission to the job script (exit 3 when one is due)")
    parser.add_argument("--after", default="", help="submitted: the job that ended")
    parser.add_argument("--job", default="", help="submitted: the job id sbatch/qsub printed (empty: it failed)")
    parser.add_argument("--set", action="append", default=[], dest="overrides")  # the run's own, as torchrun gets them
    args = parser.parse_args(argv)
    try:
        folder = load_schema(args.folder, overrides=args.overrides)
    except FolderError as err:
        print(f"[chain] refusing to start: {err}", file=sys.stderr)
        return 2
    if args.action == "begin":
        return begin(folder)
    if args.action == "submitted":
        return submitted(folder, args.after, args.job)
    from experiment.errors import KitError

    try:
        return end(folder, args.rc, args.script, args.submit_on_host)
    except KitError as err:  # LaunchError, a lock that cannot be written (FinishError, LockError)
        print(f"[chain] {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
