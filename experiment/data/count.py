"""``experiment data count``: recount existing .bin/.idx pairs (ours or any tool's) and rename them.

Counts come from megatron.core's own ``IndexedDataset`` (see ``shards.read_shard``); the new name is
``{stem}_dc={docs}_sc={sentences}_tc={tokens}``. A pair whose name does not follow the convention
(e.g. Megatron-LM's ``corpus_text_document``) needs ``--language/--domain`` (the subdomain defaults
to its file name). Renames move the .bin first and the .idx last, never over another shard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from experiment.data import naming, shards
from experiment.data.errors import DataError


@dataclass(frozen=True)
class CountResult:
    old: Path
    new: Path
    counts: shards.Counts
    previous: tuple[int | None, int | None, int | None]  # counts the old name claimed

    @property
    def renamed(self) -> bool:
        return self.old != self.new

    @property
    def name_was_wrong(self) -> bool:
        return self.previous[0] is not None and self.previous != (self.counts.docs, self.counts.sentences, self.counts.tokens)


def target_name(prefix: Path, index: int, language: str | None, domain: str | None, subdomain: str | None) -> naming.ShardName:
    try:
        return naming.parse(prefix.name)
    except naming.ShardNameError:
        if not (language and domain):
            raise DataError(
                f"{prefix}.idx", "the name does not follow {lang}_{domain}_{sub}_split_{id}_text_document",
                "pass --language and --domain (and --subdomain) to name it",
            ) from None
    sub = subdomain or "".join(c if c.isalnum() or c in ".-" else "-" for c in prefix.name.removesuffix("_text_document"))
    return naming.make(language, domain, sub, f"{index:04d}")


def count(paths: list[Path], language: str | None = None, domain: str | None = None, subdomain: str | None = None, dry_run: bool = False) -> list[CountResult]:
    """Recount every pair under ``paths`` and (unless ``dry_run``) rename it to its counted name."""
    prefixes = shards.find_prefixes(paths)
    if not prefixes:
        raise DataError(", ".join(map(str, paths)), "no .bin/.idx pairs found", "give the folder that holds the shards")
    results = []
    for i, prefix in enumerate(prefixes):
        info = shards.read_shard(prefix)
        name = target_name(prefix, i, language, domain, subdomain)
        c = info.counts
        new = prefix.parent / name.with_counts(c.docs, c.sentences, c.tokens).format()
        if new != prefix and not dry_run:
            for ext in (".bin", ".idx"):
                if Path(f"{new}{ext}").exists():
                    raise DataError(f"{new}{ext}", "another shard already has this name", "remove the duplicate shard first")
            os.replace(f"{prefix}.bin", f"{new}.bin")
            os.replace(f"{prefix}.idx", f"{new}.idx")
        results.append(CountResult(prefix, new, c, (name.docs, name.sentences, name.tokens)))
    return results
