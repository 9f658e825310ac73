"""Checkpoint integrity: each folder's manifest (names, sizes, blake3), the checks against it, damage set aside.

Apart from saving and loading (``checkpointing``) because these are pure file operations: they judge a
checkpoint without loading it or needing a process group, so ``experiment run`` can refuse an unresumable run
before torchrun starts and the unit tests can check them on fake folders. A resume first checks each
checkpoint here (``inspect``: sizes, then hashes against the manifest and the run's record of its save in
``logs/saves.jsonl``); a known kind of damage is moved aside to ``<save>/damaged/`` (never deleted) and listed
in ``logs/aside.jsonl``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from experiment.runlog import free_path, note_aside

MANIFEST_NAME = "kit_manifest.json"
DAMAGED_DIR = "damaged"  # under the save folder: checkpoints a resume found damaged, moved aside, never deleted
HASH = "blake3"


@dataclass(frozen=True)
class Verdict:
    """What a resume found about one checkpoint: usable, a known kind of damage, or a load error."""

    iteration: int
    damage: str | None = None  # missing | size | hash | manifest | record | load (None: usable)
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.damage is None

    @property
    def known_damage(self) -> bool:
        """Damage a resume may step back from (files); a load error may be a code or config change."""
        return self.damage in ("missing", "size", "hash", "manifest", "record")


def listing(folder: Path) -> dict[str, int]:
    """Every file of a checkpoint folder (relative name -> size) but the manifest: what the manifest lists."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def is_complete(folder: Path) -> tuple[bool, str]:
    """Whether a checkpoint folder holds exactly the files (and sizes) its manifest lists."""
    verdict = inspect_sizes(folder)
    return verdict.ok, verdict.why


def read_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / MANIFEST_NAME).read_text())


def file_hashes(folder: Path, names) -> dict[str, str]:
    """blake3 of the named files of a checkpoint folder (every core; the kit's one hasher)."""
    from experiment.hashing import hash_paths

    paths = {os.fspath(Path(folder) / n): n for n in names}
    return {paths[p]: d for p, d in hash_paths(paths, HASH).items()}


def inspect_sizes(folder: Path) -> Verdict:
    """The cheap part of ``inspect``: the files and their sizes against the manifest, each kind of damage named."""
    folder = Path(folder)
    iteration = int(folder.name[5:12]) if folder.name[5:12].isdigit() else -1
    manifest = folder / MANIFEST_NAME
    if not folder.is_dir():
        return Verdict(iteration, "missing", f"{folder} does not exist")
    if not manifest.is_file():
        return Verdict(iteration, "manifest", f"{folder} has no {MANIFEST_NAME} (the save did not finish)")
    try:
        expected = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as err:
        return Verdict(iteration, "manifest", f"{manifest} is unreadable ({err})")
    actual = listing(folder)
    for name, size in expected.items():
        if name not in actual:
            return Verdict(iteration, "missing", f"{folder / name} is missing")
        if actual[name] != size:
            return Verdict(iteration, "size", f"{folder / name} has {actual[name]} bytes, the manifest says {size}")
    return Verdict(iteration)


def inspect(folder: Path, recorded: dict[str, str] | None = None) -> Verdict:
    """Check one checkpoint's files against its manifest (names, sizes, hashes) and against the run's record
    of its save (``recorded``: name -> hash), without loading it. Rank 0 only: it reads every byte."""
    folder = Path(folder)
    sized = inspect_sizes(folder)
    if not sized.ok:
        return sized
    iteration = sized.iteration
    manifest = read_manifest(folder)
    expected = manifest.get("hashes") or {}
    if recorded:
        differ = sorted(n for n in set(expected) | set(recorded) if expected.get(n) != recorded.get(n))
        if expected and differ:
            return Verdict(iteration, "record", f"{folder / MANIFEST_NAME} and logs/saves.jsonl disagree on {differ[0]}")
        expected = expected or recorded
    absent = sorted(n for n in expected if not (folder / n).is_file())
    if absent:  # only possible when the hashes come from the record alone (a manifest of an older kit)
        return Verdict(iteration, "missing", f"{folder / absent[0]} is missing")
    found = file_hashes(folder, sorted(expected))
    for name in sorted(expected):
        if found[name] != expected[name]:
            return Verdict(iteration, "hash", f"{folder / name} has blake3 {found[name][:16]}..., the save "
                           f"recorded {expected[name][:16]}... (the bytes changed after the save)")
    return Verdict(iteration)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (the directory entry itself is flushed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_aside(path: Path, save_dir: Path, log_dir: Path | None, why: str, resumed: int | None = None) -> Path:
    """Rename a checkpoint folder into ``<save>/damaged/`` (a free name; same filesystem, so nothing is copied
    or deleted) and note it in ``logs/aside.jsonl``. Rank 0."""
    target_dir = Path(save_dir) / DAMAGED_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    target = free_path(target_dir, path.name)
    os.replace(path, target)
    fsync_dir(Path(save_dir))
    if log_dir is not None:
        note_aside(log_dir, {"what": "checkpoint", "from": path.name, "to": f"{DAMAGED_DIR}/{target.name}",
                             "why": why, "resumed_iteration": resumed})
    return target
