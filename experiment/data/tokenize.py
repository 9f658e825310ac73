"""``experiment data tokenize``: raw text shards -> counted Megatron shards, one per input.

Parallelism lives in the native libraries, so outputs are ordered and deterministic by construction:
pyarrow parses JSON/Parquet on all cores, the encoder (gigatoken, or the tokenizer's own library)
encodes each block of documents on all cores, and numpy appends EOD and writes. Each output is
written under a hidden temporary name and renamed to its counted name
(``{lang}_{domain}_{sub}_split_{id}_text_document_dc=_sc=_tc=``) when done; re-running skips inputs
whose output exists, and removes leftovers of a killed run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from experiment.atomic import write_atomic
from experiment.data import encoders, naming, shards, sources, whole_files
from experiment.data.encoders import LoadedEncoder, differing_ids, load_encoder, resolve_tokenizer
from experiment.data.errors import DataError
from experiment.data.signature import TokenizerInfo
from experiment.summary import Summary, command_seconds

TOKENIZER_INFO = "tokenizer_info.json"


@dataclass(frozen=True)
class TokenizeConfig:
    """One validated tokenize job (built by the CLI)."""

    inputs: list[Path]
    output: Path
    tokenizer: Path
    text_key: str = "text"
    backend: str = "auto"  # auto | gigatoken | reference
    language: str | None = None
    domain: str | None = None
    subdomain: str | None = None
    eod_token: str | None = None
    block_bytes: int = 32 << 20
    reserve_bytes: int = 0
    spot_check: bool = True
    progress: bool = True
    cache_dir: Path | None = None  # where the tokenizer.json converted for gigatoken is kept (None: not kept)
    whole_files: bool = True  # plain .jsonl read and encoded whole by gigatoken (``whole_files``), else by block
    whole_file_bytes: int = 512 << 20  # larger .jsonl files are read by block (their ids are held whole)
    group_bytes: int = 128 << 20  # whole files encoded together, at most this much text per call
    threads: int | None = None  # encoder/parser threads (None: all cores; see ``apply_threads``)
    share: tuple[Path, ...] | None = None  # only these inputs (one datatrove task's); names count over all inputs
    # auto: below this much input the reference encodes: loading a fast backend, importing awkward and the
    # probe cost ~0.25 s, more than the reference takes for it (a 1-document run: 0.62 -> 0.37 s wall).
    small_input_bytes: int = 256 << 10


@dataclass
class ShardResult:
    input: Path
    prefix: Path
    docs: int
    sentences: int
    tokens: int
    input_bytes: int
    seconds: float
    skipped: bool = False
    empty_docs: int = 0


@dataclass
class TokenizeReport:
    backend_note: str
    shards: list[ShardResult] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # user + system of this process (all its threads) during the run; tasks: summed


def output_name(path: Path, index: int, cfg: TokenizeConfig) -> naming.ShardName:
    """The uncounted shard name of an input: from its file name, or from --language/--domain."""
    stem = sources.stem_of(path)
    if cfg.language is None and cfg.domain is None and cfg.subdomain is None:
        candidate = stem if stem.endswith("_text_document") else f"{stem}_text_document"
        try:
            name = naming.parse(candidate)
        except naming.ShardNameError:
            raise DataError(
                path, "cannot read language/domain from the file name",
                "name inputs {lang}_{domain}_{subdomain}_split_{id}.jsonl or pass --language and --domain",
            ) from None
        return naming.make(name.language, name.domain, name.subdomain, name.split)
    if not (cfg.language and cfg.domain):
        raise DataError(path, "--language and --domain must be given together", "pass both (and optionally --subdomain)")
    sub = cfg.subdomain or "".join(c if c.isalnum() or c in ".-" else "-" for c in stem)
    try:
        return naming.make(cfg.language, cfg.domain, sub, f"{index:04d}")
    except naming.ShardNameError as err:
        raise DataError(path, str(err), "pass valid --language/--domain/--subdomain") from None


class OutputIndex:
    """The output folder, listed once at the start of a run: each stem's finished prefix (.bin and .idx
    both there) and its leftovers (temporary files, a .bin renamed before its .idx). A glob per input made
    a run over many shards quadratic (3,000 one-line inputs: 30 s to find every one already done).
    What another run finishes after the listing is redone here; its bytes are the same, so the rename
    replaces it harmlessly."""

    def __init__(self, output: Path) -> None:
        self._finished: dict[str, Path] = {}
        self._leftovers: dict[str, list[Path]] = {}
        try:
            names = sorted(os.listdir(output))
        except (FileNotFoundError, NotADirectoryError):
            return
        present = set(names)
        for entry in names:
            if entry.startswith(".") and ".tmp-" in entry:
                self._leftovers.setdefault(entry[1:].rsplit(".tmp-", 1)[0], []).append(output / entry)
                continue
            if not entry.endswith((".bin", ".idx")):
                continue
            try:
                name = naming.parse(entry)
            except naming.ShardNameError:
                continue
            base = entry[:-4]
            if not name.counted:
                continue
            if entry.endswith(".idx"):
                if base + ".bin" in present:
                    self._finished.setdefault(name.stem, output / base)
            elif base + ".idx" not in present:  # a .bin renamed before its .idx
                self._leftovers.setdefault(name.stem, []).append(output / entry)

    def finished(self, stem: str) -> Path | None:
        """The counted prefix of a finished output for ``stem``, if any."""
        return self._finished.get(stem)

    def clean(self, stem: str) -> None:
        """Remove what a killed run left of ``stem``."""
        for path in self._leftovers.pop(stem, []):
            path.unlink(missing_ok=True)

    def add(self, stem: str, prefix: Path) -> None:
        self._finished[stem] = prefix


def tokenizer_info(loaded: LoadedEncoder) -> TokenizerInfo:
    spec = loaded.spec
    return TokenizerInfo(
        kind=spec.kind, name=spec.name, sha256=spec.sha256(), vocab_size=loaded.reference.vocab_size, eod_id=loaded.reference.eod_id
    )


def _claim_output(output: Path, info: TokenizerInfo) -> None:
    """Record the tokenizer of this folder; refuse to mix shards of two tokenizers in one folder."""
    path = output / TOKENIZER_INFO
    if path.is_file():
        old = TokenizerInfo.model_validate_json(path.read_text())
        if old.sha256 != info.sha256 or old.eod_id != info.eod_id:
            raise DataError(
                path, f"this folder holds shards of another tokenizer ({old.name}, {old.sha256[:12]})",
                "choose an empty --output folder for this tokenizer",
            )
        return
    write_atomic(path, json.dumps(info.model_dump(), indent=1, sort_keys=True) + "\n")  # tasks may claim at once


def _estimated_output_bytes(path: Path, itemsize: int) -> int:
    size = path.stat().st_size
    fmt = sources.format_of(path)
    raw = size * 4 if fmt in ("jsonl.gz", "jsonl.zst", "parquet") else size
    return raw * itemsize // 2  # text is >= 2 bytes per token in practice


class _Prefetch:
    """Iterate ``blocks`` in a background thread, one item ahead (pyarrow parses with the GIL released
    while the current block is encoded and written). The thread starts at once; ``close`` stops it."""

    def __init__(self, blocks) -> None:
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._done = object()
        self._thread = threading.Thread(target=self._produce, args=(blocks,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, blocks) -> None:
        try:
            for block in blocks:
                if not self._put(block):
                    return
            self._put(self._done)
        except BaseException as err:  # handed to the consumer, raised there with its file:line
            self._put(err)

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is self._done:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _drop_empty(texts):
    """The Arrow string array without its empty texts, and how many were dropped (read off the offsets,
    without loading pyarrow.compute)."""
    if not len(texts):
        return texts, 0
    keep = np.diff(encoders.arrow_offsets(texts)) > 0
    n_empty = len(texts) - int(np.count_nonzero(keep))
    if not n_empty:
        return texts, 0
    import pyarrow as pa

    return texts.filter(pa.array(keep)), n_empty


def _leading(texts, most: int = 256) -> list[str]:
    """The spot-check sample (``encoders.SpotSample``) of a block's leading, non-empty texts."""
    sample = encoders.SpotSample()
    for text in texts.slice(0, most).to_pylist():
        if not sample.offer(text):
            break
    return sample.texts


_END = object()


class _Reader:
    """The text blocks of several inputs, parsed in order by one background thread that runs one block
    ahead across file boundaries: the next input is parsed while the current one's last block is
    encoded and written (most inputs are a single block, which a per-file reader could not overlap)."""

    def __init__(self, paths: list[Path], cfg: TokenizeConfig) -> None:
        self.paths = set(paths)

        def produce():
            for path in paths:
                for block in sources.read_batches(path, cfg.text_key, cfg.block_bytes):
                    yield path, block
                yield path, _END

        self._stream = _Prefetch(produce())

    def blocks(self, path: Path):
        """The blocks of ``path``, which must be the next input in the reader's order."""
        while True:
            owner, block = next(self._stream)
            if owner != path:
                raise RuntimeError(f"reader out of order: {owner} read, {path} expected")
            if block is _END:
                return
            yield block

    def close(self) -> None:
        self._stream.close()


def _encode_blocks(blocks, loaded: LoadedEncoder, sample_first: bool, on_bytes=None):
    """(flat ids, offsets, spot-check texts or None, empty docs dropped, text bytes not yet reported to
    ``on_bytes``) per block of texts; ``on_bytes`` hears of the text bytes as they are encoded."""
    for texts in blocks:
        texts, n_empty = _drop_empty(texts)
        sample = _leading(texts) if sample_first and len(texts) else None
        sample_first = sample_first and sample is None
        flat, offsets = loaded.encoder.encode(texts, progress=on_bytes)
        yield flat, offsets, sample, n_empty, 0 if on_bytes else texts.nbytes


def tokenize_file(
    path: Path, name: naming.ShardName, loaded: LoadedEncoder, cfg: TokenizeConfig, on_bytes=None, blocks=None,
    encoded=None, index: OutputIndex | None = None,
) -> ShardResult:
    """Tokenize one input into one counted shard in ``cfg.output`` (skipped if already there).

    ``blocks``: the input's text blocks from a shared ``_Reader`` (default: read here); ``encoded``: its
    ids already encoded (``whole_files``), as ``_encode_blocks`` yields them; ``index``: the run's listing
    of the output folder (default: list it now)."""
    stem = name.stem
    start = time.perf_counter()
    if index is None:
        index = OutputIndex(cfg.output)
    done = index.finished(stem)
    input_bytes = path.stat().st_size
    if done is not None:
        for _ in blocks or ():  # finished meanwhile by another run: keep a shared reader in step
            pass
        counted = naming.parse(done.name)
        if on_bytes:
            on_bytes(input_bytes)
        return ShardResult(path, done, counted.docs, counted.sentences, counted.tokens, input_bytes, 0.0, skipped=True)
    index.clean(stem)
    dtype = shards.optimal_dtype(loaded.reference.vocab_size)
    shards.check_space(cfg.output, _estimated_output_bytes(path, np.dtype(dtype).itemsize), cfg.reserve_bytes)
    tmp = cfg.output / f".{stem}.tmp-{os.getpid()}"
    writer = shards.ShardWriter(tmp, dtype, loaded.encoder.eod_id, cfg.reserve_bytes)
    empty = 0
    checked = not cfg.spot_check or loaded.encoder is loaded.reference
    try:
        if encoded is None:
            if blocks is None:  # not in the run's reader (its output was there when the run started, or a
                apply_threads(cfg.threads, arrow=True)  # whole file in doubt): parsed here, on --threads cores
                blocks = sources.read_batches(path, cfg.text_key, cfg.block_bytes)
            encoded = _encode_blocks(blocks, loaded, not checked, on_bytes)
        for flat, offsets, sample, n_empty, nbytes in encoded:
            empty += n_empty
            if sample and not checked:  # the ids about to be written, re-encoded by the reference
                bad = differing_ids(loaded.reference, sample, flat, offsets)
                if bad:
                    raise DataError(
                        path, f"{loaded.encoder.backend} ids differ from {loaded.reference.backend} on document {bad[0] + 1}",
                        "re-run with --backend reference (and report the text to gigatoken)",
                    )
                checked = True
            writer.append(flat, offsets)
            if on_bytes and nbytes:
                on_bytes(nbytes)
        counts = writer.finish()
    except BaseException:
        writer.discard()
        raise
    if counts.docs == 0:
        writer.discard()
        raise DataError(path, "every document is empty", "remove the file from the inputs")
    final = cfg.output / name.with_counts(counts.docs, counts.sentences, counts.tokens).format()
    shards.commit(tmp, final)
    index.add(stem, final)
    return ShardResult(path, final, counts.docs, counts.sentences, counts.tokens, input_bytes, time.perf_counter() - start, empty_docs=empty)


def _process_cpu() -> float:
    times = os.times()
    return times.user + times.system


def apply_threads(threads: int | None, arrow: bool = False) -> None:
    """Use ``threads`` cores in this process: gigatoken's rayon pool (read when the pool starts, i.e. before
    the first parallel encode of the process) and, with ``arrow`` (inputs pyarrow parses), pyarrow's;
    sentencepiece takes it per call. A run of plain JSONL files never imports pyarrow (0.2-0.3 s)."""
    if threads is None:
        return
    if threads < 1:
        raise DataError("--threads", f"must be at least 1, not {threads}", "pass --threads 1 or more")
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    if arrow:
        import pyarrow as pa

        pa.set_cpu_count(threads)


def input_names(cfg: TokenizeConfig) -> tuple[list[Path], list[naming.ShardName]]:
    """Every input (sorted) and its uncounted shard name; two inputs may not give one name."""
    inputs = sources.find_inputs(cfg.inputs)
    names = [output_name(p, i, cfg) for i, p in enumerate(inputs)]
    seen: dict[str, Path] = {}
    for path, name in zip(inputs, names):
        if name.stem in seen:
            raise DataError(path, f"gives the same shard name {name.stem} as {seen[name.stem]}", "rename one of the inputs")
        seen[name.stem] = path
    return inputs, names


def run(cfg: TokenizeConfig, console=None) -> TokenizeReport:
    """Tokenize every input (sorted) into ``cfg.output``; a progress bar on ``console`` (stderr). The
    summary (``summary``) is the caller's to print. ``report.seconds`` is the command's wall time when run
    as a command (``experiment.summary.start_command``), else this call's."""
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
    reader = _Reader(by_block, cfg)
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


def _run(cfg: TokenizeConfig, console, started: float, inputs: list[Path], names: list, spec, reader: _Reader,
         checker: whole_files.Checker | None, whole: list[Path], index: OutputIndex) -> TokenizeReport:
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
    for cls in encoders.fast_backends():
        if cfg.backend not in ("auto", cls.backend):
            continue
        reader = cls.early_file_reader(spec, cfg.cache_dir, cfg.text_key)
        if reader is not None:
            return whole_files.GroupEncoder(reader, whole, cfg.group_bytes, backend=cls.backend)
        return None  # auto would try this backend first: its ids are the ones to start on
    return None


def _run_loaded(cfg: TokenizeConfig, console, started: float, inputs: list[Path], names: list, loaded: LoadedEncoder,
                reader: _Reader, checker, group_encoder, index: OutputIndex) -> TokenizeReport:
    try:
        cfg.output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(cfg.output, f"cannot create the output folder ({err.strerror})", "choose a writable --output folder") from None
    if not os.access(cfg.output, os.W_OK):
        raise DataError(cfg.output, "the output folder is not writable", "choose a writable --output folder")
    _claim_output(cfg.output, tokenizer_info(loaded))
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
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    )


def summary(report: TokenizeReport) -> Summary:
    """Per shard its tokens and share of the run's tokens (shards are encoded together: a per-shard rate
    would be false); the rate is over the command's wall time."""
    from experiment.summary import Column, Summary, count, fixed, percent

    tokens = sum(s.tokens for s in report.shards)
    new_tokens = sum(s.tokens for s in report.shards if not s.skipped)
    rate = new_tokens / report.seconds if report.seconds > 0 and new_tokens else None
    out = Summary(
        f"tokenized with {report.backend_note}",
        [Column("shard"), Column("docs", count, True), Column("tokens", count, True), Column("share", percent, True),
         Column("MB in", fixed(1), True), Column("status")],
        extra={"backend": report.backend_note, "wall_seconds": round(report.seconds, 3),
               "cpu_seconds": round(report.cpu_seconds, 3), "new_tokens": new_tokens,
               "tokens_per_second": round(rate) if rate else None},
        caption=f"{new_tokens:,} new tokens in {report.seconds:.2f} s wall"
                + (f" = {_rate_text(rate)}" if rate else "") + f", {report.cpu_seconds:.2f} CPU-s",
    )
    for s in report.shards:
        status = "skipped (done)" if s.skipped else ("ok" if not s.empty_docs else f"ok, {s.empty_docs} empty docs dropped")
        out.add(s.prefix.name, s.docs, s.tokens, 100 * s.tokens / tokens if tokens else 0.0, s.input_bytes / 1e6, status)
    out.total = ["total", sum(s.docs for s in report.shards), tokens, 100.0 if tokens else 0.0,
                 sum(s.input_bytes for s in report.shards) / 1e6, f"{report.seconds:.2f} s wall"]
    return out


def _rate_text(rate: float) -> str:
    return f"{rate / 1e6:.2f} M tokens/s" if rate >= 1e5 else f"{rate:,.0f} tokens/s"
