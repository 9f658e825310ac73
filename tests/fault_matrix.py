"""The fault matrix of docs/reliability.md, filled by the tests that inject each fault.

Each fault test calls ``record(...)`` with what it saw: what survived, where the run resumed, whether its lock
reproduced, and the message a user read. At the end of a session that ran every cell, ``write_page`` rewrites
the table in docs/reliability.md (between its markers), so the page is what ran, never a description of it.
A session that ran only some cells leaves the page alone.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
BEGIN, END = "<!-- fault-matrix:begin -->", "<!-- fault-matrix:end -->"

FAULTS = (
    "kill -9 of one rank mid-step",
    "kill -9 during a save",
    "kill -9 of one node's step mid-step",
    "SIGTERM during a save",
    "disk full during a save",
    "every checkpoint unloadable",
    "bit flip in the latest checkpoint",
    "hung rank (SIGSTOP)",
    "--set override",
    "shard changed between segments",
)
# the cells a full session runs; the others are named on the page with the reason they are not run
CELLS = {
    ("local", "kill -9 of one rank mid-step"),
    ("local", "disk full during a save"), ("local", "every checkpoint unloadable"),
    ("local", "bit flip in the latest checkpoint"), ("local", "hung rank (SIGSTOP)"), ("local", "--set override"),
    ("local", "shard changed between segments"),
    ("slurm", "kill -9 during a save"), ("slurm", "kill -9 of one node's step mid-step"),
    ("slurm", "SIGTERM during a save"), ("slurm", "--set override"),
    ("container", "--set override"),
}
LAUNCHERS = ("local", "slurm", "container")
_SAME_RUNNER = "the runner inside the image is the same code as on the host (its lock proves the versions); run locally"
NOT_RUN = {
    ("local", "SIGTERM during a save"): "a tiny save is too short to hit from outside; SIGTERM mid-step is tested "
                                       "locally (tests/train/test_training.py), during a save on Slurm",
    ("local", "kill -9 during a save"): "a tiny checkpoint's save takes milliseconds on this machine, too short to "
                                       "hit from outside reliably; the Slurm cell kills a 120-iteration run's save",
    ("slurm", "kill -9 of one rank mid-step"): "the same runner and torchrun as local; the Slurm cells kill mid-save "
                                              "and one node's whole step",
    ("local", "kill -9 of one node's step mid-step"): "one machine is one node; the local cell kills one rank, the "
                                                      "Slurm cell one of two nodes",
    ("slurm", "disk full during a save"): "needs a tmpfs mounted under the job's folder; run locally",
    ("slurm", "every checkpoint unloadable"): "the refusal is the runner's, identical under every launcher; run locally",
    ("slurm", "bit flip in the latest checkpoint"): "the check is the runner's, identical under every launcher; run "
                                                   "locally",
    ("slurm", "hung rank (SIGSTOP)"): "the watchdog is the runner's; run locally",
    ("slurm", "shard changed between segments"): "`chain begin` runs the same check as `experiment run`; run locally",
    **{("container", f): _SAME_RUNNER for f in FAULTS if f != "--set override"},
}


@dataclass(frozen=True)
class Cell:
    launcher: str
    fault: str
    survived: str  # what is still there afterwards (checkpoints, logs)
    resumed: str  # where the next start resumed
    reproduced: str  # how the run's end was proven the same (or why no lock)
    message: str  # what the user saw (one line)
    test: str

    @property
    def nothing_lost(self) -> bool:
        return "lost" not in self.survived.lower()


_cells: dict[tuple[str, str], Cell] = {}


_TMP = re.compile(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/[^/\s]+/")  # a test's own folder: the same for every reader


def record(launcher: str, fault: str, *, survived: str, resumed: str, reproduced: str, message: str,
           test: str) -> None:
    """Note one cell; call it after the test's assertions (a failed test records nothing)."""
    assert fault in FAULTS and (launcher, fault) in CELLS, (launcher, fault)
    clean = [_TMP.sub(".../", " ".join(x.split())) for x in (survived, resumed, reproduced, message)]
    _cells[(launcher, fault)] = Cell(launcher, fault, clean[0], clean[1], clean[2], clean[3][:220], test)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def table() -> str:
    rows = ["| launcher | fault | nothing lost | what survived | where it resumed | lock reproduced | what the user saw "
            "| test |", "|---|---|---|---|---|---|---|---|"]
    for launcher in LAUNCHERS:
        for fault in FAULTS:
            cell = _cells.get((launcher, fault))
            if cell is None:
                rows.append(f"| {launcher} | {_escape(fault)} | | not run: "
                            f"{_escape(NOT_RUN.get((launcher, fault), '?'))} | | | | |")
                continue
            rows.append("| " + " | ".join(_escape(x) for x in (
                launcher, fault, "yes" if cell.nothing_lost else "NO", cell.survived, cell.resumed, cell.reproduced,
                f"`{cell.message}`",
                f"`{cell.test}`")) + " |")
    return "\n".join(rows)


def complete() -> bool:
    return CELLS <= set(_cells)


def write_page() -> bool:
    """Rewrite the table on docs/reliability.md when every cell ran this session; True when written."""
    if not complete() or not PAGE.is_file():
        return False
    git = ["git", "-C", str(PAGE.parent)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            timeout=30).stdout.strip() or "unknown"
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "experiment", "tests"],
                           capture_output=True, text=True, timeout=30).stdout.strip()
    commit += " with uncommitted changes to experiment/ or tests/" if dirty else ""
    text = PAGE.read_text()
    if BEGIN not in text or END not in text:
        return False
    body = f"{BEGIN}\nAs run by the test suite at commit `{commit}`.\n\n" \
           f"{table()}\n{END}"
    PAGE.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda m: body, text, flags=re.S))
    return True
