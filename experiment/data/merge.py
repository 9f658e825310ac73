"""``experiment data merge``: many small JSONL shards -> fewer shards of about a target size.

Inputs are grouped by ``{lang}_{domain}_{sub}`` (from their names, or all into the group given on
the command line); each group's records are copied in sorted input order, line by line, into
``{lang}_{domain}_{sub}_split_{NNNN}.jsonl`` files of at most ``target_mb`` (a record never splits).
Every line is checked (valid JSON object with a string text key) so bad input fails here with
``file:line`` rather than later. Records are copied byte for byte (other keys kept). Shards are built
in a hidden folder and moved into place at the end, so a killed merge leaves no partial shard.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from experiment.data import naming, sources
from experiment.data.errors import DataError


@dataclass
class MergeGroup:
    stem: str
    inputs: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    records: int = 0
    bytes: int = 0


def group_of(path: Path, language: str | None, domain: str | None, subdomain: str | None) -> str:
    if language or domain:
        if not (language and domain):
            raise DataError(path, "--language and --domain must be given together", "pass both")
        return naming.make(language, domain, subdomain or "merged", "0").stem.split("_split_")[0]
    stem = sources.stem_of(path)
    base = stem.split("_split_")[0] if "_split_" in stem else stem
    try:
        parsed = naming.parse(f"{base}_split_0_text_document")
    except naming.ShardNameError:
        raise DataError(path, "cannot read language/domain/subdomain from the name", "name inputs {lang}_{domain}_{sub}_... or pass --language/--domain/--subdomain") from None
    return f"{parsed.language}_{parsed.domain}_{parsed.subdomain}"


def _records(path: Path, text_key: str):
    """Raw, validated JSONL records of one input (bytes ending in a newline)."""
    if os.path.getsize(path) == 0:
        raise DataError(path, "the file is empty", "remove it from the inputs")
    with sources.open_binary(path) as stream:
        for number, raw in enumerate(stream, start=1):
            text = sources.decode_line(raw, path, number)
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(path, f"malformed JSON: {err.msg} at column {err.colno}", "fix or drop this line", number) from None
            sources.text_of(record, text_key, path, number)
            yield raw if raw.endswith(b"\n") else raw + b"\n"


def merge(inputs: list[Path], output: Path, target_mb: float = 256.0, text_key: str = "text",
          language: str | None = None, domain: str | None = None, subdomain: str | None = None) -> list[MergeGroup]:
    files = sources.find_inputs(inputs)
    for f in files:
        if not sources.format_of(f).startswith("jsonl"):
            raise DataError(f, "merge reads JSONL shards only", "give .jsonl, .jsonl.gz or .jsonl.zst files")
    groups: dict[str, MergeGroup] = {}
    for f in files:
        stem = group_of(f, language, domain, subdomain)
        groups.setdefault(stem, MergeGroup(stem)).inputs.append(f)
    out_resolved = output.resolve()
    for f in files:
        if out_resolved in f.resolve().parents:
            raise DataError(f, "an input lies inside the output folder", "write the merged shards to another --output folder")
    target = int(target_mb * 1e6)
    output.mkdir(parents=True, exist_ok=True)
    build = output / f".merge-build-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    try:
        for group in groups.values():
            fh, size, index = None, 0, -1
            for f in group.inputs:
                for line in _records(f, text_key):
                    if fh is None or (size and size + len(line) > target):
                        if fh:
                            fh.close()
                        index += 1
                        path = build / f"{group.stem}_split_{index:04d}.jsonl"
                        group.outputs.append(path)
                        fh, size = open(path, "wb"), 0
                    fh.write(line)
                    size += len(line)
                    group.records += 1
                    group.bytes += len(line)
            if fh:
                fh.close()
        for group in groups.values():
            for old in output.glob(f"{group.stem}_split_*.jsonl"):
                if (build / old.name) not in group.outputs:
                    old.unlink()
            moved = []
            for path in group.outputs:
                os.replace(path, output / path.name)
                moved.append(output / path.name)
            group.outputs = moved
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return list(groups.values())
