"""experiment.ckpt.prefetch: a conversion's inputs are read into the page cache in a background thread,
within the budget, without copying what is cached already; the inputs listed are the ones the command
reads; nothing there can fail the command.

Residency is asked with this file's own ``mincore`` helper (not the module's ``cached_pages``), and every
file the prefetch is to read is made cold first: a file just written is wholly in the page cache, so a
check that it is cached after the prefetch would pass with no prefetch at all. Where the cache cannot be
dropped (tmpfs keeps its pages whatever is advised) the tests fail and say so: run them with a
disk-backed ``--basetemp``."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

from experiment.ckpt import prefetch

MB = 1 << 20


def _file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def _resident(path: Path) -> float:
    """Share of the file's pages in the page cache: ``mincore`` on a shared read-only map (reads nothing)."""
    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), f"mmap failed: {os.strerror(ctypes.get_errno())}"
    finally:
        os.close(fd)
    try:
        pages = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
        assert libc.mincore(address, size, pages) == 0, f"mincore failed: {os.strerror(ctypes.get_errno())}"
    finally:
        libc.munmap(address, size)
    return sum(b & 1 for b in pages) / len(pages)


def _cold(path: Path) -> Path:
    """Synced, then its clean pages dropped (``POSIX_FADV_DONTNEED``): the file as a cold input. Asserts
    the drop worked, so a test that then finds the file cached proves the prefetch read it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    share = _resident(path)
    assert share < 0.1, (f"{path}: {share:.0%} of its pages still cached after fsync + POSIX_FADV_DONTNEED "
                         "(tmpfs?): these tests need a disk-backed --basetemp")
    return path


def _bytes_read() -> int:
    """This process's bytes passed through read syscalls (cached or not): /proc/self/io rchar."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_dropped_file_reads_as_cold_and_a_read_one_as_cached(tmp_path):
    """The helpers themselves: without this, the residency checks below could pass for the wrong reason."""
    path = _cold(_file(tmp_path / "x.safetensors", 4 * MB))
    assert _resident(path) < 0.1
    path.read_bytes()
    assert _resident(path) == 1.0


def test_cold_files_end_up_cached_in_order_within_the_budget(tmp_path):
    first = _cold(_file(tmp_path / "a.safetensors", 12 * MB + 5))
    second = _cold(_file(tmp_path / "b.safetensors", 24 * MB))

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
    data = _cold(_file(tmp_path / "z.safetensors", 3 * MB))
    thread = prefetch.start([tmp_path / "missing.safetensors", empty, tmp_path, data])
    assert thread is not None and thread.daemon
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert _resident(data) == 1.0  # cold before the thread: only its reads can have cached it
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

