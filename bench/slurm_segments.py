"""Segments of a chained Slurm run: save time, and the time from one segment's end to the next one's
first step (the chain's overhead: the job's end, the dependent job's start, interpreter + model build +
resume), measured on a real Slurm.

    python bench/slurm_segments.py                 # a fresh tiny run on the local Slurm (root; ~3-5 min)
    python bench/slurm_segments.py FOLDER          # the records of a chain that already ran

Reads ``logs/chain.jsonl`` (begin / first_step / end records per job) and ``logs/saves.jsonl``.
Anchor: Megatron-LM's ``--exit-duration-in-mins`` leaves the gap to the scheduler and the restart; the
table gives the numbers to size ``launch.exit_margin_seconds`` with (margin >= slowest save + slowest step).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def table(folder: Path) -> str:
    events = _jsonl(folder / "logs" / "chain.jsonl")
    saves = _jsonl(folder / "logs" / "saves.jsonl")
    jobs = [e["job_id"] for e in events if e["event"] == "begin"]
    rows = []
    for i, job in enumerate(jobs):
        begin = next(e for e in events if e["event"] == "begin" and e["job_id"] == job)
        first = next((e for e in events if e["event"] == "first_step" and e["job_id"] == job), None)
        end = next((e for e in events if e["event"] == "end" and e["job_id"] == job), None)
        prev_end = next((e for e in events if e["event"] == "end" and e["job_id"] == jobs[i - 1]), None) if i else None
        seg_saves = [s["seconds"] for s in saves
                     if end and begin["start_iteration"] < s["iteration"] <= end["complete_iteration"]]
        rows.append({
            "job": job, "iterations": f"{begin['start_iteration']}->{end['complete_iteration'] if end else '?'}",
            "ended": end["state"] if end else "?",
            "start_to_first_step_s": round(first["time"] - begin["time"], 1) if first else None,
            "gap_prev_end_to_first_step_s": round(first["time"] - prev_end["time"], 1) if first and prev_end else None,
            "saves": len(seg_saves), "save_s_max": max(seg_saves) if seg_saves else None,
            "save_s_median": round(statistics.median(seg_saves), 2) if seg_saves else None,
        })
    cols = list(rows[0]) if rows else []
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    gaps = [r["gap_prev_end_to_first_step_s"] for r in rows if r["gap_prev_end_to_first_step_s"] is not None]
    all_saves = [s["seconds"] for s in saves]
    if gaps:
        lines.append(f"segment end -> next first step: median {statistics.median(gaps):.1f} s, max {max(gaps):.1f} s "
                     f"over {len(gaps)} restarts")
    if all_saves:
        lines.append(f"save: median {statistics.median(all_saves):.2f} s, max {max(all_saves):.2f} s over "
                     f"{len(all_saves)} checkpoints")
    return "\n".join(lines)


def fresh_run(iters: int = 600) -> Path:
    import mistral_common

    from experiment.launch.slurm_local import LocalSlurm
    from tests.lock.tinyproject import make_project

    work = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    project = make_project(work / "project", Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1")
    folder = project / "training" / "tiny"
    toml = folder / "experiment.toml"
    toml.write_text(toml.read_text().replace("train_iters = 4", f"train_iters = {iters}")
                    .replace("save_interval = 2", "save_interval = 100")
                    + 'walltime = "2"\nexit_margin_seconds = 90\nsignal_seconds = 5\n')
    slurm = LocalSlurm(Path(os.environ.get("MIDTRAIN_SLURM_DIR", work / "slurm")))
    owned = not slurm.running()
    slurm.start()
    env = slurm.environ()
    try:
        subprocess.run([sys.executable, "-m", "experiment.cli", "run", str(folder), "--launcher", "slurm"],
                       check=True, env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        while True:
            events = _jsonl(folder / "logs" / "chain.jsonl")
            if events and events[-1]["event"] == "end" and events[-1]["state"] in ("finished", "failed"):
                break
            time.sleep(2)
    finally:
        if owned:
            slurm.stop()
    return folder


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else fresh_run()
    print(f"# chained Slurm segments of {folder}")
    print(table(folder))


if __name__ == "__main__":
    main()
