"""One error type for bad data input, so every failure names the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

from experiment.errors import KitError


class DataError(KitError):
    """Bad input or an unusable output place: ``file:line: message`` plus how to fix it.

    ``line`` is 1-based (a JSONL/text line or a Parquet row); 0 means the whole file.
    """

    def __init__(self, file: str | Path, message: str, fix: str, line: int = 0) -> None:
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {message}\n  fix: {fix}")
        self.file = str(file)
        self.line = line
        self.message = message
        self.fix = fix

    def lines(self) -> list[str]:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return [f"{where}: {self.message}", f"fix: {self.fix}"]

    def __reduce__(self):  # rebuilt whole when a task process hands it back (datatrove's local executor)
        return self.__class__, (self.file, self.message, self.fix, self.line)
