"""The one root of every error the kit raises on bad input or an unusable place: ``KitError``.

Why: each command, given a bad file, must print one message naming the file, the field and the fix, and
exit non-zero, never a traceback. With one root the CLI has one handler (``experiment.cli.main``) for all
of them; feature modules keep their own subclasses (DataError, LockError, ...) for callers that care.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class KitError(Exception):
    """A failure the user can fix. ``file``/``field``/``fix`` are filled where known (None otherwise);
    ``str(err)`` stays the full one-paragraph message older callers print."""

    file: str | None = None
    field: str | None = None
    fix: str | None = None

    def __init__(self, message: str = "", *, file: str | Path | None = None, field: str | None = None,
                 fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if file is not None:
            self.file = str(file)
        if field is not None:
            self.field = field
        if fix is not None:
            self.fix = fix

    def lines(self) -> list[str]:
        """What the CLI prints: ``file: message (field: ...)`` then ``fix: ...`` (parts not known, or already
        in the message, are left out)."""
        message = getattr(self, "message", None) or str(self)
        head = f"{self.file}: {message}" if self.file and self.file not in message else message
        if self.field and self.field not in message:
            head += f" (field: {self.field})"
        out = [head]
        if self.fix and self.fix not in message:
            out.append(f"fix: {self.fix}")
        return out


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
SHORT_WRITE = "unexpected pos"  # torch's zip writer (inline_container.cc) after a short write: a full disk there


def _messages_and_errors(err: BaseException) -> list[BaseException]:
    """``err`` and everything behind it: its ``__cause__``/``__context__`` chain and the per-rank ``failures``
    of torch's ``CheckpointException`` (which crossed a pickle: the message is kept, the chain is not)."""
    seen: dict[int, BaseException] = {}
    todo: list = [err]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen[id(item)] = item
        todo += [item.__cause__, item.__context__]
        failures = getattr(item, "failures", None)
        if isinstance(failures, dict):
            todo += [f[0] if isinstance(f, tuple) and f else f for f in failures.values()]
    return list(seen.values())


def _nearly_full(place: Path) -> bool:
    usage = shutil.disk_usage(_existing(place))
    return usage.free < max(256 << 20, usage.total // 100)


def _existing(place: Path) -> Path:
    return next((p for p in (place, *place.parents) if p.exists()), Path("/"))


def disk_full(err: BaseException, places: str | Path | list, then: str = "run the same command again",
              ) -> KitError | None:
    """A full disk or quota behind ``err`` as one ``KitError`` naming the file and the fix; None for any other
    error. Libraries wrap it (TensorBoard's writer thread, megatron's checkpoint writer processes) or hide it
    (torch's zip writer reports a short write as "unexpected pos"), and a flushed file object names no file:
    ``places`` (the folders the command writes into) stand in for an unnamed file, the fullest one first."""
    places = [Path(p) for p in ([places] if isinstance(places, (str, Path)) else places)]
    found: OSError | None = None
    for item in _messages_and_errors(err):
        if isinstance(item, OSError) and item.errno in FULL_DISK:
            found = item
            break
        text = str(item)
        code = next((c for c in FULL_DISK if f"[Errno {c}]" in text), None)
        if code is not None or (SHORT_WRITE in text and any(_nearly_full(p) for p in places)):
            found = OSError(code or errno.ENOSPC, os.strerror(code or errno.ENOSPC))
    if found is None:
        return None
    if isinstance(found.filename, (str, Path)):
        where = Path(found.filename)
    else:
        where = min(places, key=lambda p: shutil.disk_usage(_existing(p)).free)
    probe = _existing(where)
    free = shutil.disk_usage(probe).free
    return KitError(f"the disk is full ({found.strerror}; {free / 1e6:,.1f} MB free there now)", file=where,
                    fix=f"free space on the disk that holds {probe} (df -h {probe}), then {then}")


def print_error(err: KitError, console) -> None:
    """The one way the CLI prints a ``KitError``: ``error: file: message (field: ...)`` and ``fix: ...``."""
    from rich.text import Text

    first, *rest = err.lines()
    console.print(Text("error: ", style="bold red") + Text(first), soft_wrap=True)
    for line in rest:
        console.print(Text("  " + line), soft_wrap=True)
