"""The output folder of a tokenize run: finished shards, a killed run's leftovers, its tokenizer.

Listed once per run (``OutputIndex``), so that a re-run skips finished inputs and removes what a killed
run left; ``tokenizer_info.json`` records the tokenizer that wrote the folder, so that shards of two
tokenizers are never mixed in one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from experiment.atomic import write_atomic
from experiment.data import naming
from experiment.data.encoders import LoadedEncoder
from experiment.data.errors import DataError
from experiment.data.signature import TokenizerInfo

TOKENIZER_INFO = "tokenizer_info.json"


class OutputIndex:
    """The output folder, listed once at the start of a run: each stem's finished prefix (.bin and .idx
    both there) and its leftovers (temporary files, a .bin renamed before its .idx). A glob per input made
    a run over many shards quadratic (3,000 one-line inputs: 30 s to find every one already done).
    What another run finishes after the listing is redone here; its bytes are the same, so the rename
    replaces it harmlessly."""

    def __init__(self, output: Path) -> None:
        self._finished: dict[str, Path] = {}
        self._leftovers: dict[str, list[Path]] = {}
        try:
            names = sorted(os.listdir(output))
        except (FileNotFoundError, NotADirectoryError):
            return
        present = set(names)
        for entry in names:
            if entry.startswith(".") and ".tmp-" in entry:
                self._leftovers.setdefault(entry[1:].rsplit(".tmp-", 1)[0], []).append(output / entry)
                continue
            if not entry.endswith((".bin", ".idx")):
                continue
            try:
                name = naming.parse(entry)
            except naming.ShardNameError:
                continue
            base = entry[:-4]
            if not name.counted:
                continue
            if entry.endswith(".idx"):
                if base + ".bin" in present:
                    self._finished.setdefault(name.stem, output / base)
            elif base + ".idx" not in present:  # a .bin renamed before its .idx
                self._leftovers.setdefault(name.stem, []).append(output / entry)

    def finished(self, stem: str) -> Path | None:
        """The counted prefix of a finished output for ``stem``, if any."""
        return self._finished.get(stem)

    def clean(self, stem: str) -> None:
        """Remove what a killed run left of ``stem``."""
        for path in self._leftovers.pop(stem, []):
            path.unlink(missing_ok=True)

    def add(self, stem: str, prefix: Path) -> None:
        self._finished[stem] = prefix


def tokenizer_info(loaded: LoadedEncoder) -> TokenizerInfo:
    spec = loaded.spec
    return TokenizerInfo(
        kind=spec.kind, name=spec.name, sha256=spec.sha256(), vocab_size=loaded.reference.vocab_size, eod_id=loaded.reference.eod_id
    )


def claim_output(output: Path, info: TokenizerInfo) -> None:
    """Record the tokenizer of this folder; refuse to mix shards of two tokenizers in one folder."""
    path = output / TOKENIZER_INFO
    if path.is_file():
        old = TokenizerInfo.model_validate_json(path.read_text())
        if old.sha256 != info.sha256 or old.eod_id != info.eod_id:
            raise DataError(
                path, f"this folder holds shards of another tokenizer ({old.name}, {old.sha256[:12]})",
                "choose an empty --output folder for this tokenizer",
            )
        return
    write_atomic(path, json.dumps(info.model_dump(), indent=1, sort_keys=True) + "\n")  # tasks may claim at once
