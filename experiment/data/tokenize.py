"""``experiment data tokenize``: raw text shards -> counted Megatron shards, one per input.

Parallelism lives in the native libraries, so outputs are ordered and deterministic by construction:
pyarrow parses JSON/Parquet on all cores, the encoder (gigatoken, or the tokenizer's own library)
encodes each block of documents on all cores, and numpy appends EOD and writes. ``run`` lists the
inputs, starts reading them while the tokenizer loads, and hands each to ``tokenize_input``, which
writes it under a hidden temporary name and renames it to its counted name when done; re-running
skips inputs whose output exists, and removes leftovers of a killed run.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from experiment.data import whole_files
from experiment.data.encoder_base import fast_backends
from experiment.data.encoders import LoadedEncoder, load_encoder
from experiment.data.errors import DataError
from experiment.data.tokenize_config import TokenizeConfig, apply_threads, input_names
from experiment.data.tokenize_input import BlockReader, tokenize_file
from experiment.data.tokenize_output import OutputIndex, claim_output, tokenizer_info
from experiment.data.tokenize_report import ShardResult, TokenizeReport
from experiment.data.tokenizer_spec import resolve_tokenizer
from experiment.summary import command_seconds


def _process_cpu() -> float:
    times = os.times()
    return times.user + times.system


def run(cfg: TokenizeConfig, console=None) -> TokenizeReport:
    """Tokenize every input (sorted) into ``cfg.output``; a progress bar on ``console`` (stderr). The
    summary (``tokenize_report.summary``) is the caller's to print. ``report.seconds`` is the command's wall
    time when run as a command (``experiment.summary.start_command``), else this call's."""
    started, cpu_started = time.monotonic(), _process_cpu()
    apply_threads(cfg.threads)  # --threads 0 refused before any work
    inputs, names = input_names(cfg)
    all_inputs = inputs
    if cfg.share is not None:  # a task's inputs: named as in the whole run (split ids), then kept
        share = set(cfg.share)
        inputs, names = [p for p in inputs if p in share], [n for p, n in zip(inputs, names) if p in share]
        if not inputs:
            return TokenizeReport("nothing to do", seconds=command_seconds(started))
    spec = resolve_tokenizer(cfg.tokenizer, cfg.eod_token)
    index = OutputIndex(cfg.output)
    pending = [p for p, n in zip(inputs, names) if index.finished(n.stem) is None]
    # what is left to encode (a re-run of a finished folder loads no fast backend); a datatrove task decides
    # on every input of the run, so all its tasks decide alike
    todo = pending if cfg.share is None else all_inputs
    small = cfg.backend == "auto" and sum(p.stat().st_size for p in todo) < cfg.small_input_bytes
    if small:
        cfg = replace(cfg, backend="reference")  # the same ids (the reference's) at a fraction of the start-up
    whole = [p for p in pending if cfg.whole_files and cfg.backend != "reference" and whole_files.eligible(p, cfg.whole_file_bytes)]
    # Reading starts now, in the background, while the tokenizer loads (reading inputs changes nothing):
    # the line check of whole-file inputs, the parse of the others.
    checker = whole_files.Checker(whole, cfg.text_key) if whole else None
    whole_set = set(whole)
    by_block = [p for p in pending if p not in whole_set]
    apply_threads(cfg.threads, arrow=bool(by_block))
    reader = BlockReader(by_block, cfg)
    try:
        report = _run(cfg, console, started, inputs, names, spec, reader, checker, whole, index)
        if small:
            report.backend_note = f"{report.backend_note.split()[0]} (the reference: under {cfg.small_input_bytes >> 10} KB of input)"
        report.cpu_seconds = _process_cpu() - cpu_started
        return report
    finally:
        reader.close()
        if checker is not None:
            checker.close()


def _run(cfg: TokenizeConfig, console, started: float, inputs: list[Path], names: list, spec,
         reader: BlockReader, checker: whole_files.Checker | None, whole: list[Path],
         index: OutputIndex) -> TokenizeReport:
    group_encoder = _start_whole_files(cfg, spec, whole)
    try:
        loaded = load_encoder(spec, cfg.backend, threads=cfg.threads, cache_dir=cfg.cache_dir)
        return _run_loaded(cfg, console, started, inputs, names, loaded, reader, checker, group_encoder, index)
    finally:
        if group_encoder is not None:
            group_encoder.close()


def _start_whole_files(cfg: TokenizeConfig, spec, whole: list[Path]):
    """The first fast backend that reads whole files (as ``auto`` or ``--backend`` would pick it) starts
    encoding the whole-file inputs now, while the reference loads and the probe runs."""
    if not whole:
        return None
    for cls in fast_backends():
        if cfg.backend not in ("auto", cls.backend):
            continue
        reader = cls.early_file_reader(spec, cfg.cache_dir, cfg.text_key)
        if reader is not None:
            return whole_files.GroupEncoder(reader, whole, cfg.group_bytes, backend=cls.backend)
        return None  # auto would try this backend first: its ids are the ones to start on
    return None


def _run_loaded(cfg: TokenizeConfig, console, started: float, inputs: list[Path], names: list, loaded: LoadedEncoder,
                reader: BlockReader, checker, group_encoder, index: OutputIndex) -> TokenizeReport:
    try:
        cfg.output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(cfg.output, f"cannot create the output folder ({err.strerror})", "choose a writable --output folder") from None
    if not os.access(cfg.output, os.W_OK):
        raise DataError(cfg.output, "the output folder is not writable", "choose a writable --output folder")
    claim_output(cfg.output, tokenizer_info(loaded))
    report = TokenizeReport(loaded.note)
    progress = progress_bar(console) if cfg.progress and console is not None else None
    total = sum(p.stat().st_size for p in inputs)
    name_of = dict(zip(inputs, names))
    results: dict[Path, ShardResult] = {}
    with progress or _Null():
        task = progress.add_task("tokenize", total=total) if progress else None

        def one(path: Path, **how) -> None:
            if progress:
                progress.update(task, description=f"{path.name[:40]}")
            before = [0]

            def advance(n: int, _b=before, _size=path.stat().st_size) -> None:  # text bytes, capped at the file's
                step = min(n, _size - _b[0])
                _b[0] += step
                if progress:
                    progress.advance(task, step)

            results[path] = tokenize_file(path, name_of[path], loaded, cfg, on_bytes=advance, index=index, **how)
            if progress:
                progress.advance(task, path.stat().st_size - before[0])

        if group_encoder is not None and loaded.encoder.backend == group_encoder.backend:
            _whole_file_groups(cfg.text_key, checker, group_encoder, one, results)
        elif checker is not None:  # the reference encoder runs: these inputs are read block by block below
            checker.close()
            if group_encoder is not None:
                group_encoder.close(wait=False)
        for path in inputs:
            if path not in results:
                one(path, blocks=reader.blocks(path) if path in reader.paths else None)  # None: read here
    report.shards = [results[p] for p in inputs]
    report.seconds = command_seconds(started)
    return report


def _whole_file_groups(key: str, checker, group_encoder, one, results) -> None:
    """Whole-file inputs: encoded by gigatoken in groups (one ahead), checked line by line, written per
    input. A group whose check or count is in doubt goes to the block reader, which names any problem."""
    while (item := group_encoder.next_group()) is not None:
        group, encoded, seconds = item
        checks: list = []
        error = None
        for path in group:
            try:
                checks.append(checker.result(path))
            except DataError as err:
                error = err
                break
        pieces = None
        if error is None and not isinstance(encoded, Exception) and not any(c.fallback for c in checks):
            pieces = whole_files.split_group(checks, *encoded, key)
        encoded = None  # the pieces are views; the group's arrays go when they do
        if pieces is None:
            for path in group[: len(checks)]:
                one(path)
        else:
            sizes = [p.stat().st_size for p in group]
            jobs = [(path, [(flat, offsets, check.leading, len(check.empty), size)])
                    for path, check, (flat, offsets), size in zip(group, checks, pieces, sizes)]
            _write_in_parallel(one, jobs)
            total = sum(sizes)
            for path, size in zip(group, sizes):
                results[path].seconds += seconds * size / total  # the group's encoding, shared by size
        group_encoder.written()
        if error is not None:
            raise error


def _write_in_parallel(one, jobs: list, threads: int = 2) -> None:
    """Write a group's shards two at a time (numpy's copies and fsync release the GIL): the last group's
    writing is the one stage nothing else overlaps. The first failure in input order is raised, after
    every other shard of the group is written."""
    from concurrent.futures import ThreadPoolExecutor

    if len(jobs) == 1:
        one(jobs[0][0], encoded=jobs[0][1])
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shard-write") as pool:
        futures = [pool.submit(one, path, encoded=encoded) for path, encoded in jobs]
    for future in futures:
        future.result()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def progress_bar(console):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    )
