"""The multiple-choice data shipped with the kit (``tasks/mc_en.jsonl``, ``tasks/mc_ja.jsonl``): "which
continuation is the real one", from text the demo never trains on.

Why these sources: the demo's corpus (``experiment.demo.corpus``) is Debian documentation, man pages, a
dictionary and copyright files. The program messages of Debian's base tools and their Japanese translations
(the gettext catalogs ``/usr/share/locale/ja/LC_MESSAGES/*.mo`` of coreutils, dpkg, apt, ...) are real
English and Japanese text that appears in none of those. Each item cuts one message in two: the first part
is the context, the real second part is one choice, three second parts of other messages of the same
language are the distractors. The files are built once (``python -m experiment.evaluate.mcdata``) and shipped,
so an evaluation reads the same bytes on every machine whatever is installed there.
"""

from __future__ import annotations

import gettext
import json
import random
import re
from pathlib import Path

CATALOGS = ("coreutils", "dpkg", "apt", "grep", "findutils", "diffutils", "bash", "tar", "sed", "gawk",
            "util-linux", "shadow", "gnupg2", "libc", "Linux-PAM", "adduser", "debconf", "e2fsprogs")
LOCALE = Path("/usr/share/locale/ja/LC_MESSAGES")
OUT = Path(__file__).parent / "tasks"
ITEMS = 120
SEED = 20


def _clean(text: str) -> str:
    text = re.sub(r"%[-#0 +'I]*\d*(\.\d+)?[hlLqjzt]*[a-zA-Z%]|%\d+\$[a-z]|\\n|\s+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def messages() -> list[tuple[str, str, str]]:
    """(catalog, English msgid, Japanese msgstr) of every long enough translated message."""
    out = []
    for name in CATALOGS:
        path = LOCALE / f"{name}.mo"
        if not path.is_file():
            continue
        with open(path, "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog  # noqa: SLF001 -- the parsed .mo, msgid -> msgstr
        for en, ja in sorted((k, v) for k, v in catalog.items() if isinstance(k, str) and k and isinstance(v, str)):
            en, ja = _clean(en), _clean(ja)
            if len(en) >= 50 and len(ja) >= 24 and re.search(r"[\u3040-\u30ff]", ja) and "\x00" not in en:
                out.append((name, en, ja))
    return out


def _split(text: str, lang: str) -> tuple[str, str] | None:
    mid = len(text) // 2
    if lang == "en":
        cut = text.rfind(" ", 0, mid + 1)
        if cut <= 10:
            return None
        return text[:cut], text[cut:]  # the continuation keeps its leading space
    for j in range(mid, max(mid - 8, 6), -1):  # after a particle or punctuation when one is near
        if text[j - 1] in "、。をにがはでとのも":
            return text[:j], text[j:]
    return text[:mid], text[mid:]


def build(items: int = ITEMS, seed: int = SEED) -> dict[str, list[dict]]:
    msgs = messages()
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {}
    for lang, col in (("en", 1), ("ja", 2)):
        seen: set[str] = set()
        pairs = []
        for m in msgs:
            if m[col] in seen:
                continue
            seen.add(m[col])
            cut = _split(m[col], lang)
            if cut and len(cut[1].strip()) >= 4:
                pairs.append((m[0], *cut))
        rng.shuffle(pairs)
        pairs = pairs[:items]
        docs = []
        for i, (catalog, context, real) in enumerate(pairs):
            others = [p[2] for j, p in enumerate(pairs) if j != i and p[2] != real]
            choices = rng.sample(others, 3) + [real]
            rng.shuffle(choices)
            docs.append({"id": f"{lang}-{i:03d}", "source": f"{catalog}.mo", "context": context,
                         "choices": choices, "label": choices.index(real)})
        out[lang] = docs
    return out


def main() -> None:
    for lang, docs in build().items():
        path = OUT / f"mc_{lang}.jsonl"
        path.write_text("".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs),
                        encoding="utf-8")
        print(f"{path}: {len(docs)} items")


if __name__ == "__main__":
    main()
