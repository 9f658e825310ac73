"""Tokenization throughput: the kit end to end vs raw encoders on the same texts and threads.

    python bench/tokenize.py [--mb 100] [--fill-mb MB] [--corpus DIR] [--tokenizer PATH] [--megatron-lm CHECKOUT]
                             [--save results.json]

Rows (each in its own process, so peak memory is its own):
  kit end to end   `experiment data tokenize`: read JSONL, encode, append EOD, write .bin/.idx, count, rename
  kit-warm         the same, timed as the raw rows are: after loading the tokenizer and a first run on 100 documents
  kit-blocks       the same with whole_files=False: pyarrow parses blocks of texts, gigatoken encodes each block
  kit-tasks        the same as --threads datatrove tasks (`--tasks N`: N processes, one encoder thread each)
  kit-cli          the whole command as a user runs it (`python -m experiment.cli data tokenize ... --json`), timed
                   from outside: interpreter start-up, imports, tokenizer load, probe, encode, write, summary
  kit-1doc         the same whole command on a one-document input: the fixed cost of a run (goal <= 0.5 s)
  gigatoken-files  gigatoken `encode_files` on the JSONL files themselves (its own reader), timed region only
  gigatoken-cli    the same as a whole command timed from outside (interpreter, imports, tokenizer load, pool
                   start, encode_files, ids written as one uint16 .bin): the fair anchor for kit-cli
  sentencepiece    the reference encoder, `encode(list, num_threads=N)` on in-memory texts, nothing written
  tokenizers       HF `encode_batch` on in-memory texts (tokenizer.json of the same model), nothing written
  gigatoken        `encode_batch` on in-memory texts, nothing written
  preprocess_data  Megatron-LM's tools/preprocess_data.py, whole command (only with --megatron-lm)
--megatron-lm: a Megatron-LM checkout at tag core_v0.16.1 (tools/ and megatron/{training,legacy,rl,post_training}
are enough; megatron.core comes from the installed package). megatron.training imports triton and six at import
time, which CPU torch lacks: `pip install --no-deps --target DIR triton six` and run with PYTHONPATH=DIR.
"ids == ..." compares every document's ids with sentencepiece's (or gigatoken's when sentencepiece is skipped).
CPU s (user+sys, children included) is the fairer column on a shared machine: wall time moves with the load. The ratio column is tokens/s over the
fastest raw encoder whose ids are identical. The per-round lines pair each kit row with the gigatoken row run
right after it; kit-cli / gigatoken-files is the whole-command goal (median >= 0.8); kit-cli / gigatoken-cli compares
two whole commands. Each row's wall seconds are also given as median (range) over its rounds, and each pair's
ratio of those medians with the two medians beside it.
Peak MB is the measured thing's own peak RSS: for the whole-command rows (kit-cli, kit-1doc, gigatoken-cli,
preprocess_data) the command's process, by GNU time's %M (/usr/bin/time; without it, the bench process's children,
which count the bench's own RSS at fork), for the in-process rows the process right after the timed region
(before the bench reads the ids back to compare them).
--fill-mb N: the Debian packages `experiment demo corpus` reads hold about 100 MB of distinct text, so a larger
corpus is the --mb sample's shards copied whole (each copy its own file, `..._split_0003-copy02.jsonl`) until it
holds at least N MB; the table's title says how many copies. Repeated text can favour an encoder with a cache.
--save PATH: every round of every row (seconds, CPU, peak, docs, tokens, ids digest) with the date, commit, load
average and corpus, as JSON: the raw record of a run.
"""

from __future__ import annotations

import os
import sys

# This file is named tokenize.py: drop its folder from sys.path so `import tokenize` (stdlib, used by
# linecache/inspect) is not this script.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def _texts(corpus: Path) -> list[str]:
    from experiment.data import sources

    out: list[str] = []
    for path in sources.find_inputs([corpus]):
        for batch in sources.read_batches(path):
            out.extend(t for t in batch.to_pylist() if t)
    return out


def _digest(flat: np.ndarray, lengths: np.ndarray) -> str:
    import blake3

    h = blake3.blake3()
    h.update(np.ascontiguousarray(lengths, dtype=np.int64).view(np.uint8))  # the buffers themselves: no copy of 1 GB of ids
    h.update(np.ascontiguousarray(flat, dtype=np.uint32).view(np.uint8))
    return h.hexdigest()


def _rows_digest(rows) -> str:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter((t for r in rows for t in r), dtype=np.uint32, count=int(lengths.sum()))
    return _digest(flat, lengths)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (preprocess_data's workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _own_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _children_peak_mb() -> float:
    """The largest finished child's peak RSS. Linux counts in it what the child shared with this process when it
    was forked (ru_maxrss survives exec), so a whole command's own peak is taken with `_run` instead."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


_TIME = "/usr/bin/time"  # GNU time: its child's ru_maxrss starts from time's own few MB, not from this process
_MARK = "BENCH_MAXRSS_KB"


def _run(cmd: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, float | None]:
    """Run a whole command; returns it and its own peak RSS in MB (None without GNU time)."""
    if not os.access(_TIME, os.X_OK):
        return subprocess.run(cmd, capture_output=True, text=True, env=env), None
    proc = subprocess.run([_TIME, "-f", f"\n{_MARK} %M", *cmd], capture_output=True, text=True, env=env)
    head, _, tail = proc.stderr.rpartition(_MARK)
    proc.stderr = head.rstrip("\n")
    try:
        return proc, int(tail.split()[0]) / 1024
    except (IndexError, ValueError):
        return proc, None


def fill_corpus(sample: Path, target: Path, mb: float) -> int:
    """``target``: the sample's JSONL shards copied whole until it holds at least ``mb`` MB; returns the copies."""
    shards = sorted(sample.glob("*.jsonl"))
    size = sum(p.stat().st_size for p in shards)
    copies = max(1, -(-int(mb * 1e6) // size))
    if sum(p.stat().st_size for p in target.glob("*.jsonl")) != copies * size:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for k in range(copies):
            for p in shards:
                stem = p.name.removesuffix(".jsonl")
                shutil.copyfile(p, target / (p.name if k == 0 else f"{stem}-copy{k:02d}.jsonl"))
    return copies


def _shards_ids(prefixes) -> tuple[np.ndarray, np.ndarray]:
    """Every document's ids (EOD dropped) and lengths of these shards, in order."""
    from experiment.data.shards import read_shard

    flats, lengths = [], []
    for prefix in prefixes:
        info = read_shard(prefix)
        data = np.fromfile(f"{prefix}.bin", dtype=np.dtype(info.dtype))
        idx = np.frombuffer(Path(f"{prefix}.idx").read_bytes(), dtype=np.uint8)
        n = info.counts.sentences
        seq = np.frombuffer(idx[34 : 34 + 4 * n].tobytes(), dtype=np.int32).astype(np.int64)
        keep = np.ones(len(data), dtype=bool)
        keep[np.cumsum(seq) - 1] = False  # drop EOD
        flats.append(data[keep].astype(np.uint32))
        lengths.append(seq - 1)
    return np.concatenate(flats), np.concatenate(lengths)


def child(kind: str, corpus: Path, tokenizer: Path, tok_json: Path, work: Path, threads: int, megatron: str | None) -> dict:
    """One measurement; returns seconds, docs, tokens (without EOD) and the ids digest."""
    import pyarrow as pa

    pa.set_cpu_count(threads)  # the kit's JSON parsing gets the same threads as the encoders
    if kind in ("kit", "kit-warm", "kit-blocks", "kit-tasks"):
        from dataclasses import replace

        from experiment.data.tokenize import TokenizeConfig, run

        out = work / "kit-out"
        cfg = TokenizeConfig(inputs=[corpus], output=out, tokenizer=tokenizer, progress=False, cache_dir=work / "cache",
                             whole_files=kind != "kit-blocks")
        if kind == "kit-warm":  # timed as the raw rows are: tokenizer loaded and a first call made on 100 documents
            first = sorted(corpus.glob("*.jsonl"))[0]
            warm_in, warm_out = work / "warm-in", work / "warm-out"
            shutil.rmtree(warm_in, ignore_errors=True)
            shutil.rmtree(warm_out, ignore_errors=True)
            warm_in.mkdir()
            with open(first, "rb") as src:
                (warm_in / first.name).write_bytes(b"".join(line for _, line in zip(range(100), src)))
            run(replace(cfg, inputs=[warm_in], output=warm_out))
        t0, c0 = time.perf_counter(), _cpu()
        if kind == "kit-tasks":  # one datatrove task per thread, each a process with one encoder thread
            from experiment.data.tokenize_tasks import run_tasks

            report = run_tasks(cfg, tasks=threads, workers=threads)
        else:
            report = run(cfg)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        command_mb = _own_peak_mb() if kind != "kit-tasks" else max(_own_peak_mb(), _children_peak_mb())
        if kind == "kit-tasks" and threads > 1:  # the tasks ran in datatrove's pool processes, not children of this one
            cpu += report.cpu_seconds
        flat, lens = _shards_ids([shard.prefix for shard in report.shards])
        return {"seconds": seconds, "cpu": cpu, "docs": len(lens), "tokens": int(lens.sum()), "digest": _digest(flat, lens), "note": report.backend_note,
                "command_mb": command_mb}
    if kind in ("kit-cli", "kit-1doc"):  # whole commands: timed from outside, peak RSS their own
        source = corpus
        if kind == "kit-1doc":
            source = work / "one-doc"
            shutil.rmtree(source, ignore_errors=True)
            source.mkdir()
            first = sorted(corpus.glob("*.jsonl"))[0]
            with open(first, "rb") as src:
                (source / first.name).write_bytes(src.readline())
        out = work / "kit-out"
        cmd = [sys.executable, "-m", "experiment.cli", "data", "tokenize", str(source), "-o", str(out), "-t", str(tokenizer),
               "--cache-dir", str(work / "cache"), "--threads", str(threads), "--no-progress", "--json"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])))
        t0, c0 = time.perf_counter(), _cpu()
        proc, command_mb = _run(cmd, env)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        if proc.returncode:
            return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        result = json.loads(proc.stdout)
        flat, lens = _shards_ids([out / row["shard"] for row in result["rows"]])
        return {"seconds": seconds, "cpu": cpu, "docs": len(lens), "tokens": int(lens.sum()), "digest": _digest(flat, lens),
                "note": result["backend"], "wall_reported": result["wall_seconds"], "command_mb": command_mb}
    if kind == "gigatoken-cli":
        out = work / "kit-out"
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--raw-cli", str(corpus), str(tok_json), str(out / "ids.bin")]
        t0, c0 = time.perf_counter(), _cpu()
        proc, command_mb = _run(cmd)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        if proc.returncode:
            return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        lens = np.fromfile(out / "ids.bin.lens", dtype=np.int64)
        flat = np.fromfile(out / "ids.bin", dtype=np.uint16).astype(np.uint32)
        keep = lens > 0
        return {"seconds": seconds, "cpu": cpu, "docs": int(keep.sum()), "tokens": int(lens.sum()), "digest": _digest(flat, lens[keep]),
                "command_mb": command_mb}
    if kind == "gigatoken-files":
        import awkward as ak
        import gigatoken

        config = json.loads(tok_json.read_text())
        config["added_tokens"] = [t for t in config["added_tokens"] if not t.get("special")]
        g = gigatoken.Tokenizer.from_json(json.dumps(config))
        files = sorted(str(p) for p in corpus.glob("*.jsonl"))
        g.encode_batch(["warm the thread pool"] * 100)  # as the encode_batch row: the pool started outside the timing
        t0, c0 = time.perf_counter(), _cpu()
        out = g.encode_files(gigatoken.JsonlFileSource(files, field="text"))
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        command_mb = _own_peak_mb()
        layout = ak.to_layout(out)
        offsets = np.asarray(layout.offsets.data)
        lens = np.diff(offsets)
        flat = np.asarray(layout.content.data)[offsets[0] : offsets[-1]]
        keep = lens > 0  # the kit drops empty texts, as the in-memory rows do
        return {"seconds": seconds, "cpu": cpu, "docs": int(keep.sum()), "tokens": int(lens.sum()), "digest": _digest(flat, lens[keep]),
                "command_mb": command_mb}
    if kind == "preprocess_data":
        inp = work / "all.jsonl"
        if not inp.exists():
            with open(inp, "wb") as fh:
                for p in sorted(corpus.glob("*.jsonl")):
                    fh.write(p.read_bytes())
        cmd = [sys.executable, f"{megatron}/tools/preprocess_data.py", "--input", str(inp), "--output-prefix", str(work / "mlm"),
               "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(tokenizer), "--append-eod",
               "--workers", str(threads), "--json-keys", "text"]
        env = dict(os.environ, PYTHONPATH=f"{megatron}:{os.environ.get('PYTHONPATH', '')}")
        t0, c0 = time.perf_counter(), _cpu()
        proc, command_mb = _run(cmd, env)  # the largest process of the command (its workers are processes)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        if proc.returncode:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        ds = IndexedDataset(str(work / "mlm_text_document"))
        rows = [ds[i].tolist()[:-1] for i in range(len(ds))]
        return {"seconds": seconds, "cpu": cpu, "docs": len(rows), "tokens": sum(map(len, rows)), "digest": _rows_digest(rows),
                "command_mb": command_mb}
    texts = _texts(corpus)
    if kind == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
        t0, c0 = time.perf_counter(), _cpu()
        rows = sp.encode(texts, num_threads=threads)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    elif kind == "tokenizers":
        from tokenizers import Tokenizer

        tk = Tokenizer.from_file(str(tok_json))
        tk.encode_special_tokens = True
        t0, c0 = time.perf_counter(), _cpu()
        encodings = tk.encode_batch(texts, add_special_tokens=False)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        rows = [e.ids for e in encodings]
    elif kind == "gigatoken":
        import awkward as ak
        import gigatoken

        config = json.loads(tok_json.read_text())
        config["added_tokens"] = [t for t in config["added_tokens"] if not t.get("special")]
        g = gigatoken.Tokenizer.from_json(json.dumps(config))
        g.encode_batch(texts[:100])  # start the thread pool outside the timing
        t0, c0 = time.perf_counter(), _cpu()
        out = g.encode_batch(texts)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        command_mb = _own_peak_mb()
        layout = ak.to_layout(out)
        offsets = np.asarray(layout.offsets.data)
        lens = np.diff(offsets)
        return {"seconds": seconds, "cpu": cpu, "docs": len(lens), "tokens": int(lens.sum()), "digest": _digest(np.asarray(layout.content.data)[: offsets[-1]], lens),
                "command_mb": command_mb}
    else:
        raise SystemExit(f"unknown kind {kind}")
    return {"seconds": seconds, "cpu": cpu, "docs": len(rows), "tokens": sum(map(len, rows)), "digest": _rows_digest(rows),
            "command_mb": _own_peak_mb()}


def raw_cli(corpus: Path, tok_json: Path, out: Path) -> None:
    """gigatoken as the smallest whole command: load, encode_files, write the ids (uint16) and lengths."""
    import awkward as ak
    import gigatoken

    config = json.loads(tok_json.read_text())
    config["added_tokens"] = [t for t in config["added_tokens"] if not t.get("special")]
    g = gigatoken.Tokenizer.from_json(json.dumps(config))
    layout = ak.to_layout(g.encode_files(gigatoken.JsonlFileSource(sorted(str(p) for p in corpus.glob("*.jsonl")), field="text")))
    offsets = np.asarray(layout.offsets.data, dtype=np.int64)
    for path, array in ((out, np.asarray(layout.content.data)[offsets[0] : offsets[-1]].astype(np.uint16)), (Path(f"{out}.lens"), np.diff(offsets))):
        with open(path, "wb") as fh:
            array.tofile(fh)
            fh.flush()
            os.fsync(fh.fileno())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size built by `experiment demo corpus`")
    ap.add_argument("--fill-mb", type=float, default=None,
                    help="copy the --mb sample's shards whole until the corpus holds at least this many MB (see above)")
    ap.add_argument("--corpus", type=Path, default=None, help="folder of JSONL shards (default: build one)")
    ap.add_argument("--save", type=Path, default=None, help="write every round of every row, with date, commit and load, as JSON")
    ap.add_argument("--tokenizer", type=Path, default=None, help="SentencePiece .model (default: mistral-common's)")
    ap.add_argument("--megatron-lm", default=None, help="a Megatron-LM checkout, to time tools/preprocess_data.py")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=5, help="alternating rounds of the kit and gigatoken rows (median and best-of)")
    ap.add_argument("--rows", default=None, help="comma-separated subset of rows, e.g. kit,gigatoken")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    ap.add_argument("--raw-cli", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_cli:
        raw_cli(*args.raw_cli)
        return
    if args.child:
        kind, corpus, tok, tok_json, work, threads, megatron = args.child
        result = child(kind, Path(corpus), Path(tok), Path(tok_json), Path(work), int(threads), megatron if megatron != "-" else None)
        usage = resource.getrusage(resource.RUSAGE_SELF)  # kit-tasks: the largest of the process and its tasks
        result["peak_mb"] = max(usage.ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        print("RESULT " + json.dumps(result))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    started, load_start = time.time(), os.getloadavg()
    commit = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # at the start: others may commit during a run
    tokenizer = args.tokenizer
    if tokenizer is None:
        import mistral_common

        tokenizer = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    corpus = args.corpus
    if corpus is None:
        corpus = Path(tempfile.gettempdir()) / f"midtrain-bench-corpus-{args.mb:g}mb"
        if not any(corpus.glob("*.jsonl")):
            from experiment.demo.corpus import build_sample

            build_sample(corpus, mb=args.mb, console=console)
    copies = 1
    if args.fill_mb:
        sample = corpus
        corpus = sample.parent / f"{sample.name}-filled-{args.fill_mb:g}mb"
        copies = fill_corpus(sample, corpus, args.fill_mb)
    size = sum(p.stat().st_size for p in corpus.glob("*.jsonl"))
    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    from gigatoken._load.sentencepiece import sentencepiece_to_tokenizer_json

    tok_json = work / "tokenizer.json"
    tok_json.write_text(sentencepiece_to_tokenizer_json(tokenizer.read_bytes()))
    # The kit keeps its gigatoken conversion of a .model in a cache (~/.cache/midtrain-kit for the CLI), so
    # only a user's very first run pays it (~0.7 CPU-s); fill the bench's cache now, as the raw row's
    # conversion above is also outside its timing.
    from experiment.data.gigatoken_encoder import _gigatoken_json
    from experiment.data.tokenizer_spec import resolve_tokenizer

    _gigatoken_json(resolve_tokenizer(tokenizer), work / "cache")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="true")
    kinds = ["sentencepiece", "kit", "kit-warm", "kit-blocks", "kit-tasks", "kit-cli", "kit-1doc", "tokenizers", "gigatoken",
             "gigatoken-files", "gigatoken-cli"] + (["preprocess_data"] if args.megatron_lm else [])
    if args.rows:
        kinds = [k for k in kinds if k in args.rows.split(",")]
    results: dict[str, dict] = {}
    rounds: dict[str, list[dict]] = {}  # every run of each row, in order (the paired rows once per round)
    # The kit and the fastest raw encoder are timed alternately, --repeat times each, best kept: on a
    # shared machine the load changes by the minute, and the ratio is only fair side by side.
    paired = ("kit", "kit-warm", "kit-blocks", "kit-tasks", "kit-cli", "gigatoken-files", "gigatoken-cli", "kit-1doc", "gigatoken")
    schedule = [k for k in kinds if k not in paired] + [k for k in paired if k in kinds] * args.repeat
    for kind in schedule:
        shutil.rmtree(work / "kit-out", ignore_errors=True)
        cmd = [sys.executable, __file__, "--child", kind, str(corpus), str(tokenizer), str(tok_json), str(work), str(args.threads), args.megatron_lm or "-"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        res = json.loads(line[7:]) if line else {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
        rounds.setdefault(kind, []).append(res)
        best = results.get(kind)
        if best is None or res.get("seconds", float("inf")) < best.get("seconds", float("inf")):
            results[kind] = res
        console.print(f"{kind}: {res.get('seconds', res.get('error'))} s, {res.get('cpu', 0):.2f} CPU-s")
        sys.stdout.flush()
    ref_row = next((k for k in ("sentencepiece", "gigatoken", "gigatoken-files") if k in results), "gigatoken")  # identity vs the first present
    reference = results.get(ref_row, {}).get("digest")
    identical = {k: r.get("digest") == reference for k, r in results.items() if "digest" in r}
    raw = [k for k in ("sentencepiece", "tokenizers", "gigatoken", "gigatoken-files") if identical.get(k)]  # timed regions
    fastest = max(raw, key=lambda k: results[k]["tokens"] / results[k]["seconds"]) if raw else None
    anchor = results[fastest]["tokens"] / results[fastest]["seconds"] if fastest else None
    cpu_anchor = results[fastest]["tokens"] / results[fastest]["cpu"] if fastest else None
    made_of = f", {copies} copies of a {size / copies / 1e6:.0f} MB sample" if copies > 1 else ""
    table = Table(title=f"tokenize {size / 1e6:.0f} MB ({len(list(corpus.glob('*.jsonl')))} JSONL shards{made_of}), {args.threads} threads, "
                        f"{tokenizer.name}; best round of each row; ratios vs {fastest}")
    for col in ("row", "timed", "wall s", "docs/s", "Mtok/s", "CPU s", "Mtok/CPU-s", "peak MB", f"ids == {ref_row[:5]}", "ratio wall", "ratio CPU"):
        table.add_column(col, justify="left" if col in ("row", "timed") else "right")
    what = {"kit": "read+encode+write+count", "kit-warm": "same, tokenizer loaded first", "kit-blocks": "same, block reader (no whole files)",
            "kit-tasks": "same, one datatrove task per thread", "sentencepiece": "encode, in memory", "tokenizers": "encode_batch, in memory",
            "gigatoken": "encode_batch, in memory", "preprocess_data": "whole command", "kit-cli": "whole command, as a user runs it",
            "kit-1doc": "whole command, 1 document", "gigatoken-files": "encode_files on the JSONL, timed region",
            "gigatoken-cli": "whole command: load, encode_files, write ids"}
    for kind in kinds:
        r = results[kind]
        if kind == "kit-1doc" and "error" not in r:
            times = sorted(x["seconds"] for x in rounds[kind] if "seconds" in x)
            table.add_row(kind, what[kind], f"{r['seconds']:.2f}", "-", "-", f"{r['cpu']:.2f}", "-", f"{r.get('command_mb') or r['peak_mb']:.0f}", "-",
                          f"median {times[len(times) // 2]:.2f} s", "")
            continue
        if "error" in r:
            table.add_row(kind, what[kind], "-", "-", "-", "-", "-", "-", "-", r["error"][:60], "")
            continue
        rate, cpu_rate = r["tokens"] / r["seconds"], r["tokens"] / max(r["cpu"], 1e-9)
        table.add_row(kind, what[kind], f"{r['seconds']:.2f}", f"{r['docs'] / r['seconds']:,.0f}", f"{rate / 1e6:.2f}",
                      f"{r['cpu']:.2f}", f"{cpu_rate / 1e6:.2f}", f"{r.get('command_mb') or r['peak_mb']:.0f}", "yes" if identical.get(kind) else "NO",
                      f"{rate / anchor:.2f}" if anchor else "-", f"{cpu_rate / cpu_anchor:.2f}" if cpu_anchor else "-")
    console.print(table)
    medians: dict[str, float] = {}
    for kind in kinds:
        runs = [x for x in rounds.get(kind, []) if "seconds" in x]
        if runs:
            wall, cpu_s = sorted(x["seconds"] for x in runs), sorted(x["cpu"] for x in runs)
            peaks = sorted(x.get("command_mb") or x["peak_mb"] for x in runs)
            medians[kind] = _median(wall)
            console.print(f"{kind}, {len(runs)} rounds: wall {_median(wall):.2f} s median ({wall[0]:.2f}-{wall[-1]:.2f}), "
                          f"CPU {_median(cpu_s):.2f} s ({cpu_s[0]:.2f}-{cpu_s[-1]:.2f}), peak {_median(peaks):.0f} MB "
                          f"({peaks[0]:.0f}-{peaks[-1]:.0f})")
    # Per round, each kit row against the gigatoken run right after it: on a VM whose speed drifts by
    # tens of percent within a minute, the spread of these side-by-side ratios is the honest figure.
    for kit_row, raw_row in (("kit", "gigatoken"), ("kit-warm", "gigatoken"), ("kit-blocks", "gigatoken"), ("kit-tasks", "gigatoken"),
                             ("kit-cli", "gigatoken-files"), ("kit-cli", "gigatoken-cli"), ("kit", "gigatoken-files")):
        pairs = [(a["seconds"], b["seconds"], a["cpu"], b["cpu"]) for a, b in zip(rounds.get(kit_row, []), rounds.get(raw_row, []))
                 if "seconds" in a and "seconds" in b]
        if pairs:
            wall = sorted(g / k for k, g, _, _ in pairs)
            cpu = sorted(gc / kc for _, _, kc, gc in pairs)
            best = min(k for k, _, _, _ in pairs), min(g for _, g, _, _ in pairs)
            console.print(f"{kit_row} / {raw_row}, per round ({len(pairs)}): wall ratio min {wall[0]:.2f} median "
                          f"{_median(wall):.2f} max {wall[-1]:.2f} (best-of {best[1]:.2f} / {best[0]:.2f} = {best[1] / best[0]:.2f}; "
                          f"medians {medians[raw_row]:.2f} / {medians[kit_row]:.2f} = {medians[raw_row] / medians[kit_row]:.2f}); "
                          f"CPU ratio min {cpu[0]:.2f} median {_median(cpu):.2f} max {cpu[-1]:.2f}")
    if "kit-1doc" in rounds:
        times = sorted(x["seconds"] for x in rounds["kit-1doc"] if "seconds" in x)
        if times:
            console.print(f"kit-1doc, whole command on one document ({len(times)} runs): median {times[len(times) // 2]:.2f} s, "
                          f"min {times[0]:.2f}, max {times[-1]:.2f} (goal <= 0.5 s)")
    if "kit" in results and "note" in results["kit"]:
        console.print(f"kit backend: {results['kit']['note']}")
    if args.save:
        record = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)), "commit": commit,
                  "load_average_start": load_start, "load_average_end": os.getloadavg(), "cpus": os.cpu_count(),
                  "threads": args.threads, "tokenizer": str(tokenizer), "corpus_bytes": size, "corpus_shards": len(list(corpus.glob("*.jsonl"))),
                  "copies_of_sample": copies, "ids_reference_row": ref_row,
                  "ids_identical": {k: v for k, v in identical.items() if k != "kit-1doc"},  # one document: nothing to compare
                  "rounds": rounds}
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(record, indent=1) + "\n")
        console.print(f"record: {args.save}")
    shutil.rmtree(work, ignore_errors=True)  # the rows' outputs (a 1 GB corpus leaves ~0.7 GB of shards)


if __name__ == "__main__":
    main()
