"""experiment.ckpt.prefetch: a conversion's inputs are read into the page cache in a background thread,
within the budget, without copying what is cached already; the inputs listed are the ones the command
reads; nothing there can fail the command."""

from __future__ import annotations

import os
from pathlib import Path

from experiment.ckpt import prefetch

MB = 1 << 20


def _file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def _drop(path: Path) -> None:
    """Written, synced, then its clean pages dropped: the file as a cold input."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _resident(path: Path) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        pages = prefetch.cached_pages(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    assert pages is not None, "mincore must answer on Linux"
    return pages.count(1) / len(pages)


def _bytes_read() -> int:
    """This process's bytes passed through read syscalls (cached or not): /proc/self/io rchar."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _memory_backed(path: Path) -> bool:
    """tmpfs keeps its pages whatever is advised: there a cold file cannot be made."""
    _drop(path)
    return _resident(path) == 1.0


def test_cold_files_end_up_cached_in_order_within_the_budget(tmp_path):
    first, second = _file(tmp_path / "a.safetensors", 12 * MB + 5), _file(tmp_path / "b.safetensors", 24 * MB)
    if _memory_backed(first):
        before = _bytes_read()
        assert prefetch.read_ahead([first], budget=1 << 40) == first.stat().st_size
        assert _bytes_read() - before < 1 * MB  # everything cached already: nothing copied
        return
    _drop(second)
    assert _resident(first) < 0.1 and _resident(second) < 0.1

    covered = prefetch.read_ahead([first, second], budget=first.stat().st_size)

    assert covered == first.stat().st_size
    assert _resident(first) == 1.0
    assert _resident(second) < 0.1  # the budget ended before it: untouched


def test_cached_chunks_are_not_copied_again(tmp_path):
    path = _file(tmp_path / "warm.safetensors", 32 * MB)
    path.read_bytes()  # the whole file in the page cache
    assert _resident(path) == 1.0

    before = _bytes_read()
    covered = prefetch.read_ahead([path], budget=1 << 40)
    copied = _bytes_read() - before

    assert covered == 32 * MB
    assert copied < 1 * MB, f"{copied} bytes read although every page was cached"


def test_thread_reads_and_unreadable_or_empty_files_are_skipped(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.touch()
    data = _file(tmp_path / "z.safetensors", 3 * MB)
    thread = prefetch.start([tmp_path / "missing.safetensors", empty, tmp_path, data])
    assert thread is not None and thread.daemon
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert _resident(data) == 1.0
    assert prefetch.start([]) is None


def test_budget_defaults_to_a_share_of_available_memory():
    available = prefetch.available_bytes()
    assert 0 < available <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_inputs_are_the_files_the_import_reads(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    for name in ("model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors", "config.json"):
        (hf / name).write_text("x")
    assert [p.name for p in prefetch.import_inputs(hf)] == ["model-00001-of-00002.safetensors",
                                                           "model-00002-of-00002.safetensors"]
    gguf = _file(tmp_path / "m.gguf", 10)
    assert prefetch.import_inputs(gguf) == []  # its dequantized folder is what the import reads
    assert prefetch.import_inputs(tmp_path / "absent") == []

