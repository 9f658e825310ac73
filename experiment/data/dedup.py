"""``experiment data dedup``: MinHash near-duplicate removal with datatrove's minhash pipeline.

Why datatrove: it is maintained, streams shards, and the same four steps (signatures -> buckets ->
clusters -> filter) run on Slurm with ``SlurmPipelineExecutor`` when a corpus outgrows one machine;
here they run with ``LocalPipelineExecutor`` on all cores.

Matching seed 004 (text-dedup ``--num_perm 64 --threshold 0.85``): datatrove has no threshold knob;
its LSH uses ``num_buckets`` bands of ``hashes_per_bucket`` rows. ``lsh_bands`` picks the (bands,
rows) with bands*rows <= num_perm that minimises the equally weighted false-positive and
false-negative areas of the S-curve around the threshold -- the same rule text-dedup uses -- giving
(bands=4, rows=15) for 64/0.85; hashes are SHA-1 based as in text-dedup. Shingles are 5-grams of words as in text-dedup, after datatrove's
normalisation (lower case, punctuation and digits normalised). Words come from ``MixedScriptWords``:
runs of letters/digits, and each CJK/kana/hangul character on its own, so Japanese text shingles
too (datatrove's default English tokenizer needs spaCy, and text-dedup's ASCII regex drops CJK).
Like text-dedup, candidates are not verified by exact Jaccard. One document of each cluster is kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from experiment.data import sources
from experiment.data.errors import DataError

_WORDS = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]|[^\W_]+", re.UNICODE)


def lsh_bands(num_perm: int = 64, threshold: float = 0.85, steps: int = 200) -> tuple[int, int]:
    """(bands, rows) minimising 0.5 * false positives + 0.5 * false negatives for a Jaccard threshold."""

    def area(f, lo, hi):
        width = (hi - lo) / steps
        return sum(f(lo + (i + 0.5) * width) for i in range(steps)) * width

    best, best_err = (1, 1), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            def p(s, b=bands, r=rows):
                return 1 - (1 - s**r) ** b

            err = 0.5 * area(p, 0.0, threshold) + 0.5 * area(lambda s: 1 - p(s), threshold, 1.0)
            if err < best_err:
                best, best_err = (bands, rows), err
    return best


def _word_tokenizer():
    from datatrove.utils.word_tokenizers import WordTokenizer

    class MixedScriptWords(WordTokenizer):
        """Letters/digits runs as words; every CJK ideograph, kana or hangul syllable as one word."""

        def __init__(self) -> None:
            super().__init__("mul")

        def word_tokenize(self, text: str) -> list[str]:
            return _WORDS.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [s for s in re.split(r"(?<=[.!?。！？])\s*", text) if s]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in _WORDS.finditer(text)]

    return MixedScriptWords()


@dataclass
class DedupReport:
    bands: int
    rows: int
    kept: int
    removed: int
    outputs: list[Path]


def _count_lines(paths) -> int:
    n = 0
    for p in paths:
        with sources.open_binary(p) as fh:
            n += sum(1 for line in fh if line.strip())
    return n


def dedup(input_dir: Path, output: Path, text_key: str = "text", num_perm: int = 64, threshold: float = 0.85,
          ngram: int = 5, workers: int | None = None, work_dir: Path | None = None) -> DedupReport:
    """Remove near-duplicates across all JSONL shards of ``input_dir``; same file names in ``output``."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    input_dir, output = Path(input_dir).resolve(), Path(output).resolve()
    if not input_dir.is_dir():
        raise DataError(input_dir, "dedup reads a folder of JSONL shards", "give the folder that holds the .jsonl files")
    files = [p for p in sources.find_inputs([input_dir]) if sources.format_of(p) == "jsonl"]
    if not files:
        raise DataError(input_dir, "no .jsonl shards in this folder", "decompress or merge the shards into plain .jsonl first")
    if output == input_dir:
        raise DataError(output, "the output folder is the input folder", "choose another --output folder")
    for f in files:  # fail early, with file:line, on bad input
        for _ in sources.iter_documents(f, text_key):
            pass
    bands, rows = lsh_bands(num_perm, threshold)
    config = MinhashConfig(n_grams=ngram, num_buckets=bands, hashes_per_bucket=rows, seed=42,
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))
    work = Path(work_dir) if work_dir else output.parent / f".{output.name}.dedup-work"
    shutil.rmtree(work, ignore_errors=True)
    build = output.parent / f".{output.name}.dedup-build"
    shutil.rmtree(build, ignore_errors=True)
    workers = workers or os.cpu_count() or 1
    names = [f.name for f in files]
    stems = [f.name.removesuffix(".jsonl") for f in files]

    def read_adapter(self, data: dict, path: str, id_in_file):
        return {"text": data.get(text_key, ""), "id": f"{path}/{id_in_file}",
                "metadata": {"_raw": data, "_stem": Path(path).name.removesuffix(".jsonl")}}

    def write_adapter(self, document) -> dict:
        return document.metadata["_raw"]

    def reader():
        return JsonlReader(str(input_dir), glob_pattern="*.jsonl", text_key=text_key, adapter=read_adapter, compression=None)

    tasks = len(files)
    # datatrove logs to ./logs/<timestamp> unless told otherwise: keep its logs with the stage's work files
    def common(stage: str) -> dict:
        return dict(logging_dir=str(work / "logs" / stage), skip_completed=False)

    LocalPipelineExecutor(
        [reader(), MinhashDedupSignature(str(work / "sigs"), config=config, language=_word_tokenizer())],
        tasks=tasks, workers=min(workers, tasks), **common("signatures")).run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
                          tasks=bands, workers=min(workers, bands), **common("buckets")).run()
    LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)],
                          tasks=1, **common("cluster")).run()
    LocalPipelineExecutor(
        [reader(), MinhashDedupFilter(str(work / "remove")),
         JsonlWriter(str(build), output_filename="${_stem}.jsonl", compression=None, adapter=write_adapter)],
        tasks=tasks, workers=min(workers, tasks), **common("filter")).run()
    output.mkdir(parents=True, exist_ok=True)
    outputs = []
    for name, stem in zip(names, stems):
        src = build / f"{stem}.jsonl"
        dst = output / name
        if src.exists():
            os.replace(src, dst)
            outputs.append(dst)
        else:  # every document of this shard was a duplicate
            dst.unlink(missing_ok=True)
    shutil.rmtree(build, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    before = _count_lines(files)
    kept = _count_lines(outputs)
    return DedupReport(bands, rows, kept, before - kept, outputs)


def dumps_report(report: DedupReport) -> str:
    return json.dumps({"bands": report.bands, "rows": report.rows, "kept": report.kept, "removed": report.removed})
