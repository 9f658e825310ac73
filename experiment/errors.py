"""The one root of every error the kit raises on bad input or an unusable place: ``KitError``.

Why: each command, given a bad file, must print one message naming the file, the field and the fix, and
exit non-zero, never a traceback. With one root the CLI has one handler (``experiment.cli.main``) for all
of them; feature modules keep their own subclasses (DataError, LockError, ...) for callers that care.
"""

from __future__ import annotations

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


def print_error(err: KitError, console) -> None:
    """The one way the CLI prints a ``KitError``: ``error: file: message (field: ...)`` and ``fix: ...``."""
    from rich.text import Text

    first, *rest = err.lines()
    console.print(Text("error: ", style="bold red") + Text(first), soft_wrap=True)
    for line in rest:
        console.print(Text("  " + line), soft_wrap=True)
