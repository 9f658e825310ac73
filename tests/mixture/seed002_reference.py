"""The anchor: seed 002's ``data_ratio_from_file.py`` (ALLaM Megatron fork) re-stated step by step.

Written from reading the public script, not copied; it keeps the script's behaviour, quirks included, so
the kit can be compared with it on the same inputs (tests) and timed next to it (``bench/mix.py``):

1. only names ending in ``.bin`` count; the suffix is stripped and the names are sorted;
2. exclude entries count only when they end in ``.bin`` (others are silently ignored) and are compared with
   the shard's base name;
3. ``tc`` is read from the ``tc=`` part of the name; language and domain are its first two ``_`` parts;
4. the multiplier is looked up on a fresh deep copy of the ratio table: the language's table if the language
   is a key, then the domain's value if the domain is a key; a shard whose lookup still yields a table
   (domain or language unknown) is dropped without a word;
5. ``lang_prob`` is divided by its sum; a language missing from it raises ``KeyError``;
6. per language, ``w = tc*m / sum(tc*m over the language's kept shards) * lang_prob[lang]``; a multiplier of 0
   divides by zero; the languages come out in order of first appearance, shards in name order;
7. every kept file is printed, as the script does (to ``out``).
"""

from __future__ import annotations

import copy
import os
from typing import Any, TextIO


def _lookup(table: dict, lang: str, domain: str) -> Any:
    found: Any = copy.deepcopy(table)
    if lang in table:
        found = found[lang]
    if domain in found:
        found = found[domain]
    return found


def seed002_weights(names: list[str], domain_ratio: dict, lang_prob: dict, exclude: list[str],
                    total_token: int, out: TextIO) -> list[tuple[float, str, int]]:
    """``[(probability, shard name, tokens to sample)]`` in the script's output order."""
    total = sum(lang_prob.values())
    lang_prob = {k: v / total for k, v in lang_prob.items()}
    excluded = sorted(e.replace(".bin", "") for e in exclude if e.endswith(".bin"))
    paths = sorted(n.replace(".bin", "") for n in names if n.endswith(".bin"))
    by_lang: dict[str, list[tuple[float, str]]] = {}
    sampled: dict[str, float] = {}
    print("\n\nFile Found ...", file=out)
    for path in paths:
        base = os.path.basename(path)
        if base in excluded:
            continue
        print(f"\t{base}", file=out)
        tc = int(base.split("tc=")[1].split("_")[0])
        lang, domain = base.split("_")[0], base.split("_")[1]
        m = _lookup(domain_ratio, lang, domain)
        if isinstance(m, dict):
            continue
        by_lang.setdefault(lang, []).append((tc * m, base))
        sampled[lang] = sampled.get(lang, 0) + tc * m
    result = []
    for lang, members in by_lang.items():
        covered = 0.0
        for scaled, base in members:
            prob = scaled / sampled[lang] * lang_prob[lang]
            m = _lookup(domain_ratio, lang, base.split("_")[1])
            _ = scaled // m  # the script's "tokens that exist" (divides by zero for m == 0)
            result.append((prob, base, int(prob * total_token)))
            covered += prob
        assert abs(lang_prob[lang] - covered) < 1e-6
    return result
