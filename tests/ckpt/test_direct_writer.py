"""experiment.ckpt.direct_writer: the conversions' output stream writes exactly the bytes it is given,
whatever the write sizes, through O_DIRECT or the page cache, and reports the writer thread's errors."""

from __future__ import annotations

import os
import random
import threading

import pytest

from experiment.ckpt import direct_writer
from experiment.ckpt.direct_writer import ALIGN, BUFFER_BYTES, DirectWriter


def _chunks(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [0, 1, 7, ALIGN - 1, ALIGN, ALIGN + 1, BUFFER_BYTES - 3, BUFFER_BYTES, 2 * BUFFER_BYTES + 5, 12345]
    return [rng.randbytes(n) for n in sizes]


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
def test_bytes_and_tell_match_what_was_written(tmp_path, direct):
    data = _chunks(1)
    path = tmp_path / "out.bin"
    with DirectWriter(path, direct=direct) as out:
        for i, chunk in enumerate(data):
            before = out.tell()
            assert out.write(memoryview(chunk)) == len(chunk)
            out.flush()  # torch's writer flushes after every item: must not break alignment
            assert out.tell() == before + len(chunk), i
    assert path.read_bytes() == b"".join(data)
    assert os.path.getsize(path) == sum(map(len, data))  # the last block's padding is cut


def test_buffers_are_reused_across_files(tmp_path):
    with DirectWriter(tmp_path / "a") as out:
        out.write(b"a" * (BUFFER_BYTES + 1))
    pooled = list(direct_writer._pool)
    assert len(pooled) >= direct_writer.BUFFERS
    with DirectWriter(tmp_path / "b") as out:
        out.write(b"b" * 3)
    assert set(map(id, direct_writer._pool)) == set(map(id, pooled))
    assert (tmp_path / "b").read_bytes() == b"bbb"


def test_a_failed_caller_stops_the_writer_and_keeps_its_error(tmp_path):
    threads = threading.active_count()
    with pytest.raises(RuntimeError, match="caller failed"):
        with DirectWriter(tmp_path / "partial") as out:
            out.write(b"x" * (BUFFER_BYTES + 10))
            raise RuntimeError("caller failed")
    assert threading.active_count() == threads
    assert out._fd is None


def test_a_write_error_reaches_the_caller():
    """/dev/full refuses every write with ENOSPC: the writer thread's error is raised by close()."""
    with pytest.raises(OSError) as err:
        with DirectWriter("/dev/full") as out:
            out.write(b"y" * 100)
    assert err.value.errno in (28, 22, 29)  # ENOSPC; EINVAL/ESPIPE where the device refuses pwrite itself
