"""Plain JSONL inputs encoded whole by gigatoken's own Rust reader, each line checked by us as well.

Why: gigatoken reads JSONL in Rust while it encodes (``encode_files``), which costs less than parsing the
JSON with pyarrow and handing blocks of texts over (bench/tokenize.py, 100 MB, 2 threads: 3.5-4.2 against
4.5-5.1 CPU-s end to end). But its reader is lenient: it silently skips lines it cannot read and takes
the text out of lines that are not JSON (``{"text": "a"} junk``, ``{"text": "a", }``), where the kit
promises an error naming the file and line. So a background thread checks every line while gigatoken
encodes: simdjson validates it (structure, UTF-8, escapes) without building Python objects, and it must
be an object with the text key exactly once; a line that fails is handed to the strict reader
(``sources.iter_documents``), whose error is raised. That the text is a string is proven by the count:
gigatoken skips a line whose text is not one, so its documents per group must equal the checked lines.
A file in doubt (a BOM, a line only the strict reader calls blank) or a group whose count disagrees
goes to the block reader, which keeps its old behaviour exactly.

Inputs are encoded in groups of whole files (``group_bytes`` of text at most); the group after the one
being written is encoded meanwhile, no further; each output is one counted shard per input, as before.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from experiment.data import sources
from experiment.data.encoders import SpotSample
from experiment.data.errors import DataError

_BOM = b"\xef\xbb\xbf"


@dataclass
class FileCheck:
    """What the line check learnt about one input."""

    path: Path
    docs: int = 0  # non-blank lines = documents, empty texts included (gigatoken encodes them to no ids)
    empty: list[int] = field(default_factory=list)  # indices of documents whose text is "" (see split_group)
    leading: list[str] = field(default_factory=list)  # the first non-empty texts, for the spot check
    fallback: str | None = None  # why this file goes to the block reader instead


def eligible(path: Path, max_bytes: int) -> bool:
    """Plain ``.jsonl`` no larger than ``max_bytes`` (its ids are held in memory whole). Compressed JSONL
    keeps the block reader: gigatoken and the check would each decompress it, and measured on the bench
    corpus (zstd, gzip) that was no faster than pyarrow's single pass."""
    return sources.format_of(path) == "jsonl" and 0 < path.stat().st_size <= max_bytes


def check_file(path: Path, key: str) -> FileCheck:
    """Check every line of ``path`` as ``sources.iter_documents`` would; raise its DataError (file:line).

    simdjson validates each line (structure, UTF-8, escapes) without building Python objects; that the
    text is a string is left to the count (gigatoken skips a line whose text is not one)."""
    import simdjson

    parser = simdjson.Parser()
    obj_type = simdjson.Object
    check = FileCheck(path)
    sample = SpotSample()
    line_no = 0
    try:
        with sources.open_binary(path) as fh:
            for raw in fh:
                line_no += 1
                if line_no == 1 and raw.startswith(_BOM):
                    check.fallback = "starts with a byte-order mark"
                    return check
                if not raw.strip():
                    continue
                try:
                    record = parser.parse(raw)
                except (ValueError, UnicodeDecodeError):
                    return _strict_verdict(check, path, key, line_no)
                hits = list(record.keys()).count(key) if type(record) is obj_type else 0
                if hits != 1:
                    del record
                    if hits > 1:  # gigatoken would take the first, Python's json the last, pyarrow refuses
                        raise DataError(path, f"the key {key!r} appears twice in one object", "keep one text per line", line_no)
                    return _strict_verdict(check, path, key, line_no)  # not an object, or no such key
                if sample.wanted:
                    text = record[key]
                    if type(text) is str and text:
                        sample.offer(text)
                del record
                check.docs += 1
    except OSError:  # a file that cannot be read: the strict reader names it
        return _strict_verdict(check, path, key, line_no)
    if check.docs == 0:
        raise DataError(path, "the file holds no documents", "remove it from the inputs or re-create it")
    check.leading = sample.texts
    return check


def empty_documents(path: Path, key: str) -> list[int]:
    """Indices of the documents whose text is "" (asked only of a file where some document has no ids:
    an empty text is dropped, a text of blanks is kept with only its EOD, as the block reader does)."""
    import orjson

    found, doc = [], 0
    with sources.open_binary(path) as fh:
        for raw in fh:
            if raw.strip():
                if orjson.loads(raw)[key] == "":
                    found.append(doc)
                doc += 1
    return found


def _strict_verdict(check: FileCheck, path: Path, key: str, line_no: int) -> FileCheck:
    """A line our check refused: the strict reader names the problem, or (if it sees none, e.g. a line
    of non-ASCII blanks) the file goes to the block reader."""
    for _ in sources.iter_documents(path, key):  # raises the DataError with file:line
        pass
    check.fallback = f"line {line_no} is read differently by the strict reader"
    return check


class Checker:
    """``check_file`` for each path in order, in a background thread that runs ahead of the writer."""

    def __init__(self, paths: list[Path], key: str) -> None:
        self._results: dict[Path, queue.Queue] = {p: queue.Queue(maxsize=1) for p in paths}
        self._stop = threading.Event()

        def work():
            for path in paths:
                if self._stop.is_set():
                    return
                try:
                    result = check_file(path, key)
                except BaseException as err:  # raised in the writer, in input order
                    result = err
                self._results[path].put(result)

        self._thread = threading.Thread(target=work, daemon=True, name="jsonl-check")
        self._thread.start()

    def result(self, path: Path) -> FileCheck:
        result = self._results[path].get()
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._stop.set()


# Groups are sized from the encode rate so far, to take about this long: the bar moves once per group
# (gigatoken reports nothing from inside a call), and smaller groups would pay more per-call overhead.
GROUP_SECONDS = 0.9
FIRST_GROUP_BYTES = 8 << 20
MIN_GROUP_BYTES = 4 << 20  # on a slow (busy) machine smaller groups would add per-call overhead for little


def next_group(sizes: list[int], start: int, want: int) -> int:
    """The end of the group that starts at input ``start`` (``sizes``: every input's bytes): whole files up
    to ``want`` bytes, at least one; the last input is a group of its own (only the last group's writing
    overlaps no encoding)."""
    last = len(sizes) - 1
    if start >= last:
        return start + 1
    end, size = start + 1, sizes[start]
    while end < last and size + (n := sizes[end]) <= want:
        size += n
        end += 1
    return end


class GroupEncoder:
    """``encode(group)`` of consecutive groups of ``paths``, in a background thread one group ahead. Groups
    hold at most ``group_bytes``, and are sized to take ``GROUP_SECONDS`` at the rate measured so far. It
    starts before the reference tokenizer and the probe are loaded; its ids are used only if the backend
    (``backend``) passes the probe."""

    def __init__(self, encode, paths: list[Path], group_bytes: int, backend: str = "") -> None:
        self.backend = backend
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._slots = threading.Semaphore(2)  # the group being written and the one being encoded
        sizes = [p.stat().st_size for p in paths]

        def work():
            start, want = 0, min(group_bytes, FIRST_GROUP_BYTES)
            while start < len(paths):
                while not self._slots.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                end = next_group(sizes, start, want)
                group = paths[start:end]
                began = time.perf_counter()
                try:
                    item = encode(group)
                except Exception as err:  # the block reader then names the problem
                    item = err
                seconds = time.perf_counter() - began
                self._queue.put((group, item, seconds))
                if seconds > 0:
                    nbytes = sum(sizes[start:end])
                    want = max(MIN_GROUP_BYTES, min(group_bytes, int(nbytes / seconds * GROUP_SECONDS)))
                start = end
            self._queue.put(None)

        self._thread = threading.Thread(target=work, daemon=True, name="jsonl-encode")
        self._thread.start()

    def next_group(self) -> tuple[list[Path], tuple[np.ndarray, np.ndarray] | Exception, float] | None:
        """The next group, its (flat, offsets) or the error, and the seconds its encoding took; None at the end."""
        return self._queue.get()

    def written(self) -> None:
        """The caller is done with a group: the next one may start encoding."""
        self._slots.release()

    def close(self, wait: bool = True) -> None:
        """Stop after the group being encoded (``wait``: until then)."""
        self._stop.set()
        if wait:
            self._thread.join()


def split_group(checks: list[FileCheck], flat: np.ndarray, offsets: np.ndarray, key: str):
    """Each file's (flat, offsets) out of a group's, empty texts dropped (``check.empty`` filled in);
    None if the counts disagree."""
    if sum(c.docs for c in checks) != len(offsets) - 1:
        return None
    out = []
    start = 0
    for check in checks:
        rows = offsets[start : start + check.docs + 1]
        start += check.docs
        if not np.all(rows[1:] > rows[:-1]):  # a document without ids: its text may be "" (dropped)
            check.empty = empty_documents(check.path, key)
            if check.empty:
                empty = np.asarray(check.empty, dtype=np.int64)
                rows = np.delete(rows, empty + 1)
        out.append((flat[rows[0] : rows[-1]], rows - rows[0]))
    return out
