"""Bench: what progress reporting costs the encode (goal: at most 2% slower, and a report at least once a second).

    python bench/progress.py [--corpus DIR] [--tokenizer PATH] [--repeat 5]

No backend reports progress from inside a call, so the kit encodes in pieces sized from the rate so far:
1. blocks of texts (``Encoder.encode(texts, progress=...)``, chunks of ~0.9 s) against one call on the same
   Arrow array (gigatoken, in memory, tokenizer loaded);
2. whole JSONL files (``tokenize.run``: groups of files of ~0.9 s) against groups of up to 128 MB, the
   grouping before progress was reported.
Rounds alternate; per round the ratio (without / with progress) and the longest gap between reports.
"""

from __future__ import annotations

import os.path
import sys

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _BENCH]
sys.path.insert(0, os.path.dirname(_BENCH))

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "midtrain-bench-corpus-100mb")
    ap.add_argument("--tokenizer", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import pyarrow as pa

    from experiment.data import sources, whole_files
    from experiment.data.encoders import load_encoder
    from experiment.data.tokenize import TokenizeConfig, run
    from experiment.data.tokenizer_spec import resolve_tokenizer

    tokenizer = args.tokenizer
    if tokenizer is None:
        import mistral_common

        tokenizer = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    work = Path(tempfile.mkdtemp(prefix="bench-progress-"))
    try:
        encoder = load_encoder(resolve_tokenizer(tokenizer), "auto", cache_dir=work / "cache").encoder
        texts = pa.concat_arrays([b for p in sources.find_inputs([args.corpus]) for b in sources.read_batches(p)]).cast(pa.large_string())
        mb = texts.nbytes / 1e6
        encoder.encode(texts.slice(0, 100))
        rows: dict[str, list[float]] = {"texts, one call": [], "texts, chunks + progress": [],
                                        "whole files, 128 MB groups": [], "whole files, timed groups + progress": []}
        gaps: dict[str, list[float]] = {k: [] for k in rows}

        def timed(name, fn):
            marks = [time.perf_counter()]
            t0 = marks[0]
            fn(lambda n: marks.append(time.perf_counter()))
            marks.append(time.perf_counter())
            rows[name].append(marks[-1] - t0)
            gaps[name].append(max(b - a for a, b in zip(marks, marks[1:])))

        def tokenize(grouped: bool, report):
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            seconds = whole_files.GROUP_SECONDS
            whole_files.GROUP_SECONDS = seconds if grouped else 1e9
            whole_files.FIRST_GROUP_BYTES = 8 << 20 if grouped else 128 << 20
            try:
                run(TokenizeConfig(inputs=[args.corpus], output=out, tokenizer=tokenizer, progress=False, cache_dir=work / "cache"))
            finally:
                whole_files.GROUP_SECONDS = seconds

        real_next = whole_files.GroupEncoder.next_group
        marks_hook: list = []

        def next_group(self):  # a report per group, as the progress bar gets it (when the group is handed over)
            item = real_next(self)
            if marks_hook:
                marks_hook[0](0)
            return item

        whole_files.GroupEncoder.next_group = next_group
        for _ in range(args.repeat):
            timed("texts, one call", lambda report: encoder.encode(texts))
            timed("texts, chunks + progress", lambda report: encoder.encode(texts, progress=report))
            for name, grouped in (("whole files, 128 MB groups", False), ("whole files, timed groups + progress", True)):
                def fn(report, grouped=grouped):
                    marks_hook[:] = [report]
                    tokenize(grouped, report)
                timed(name, fn)
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"progress cost, {mb:.0f} MB of text, {len(rows['texts, one call'])} alternating rounds, {os.cpu_count()} cores")
        for col in ("row", "median s", "range s", "longest gap between reports, median s", "ratio (no progress / with), median"):
            table.add_column(col, justify="left" if col == "row" else "right", overflow="fold")
        base = {"texts, chunks + progress": "texts, one call", "whole files, timed groups + progress": "whole files, 128 MB groups"}
        for name, times in rows.items():
            ratio = ""
            if name in base:
                ratio = f"{statistics.median(a / b for a, b in zip(rows[base[name]], times)):.3f}"
            table.add_row(name, f"{statistics.median(times):.2f}", f"{min(times):.2f}-{max(times):.2f}",
                          f"{statistics.median(gaps[name]):.2f}", ratio)
        Console().print(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
