"""Shard names that carry their own counts (seed 002's convention), parsed and formatted.

    {language}_{domain}_{subdomain}_split_{id}_text_document_dc={docs}_sc={sentences}_tc={tokens}

is the Megatron prefix of one ``.bin``/``.idx`` pair. Language and domain are the first two
``_``-separated parts, so neither may contain ``_``; the subdomain may. The mixture planner reads
``tc`` (tokens) from the name, exactly as seed 002's ``data_ratio_from_file.py`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from experiment.errors import KitError

_NAME = re.compile(
    r"^(?P<language>[^_/]+)_(?P<domain>[^_/]+)_(?P<subdomain>[^/]*?)_split_(?P<split>[^_/]+)_text_document"
    r"(?:_dc=(?P<docs>\d+)_sc=(?P<sentences>\d+)_tc=(?P<tokens>\d+))?$"
)
_PART = re.compile(r"^[A-Za-z0-9.\-]+$")


class ShardNameError(KitError, ValueError):
    """A shard name that does not follow the convention."""


@dataclass(frozen=True)
class ShardName:
    language: str
    domain: str
    subdomain: str
    split: str
    docs: int | None = None
    sentences: int | None = None
    tokens: int | None = None

    @property
    def counted(self) -> bool:
        return self.tokens is not None

    @property
    def stem(self) -> str:
        """The name without counts: stable identity of a shard across recounts."""
        return f"{self.language}_{self.domain}_{self.subdomain}_split_{self.split}_text_document"

    def format(self) -> str:
        if not self.counted:
            return self.stem
        return f"{self.stem}_dc={self.docs}_sc={self.sentences}_tc={self.tokens}"

    def with_counts(self, docs: int, sentences: int, tokens: int) -> "ShardName":
        return ShardName(self.language, self.domain, self.subdomain, self.split, docs, sentences, tokens)


def parse(name: str) -> ShardName:
    """Parse a prefix's base name (no folder, no ``.bin``/``.idx``)."""
    base = name.rsplit("/", 1)[-1]
    for suffix in (".bin", ".idx"):
        base = base.removesuffix(suffix)
    m = _NAME.match(base)
    if not m:
        raise ShardNameError(
            f"{name!r} does not follow {{language}}_{{domain}}_{{subdomain}}_split_{{id}}_text_document"
            "[_dc=N_sc=N_tc=N]; rename it or pass --language/--domain/--subdomain"
        )
    g = m.groupdict()
    counts = [int(g[k]) if g[k] is not None else None for k in ("docs", "sentences", "tokens")]
    return ShardName(g["language"], g["domain"], g["subdomain"], g["split"], *counts)


def make(language: str, domain: str, subdomain: str, split: str | int) -> ShardName:
    """Build an uncounted name, refusing parts that would make it ambiguous to parse."""
    for label, part in (("language", language), ("domain", domain)):
        if not _PART.match(part):
            raise ShardNameError(f"{label} {part!r} may hold only letters, digits, '.' and '-' (no '_')")
    if not re.match(r"^[A-Za-z0-9.\-_]+$", subdomain):
        raise ShardNameError(f"subdomain {subdomain!r} may hold only letters, digits, '.', '-' and '_'")
    if not _PART.match(str(split)):
        raise ShardNameError(f"split id {split!r} may hold only letters, digits, '.' and '-'")
    return ShardName(language, domain, subdomain, str(split))
