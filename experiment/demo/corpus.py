"""``experiment data sample``: a real multi-language, multi-domain corpus from installed Debian packages.

Why: tests, the demo and the tokenizer benchmark need real text of several languages and domains,
offline and byte-for-byte reproducible. The packages CI installs provide it:

=============================  ==========================================  ===========================
shard name (lang_domain_sub)   source                                      package
=============================  ==========================================  ===========================
en_code-docs_python-html       /usr/share/doc/python3.11/html/**/*.html     python3.11-doc
en_code-docs_python-rst        /usr/share/doc/python3.11/html/_sources      python3.11-doc
en_manual_debian-reference     /usr/share/debian-reference/*.en.html        debian-reference-en
ja_manual_debian-reference     /usr/share/debian-reference/*.ja.html        debian-reference-ja
ja_manual_man                  /usr/share/man/ja/**/*.gz (troff -> text)    manpages-ja
en_manual_man                  /usr/share/man/man?/*.gz (troff -> text)     (every installed package)
en_dictionary_gcide            /usr/share/dictd/gcide.dict.dz               dict-gcide
en_legal_copyright             /usr/share/doc/*/copyright                   (every installed package)
=============================  ==========================================  ===========================

Documents are taken round-robin, one per source in turn, until ``mb`` megabytes of text, so a small
sample still covers every source. Long texts are cut at paragraph breaks into documents of at most
``doc_chars`` characters. Files are visited in sorted order and written as sorted-key JSONL, so the
same packages give the same bytes. A source whose Debian package is missing is an error naming the
package (never a silent skip: a shard missing here surfaces stages later as an empty domain); each package
must be on the kit's declared list, ``experiment.system_packages`` (a test keeps the two in step).
"""

from __future__ import annotations

import gzip
import html.parser
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from experiment.data.errors import DataError

DOC_CHARS = 8000


@dataclass(frozen=True)
class Source:
    language: str
    domain: str
    subdomain: str
    root: Path
    documents: Callable[[Path], Iterator[tuple[str, str]]]  # root -> (text, source path)
    package: str | None = None  # the Debian package that provides ``root`` (None: every installed package)
    probe: str = ""  # a glob under ``root`` that matches when the package is installed (root shared by two)

    def present(self) -> bool:
        return self.root.is_dir() and (not self.probe or next(self.root.glob(self.probe), None) is not None)

    @property
    def stem(self) -> str:
        return f"{self.language}_{self.domain}_{self.subdomain}"


class _HtmlText(html.parser.HTMLParser):
    """HTML -> text with paragraph breaks; only inside the element matching ``main`` when given."""

    BLOCK = {"p", "div", "section", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "pre", "br", "tr", "table", "blockquote", "title"}
    SKIP = {"script", "style", "head"}

    def __init__(self, main: tuple[str, str] | None) -> None:
        super().__init__(convert_charrefs=True)
        self.main = main
        self.depth = 0 if main else 1  # >0: inside the captured element
        self.skip = 0
        self.parts: list[str] = []
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if self.main and self.depth == 0:
            if (self.main[0], self.main[1]) in attrs:
                self.depth = 1
            return
        if self.main and tag == "div":
            self.depth += 1
        if tag in self.SKIP:
            self.skip += 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self.parts.append("\n\n" if tag not in ("br", "li", "dt", "dd", "tr") else "\n")

    def handle_endtag(self, tag):
        if self.main and self.depth and tag == "div":
            self.depth -= 1
        if tag in self.SKIP and self.skip:
            self.skip -= 1
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self.depth and not self.skip:
            self.parts.append(data if self.pre else re.sub(r"[ \t\r\n]+", " ", data))

    def text(self) -> str:
        text = "".join(self.parts)
        text = re.sub(r"[ \t]*\n[ \t]*", "\n", text)
        text = re.sub(r"\n{3,}", "\n\n", text)
        return text.strip()


def html_to_text(raw: str, main: tuple[str, str] | None = None) -> str:
    parser = _HtmlText(main)
    parser.feed(raw)
    parser.close()
    return parser.text()


_TROFF_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_TROFF_ESC = {r"\-": "-", r"\(em": "—", r"\(en": "–", r"\(bu": "•", r"\(aq": "'", r"\(dq": '"', r"\e": "\\", r"\ ": " ", r"\&": "", r"\|": "", r"\^": "", r"\c": "", r"\(co": "©", r"\(lq": "“", r"\(rq": "”"}


def troff_to_text(raw: str) -> str:
    """A man page's troff source -> readable text (headings, paragraphs; fonts and macros dropped)."""
    out: list[str] = []
    for line in raw.splitlines():
        if line.startswith(('.\\"', "'\\\"", '.\\\\"')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            macro, _, rest = line[1:].partition(" ")
            macro = macro.strip()
            if macro in ("SH", "SS"):
                out.append("\n" + rest.strip().strip('"') + "\n")
            elif macro in ("PP", "P", "LP", "TP", "IP", "sp", "br"):
                out.append("\n")
                if macro == "IP" and rest.strip():
                    out.append(rest.strip().split('"')[1] if rest.strip().startswith('"') else rest.strip().split(" ")[0])
            elif macro in ("B", "I", "BI", "BR", "IB", "IR", "RB", "RI", "SM", "SB", "UR", "MT"):
                out.append(rest.replace('"', ""))
            continue
        out.append(line)
    text = "\n".join(out)
    text = _TROFF_FONT.sub("", text)
    for esc, rep in _TROFF_ESC.items():
        text = text.replace(esc, rep)
    text = re.sub(r"\\\(..", "", text)
    text = re.sub(r"\\s[-+]?\d+|\\[{}]|\\\*\(..|\\\*.", "", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def split_text(text: str, limit: int = DOC_CHARS) -> list[str]:
    """Cut a long text at paragraph breaks into pieces of at most ``limit`` characters (roughly)."""
    if len(text) <= limit:
        return [text] if text.strip() else []
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        if size and size + len(para) > limit:
            pieces.append("\n\n".join(current))
            current, size = [], 0
        while len(para) > limit:  # one giant paragraph: cut at a line break, else hard
            cut = para.rfind("\n", 0, limit)
            cut = cut if cut > limit // 4 else limit
            pieces.append(para[:cut])
            para = para[cut:].lstrip("\n")
        current.append(para)
        size += len(para) + 2
    if current:
        pieces.append("\n\n".join(current))
    return [p for p in pieces if p.strip()]


def _sorted_files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def _rel(path: Path) -> str:
    return str(path).removeprefix("/usr/share/")


def _python_html(root: Path) -> Iterator[tuple[str, str]]:
    for path in _sorted_files(root, "**/*.html"):
        if "_sources" in path.parts or path.name in ("genindex-all.html", "search.html") or path.name.startswith("genindex"):
            continue
        text = html_to_text(path.read_text(encoding="utf-8", errors="replace"), main=("role", "main"))
        for piece in split_text(text):
            yield piece, _rel(path)


def _python_rst(root: Path) -> Iterator[tuple[str, str]]:
    for path in _sorted_files(root, "**/*.txt"):
        for piece in split_text(path.read_text(encoding="utf-8", errors="replace")):
            yield piece, _rel(path)


def _debian_reference(lang: str) -> Callable[[Path], Iterator[tuple[str, str]]]:
    def docs(root: Path) -> Iterator[tuple[str, str]]:
        for path in _sorted_files(root, f"*.{lang}.html"):
            for piece in split_text(html_to_text(path.read_text(encoding="utf-8", errors="replace"))):
                yield piece, _rel(path)

    return docs


def _man_pages(pattern: str) -> Callable[[Path], Iterator[tuple[str, str]]]:
    def docs(root: Path) -> Iterator[tuple[str, str]]:
        for path in _sorted_files(root, pattern):
            if not path.name.endswith(".gz") or path.is_symlink():
                continue
            try:
                raw = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
            except (OSError, EOFError):
                continue
            if raw.startswith(".so "):  # a link to another page
                continue
            for piece in split_text(troff_to_text(raw)):
                yield piece, _rel(path)

    return docs


def _gcide(root: Path) -> Iterator[tuple[str, str]]:
    path = root / "gcide.dict.dz"  # dictzip is gzip-compatible
    text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    for piece in split_text(text.replace("\r\n", "\n"), limit=4000):
        yield piece, _rel(path)


def _copyright(root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(root.glob("*/copyright")):
        if path.is_file():
            for piece in split_text(path.read_text(encoding="utf-8", errors="replace")):
                yield piece, _rel(path)


def default_sources(usr_share: Path = Path("/usr/share")) -> list[Source]:
    doc = usr_share / "doc" / "python3.11" / "html"
    ref = usr_share / "debian-reference"
    return [
        Source("en", "code-docs", "python-html", doc, _python_html, "python3.11-doc"),
        Source("en", "code-docs", "python-rst", doc / "_sources", _python_rst, "python3.11-doc"),
        Source("en", "manual", "debian-reference", ref, _debian_reference("en"), "debian-reference-en", "*.en.html"),
        Source("ja", "manual", "debian-reference", ref, _debian_reference("ja"), "debian-reference-ja", "*.ja.html"),
        Source("ja", "manual", "man", usr_share / "man" / "ja", _man_pages("man*/*.gz"), "manpages-ja"),
        Source("en", "manual", "man", usr_share / "man", _man_pages("man[1-8]/*.gz")),
        Source("en", "dictionary", "gcide", usr_share / "dictd", _gcide, "dict-gcide", "gcide.dict.dz"),
        Source("en", "legal", "copyright", usr_share / "doc", _copyright),
    ]


@dataclass
class SampleStats:
    stem: str
    files: list[Path]
    docs: int = 0
    bytes: int = 0


class _ShardSink:
    """JSONL shards of at most ``shard_bytes`` for one source, written to temporary names."""

    def __init__(self, build: Path, stem: str, shard_bytes: int) -> None:
        self.build, self.stem, self.shard_bytes = build, stem, shard_bytes
        self.index = -1
        self.fh = None
        self.size = 0
        self.stats = SampleStats(stem, [])

    def write(self, text: str, source: str) -> int:
        line = (json.dumps({"source": source, "text": text}, ensure_ascii=False, sort_keys=True) + "\n").encode()
        if self.fh is None or (self.size and self.size + len(line) > self.shard_bytes):
            self._next()
        self.fh.write(line)
        self.size += len(line)
        self.stats.docs += 1
        self.stats.bytes += len(line)
        return len(line)

    def _next(self) -> None:
        if self.fh:
            self.fh.close()
        self.index += 1
        path = self.build / f"{self.stem}_split_{self.index:04d}.jsonl"
        self.stats.files.append(path)
        self.fh = open(path, "wb")
        self.size = 0

    def close(self) -> None:
        if self.fh:
            self.fh.close()


def build_sample(out: Path, mb: float = 1.0, shard_mb: float = 16.0, sources: list[Source] | None = None, console=None) -> list[SampleStats]:
    """Write about ``mb`` MB of JSONL (round-robin over the sources) into ``out``; deterministic bytes."""
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder", "give a folder (new or one of an earlier sample)")
    sources = sources or default_sources()
    absent = [s for s in sources if not s.present()]
    packages = list(dict.fromkeys(s.package for s in absent if s.package))
    if packages:
        from experiment.system_packages import install_command

        raise DataError(absent[0].root, f"source {', '.join(s.stem for s in absent if s.package)} is missing: "
                        f"Debian package(s) {' '.join(packages)} not installed", install_command(packages))
    sources = [s for s in sources if s.present()]
    if not sources:
        raise DataError("/usr/share", "none of the sample sources exists", "pass sources whose folders exist")
    out.mkdir(parents=True, exist_ok=True)
    build = out / f".sample-build-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    budget = int(mb * 1e6)
    iters = {s.stem: s.documents(s.root) for s in sources}
    sinks = {s.stem: _ShardSink(build, s.stem, int(shard_mb * 1e6)) for s in sources}
    total = 0
    progress = None
    if console is not None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        progress = Progress(TextColumn("sample"), BarColumn(), DownloadColumn(), console=console, transient=True)
        progress.start()
        task = progress.add_task("sample", total=budget)
    try:
        while total < budget and iters:
            for stem in list(iters):
                try:
                    text, origin = next(iters[stem])
                except StopIteration:
                    del iters[stem]
                    continue
                n = sinks[stem].write(text, origin)
                total += n
                if progress:
                    progress.advance(task, n)
                if total >= budget:
                    break
    finally:
        for sink in sinks.values():
            sink.close()
        if progress:
            progress.stop()
    stats = [sink.stats for sink in sinks.values() if sink.stats.docs]
    produced = set()
    for st in stats:
        final = []
        for path in st.files:
            target = out / path.name
            os.replace(path, target)
            final.append(target)
            produced.add(target.name)
        st.files = final
    for s in sources:  # shards of an earlier, larger sample in the same folder
        for old in out.glob(f"{s.stem}_split_*.jsonl"):
            if old.name not in produced:
                old.unlink()
    shutil.rmtree(build, ignore_errors=True)
    if console is not None:
        from rich.table import Table

        table = Table(title=f"sample corpus in {out} ({total / 1e6:.1f} MB)")
        for col in ("source", "shards", "docs", "MB"):
            table.add_column(col, justify="left" if col == "source" else "right")
        for st in stats:
            table.add_row(st.stem, str(len(st.files)), f"{st.docs:,}", f"{st.bytes / 1e6:.2f}")
        console.print(table)
    return stats
