"""Start reading ``ckpt import``'s input files while the command is still importing torch.

Why: ``experiment ckpt import`` spends ~2 s importing torch and megatron.core before it reads its
first byte. With the input cold (a model just copied from a cluster's shared filesystem, a node's first
job), the disk sat idle for those 2 s while the second core waited. A daemon thread now reads the input
files once, in the order the conversion reads them (sorted, as the sources list them), into one reused
buffer: the pages land in the page cache and the conversion finds them there. A chunk whose pages are
all cached already (``mincore``) is skipped, so a warm input costs no copy. Plain reads rather than
``POSIX_FADV_WILLNEED``: Linux caps each advice at the readahead window (8 MB here, 128 KB on many
disks), so advising a whole file reads only its first megabytes (measured with ``cached_pages``: the
2.47 GB bench model's 17 files advised whole, 3 s later 143 MB, 5.8%, were cached); reads work the
same on every filesystem. The read releases the GIL.

Bounded: reading stops after a quarter of the memory the kernel reports available, so a model larger
than the page cache does not evict its own first files before the conversion reads them. Nothing here
can fail a command: a file that cannot be read is skipped, and the command reports it itself.

Not used by ``ckpt export``: measured there (bench/prefetch.py, 2026-12-06, 2.47 GB, cold), the same
read-ahead of its one ``.distcp`` file helped with reads capped at 400 MB/s (9.75 -> 7.40 s) but cost
+0.9 to +1.4 s on this VM's fast disk (5.32 -> 6.22 s; 5.65 -> 7.05 s), every round; the export reads
the file's two ends first (embedding, output layer) through maps, and the cause was not found.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from pathlib import Path

SHARE_OF_AVAILABLE = 4  # read at most MemAvailable / 4 bytes
PAGE_BYTES = mmap.PAGESIZE
CHUNK_BYTES = 8 << 20  # one read: the kernel's own readahead keeps the disk busy behind it
NICENESS = 10  # Linux applies setpriority to one thread
_LOW_BIT = bytes(i & 1 for i in range(256))


def available_bytes() -> int:
    """The kernel's estimate of memory available without swapping (``MemAvailable``), else free pages."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def import_inputs(source: Path) -> list[Path]:
    """The weight files ``ckpt import SOURCE`` will read: a folder's safetensors. None for a ``.gguf``: its
    dequantized folder, once made, is reused without reading the file, and making it is CPU-bound."""
    return sorted(source.glob("*.safetensors")) if source.is_dir() else []


def read_ahead(files: list[Path], budget: int) -> int:
    """Read ``files`` in order, chunk by chunk, into one reused buffer until ``budget`` bytes; chunks
    already in the page cache are skipped without a copy. Returns the bytes covered."""
    try:  # below the command's own threads: the imports it overlaps come first where they compete
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
    except (OSError, AttributeError):
        pass
    buffer = memoryview(bytearray(CHUNK_BYTES))
    done = 0
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            resident = cached_pages(fd, size)
            for offset in range(0, size, CHUNK_BYTES):
                if done >= budget:
                    return done
                length = min(CHUNK_BYTES, size - offset, budget - done)
                first, last = offset // PAGE_BYTES, (offset + length - 1) // PAGE_BYTES
                if resident is None or resident.find(0, first, last + 1) >= 0:
                    os.preadv(fd, [buffer[:length]], offset)
                done += length
        except OSError:
            continue
        finally:
            os.close(fd)
    return done


def cached_pages(fd: int, size: int) -> bytes | None:
    """One byte per page of the file, 1 where the page is in the page cache (``mincore`` on a shared
    read-only map, which reads nothing); None where that cannot be asked."""
    if size == 0:
        return b""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        return None
    try:
        pages = (ctypes.c_ubyte * ((size + PAGE_BYTES - 1) // PAGE_BYTES))()
        if libc.mincore(address, size, pages) != 0:
            return None
        return bytes(pages).translate(_LOW_BIT)  # bit 0 is residency; the others are reserved
    finally:
        libc.munmap(address, size)


def start(files: list[Path], budget: int | None = None) -> threading.Thread | None:
    """Read ``files`` ahead in a daemon thread (None when there is nothing to read)."""
    if not files:
        return None
    limit = available_bytes() // SHARE_OF_AVAILABLE if budget is None else budget
    thread = threading.Thread(target=read_ahead, args=(files, limit), name="prefetch", daemon=True)
    thread.start()
    return thread
