"""``experiment eval`` side by side against one after the other, on the same folder and the same work.

    python bench/eval.py training/demo [--repeat 1] [-- EVAL ARGS...]

Times the whole command twice per round, alternately: ``--processes 1`` (the anchor: one lm-eval run after
the other in one process with all cores, which is what the command did before 2026-12-07) and the default
(one process per checkpoint, the cores shared out). The exports under ``logs/eval/export/`` are made once
before the first round and reused by every run, so both rows time the same lm-eval work. Each run's
``eval.json`` rows must be identical to the byte; the table gives each median (range) and the ratio with
its two numbers. Default eval arguments: the demo's figures of 2026-12-04 (``--checkpoints last --max-docs 4
--limit 40``: 97 rolling windows and 320 requests per checkpoint).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_ARGS = ["--checkpoints", "last", "--max-docs", "4", "--limit", "40"]
ROWS = {"one after the other (--processes 1)": ["--processes", "1"], "side by side (default)": []}


def run(folder: Path, args: list[str]) -> tuple[float, list]:
    eval_json = folder / "logs" / "eval" / "eval.json"
    eval_json.unlink(missing_ok=True)
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "experiment.cli", "eval", str(folder), *args], capture_output=True,
                       text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"experiment eval failed:\n{r.stderr[-3000:]}")
    return seconds, json.loads(eval_json.read_text())["rows"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a training folder whose run has checkpoints (e.g. the demo's)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds, each row once per round, alternately")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # what follows -- goes to experiment eval
    opts = ap.parse_args(argv[:cut])
    eval_args = argv[cut + 1:] or DEFAULT_ARGS
    shutil.rmtree(opts.folder / "logs" / "eval" / "tasks", ignore_errors=True)
    print(f"exports (once): {' '.join(eval_args)}", flush=True)
    run(opts.folder, eval_args + ["--processes", "1", "--limit", "1", "--max-tokens", "16"])
    times: dict[str, list[float]] = {name: [] for name in ROWS}
    rows: dict[str, list] = {}
    for i in range(opts.repeat):
        for name, extra in ROWS.items():
            seconds, rows[name] = run(opts.folder, eval_args + extra)
            times[name].append(seconds)
            print(f"round {i + 1}: {name}: {seconds:.1f} s", flush=True)
    (anchor, anchor_s), (kit, kit_s) = ((n, statistics.median(t)) for n, t in times.items())
    print(f"\nexperiment eval {opts.folder} {' '.join(eval_args)}; {opts.repeat} round(s), medians (range)")
    print("| row | wall s | eval.json rows |")
    print("|---|---:|---|")
    for name, t in times.items():
        same = "identical" if rows[name] == rows[anchor] else "DIFFER"
        print(f"| {name} | {statistics.median(t):.1f} ({min(t):.1f}-{max(t):.1f}) | {same} |")
    print(f"\nspeed-up: {anchor_s / kit_s:.2f}x (= {anchor_s:.1f} s / {kit_s:.1f} s)")
    if rows[kit] != rows[anchor]:
        sys.exit("the figures differ: side by side must give the figures one after the other gives")


if __name__ == "__main__":
    main()
