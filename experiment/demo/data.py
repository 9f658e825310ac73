"""The data half of the embedded demo: sample corpus -> tokenize -> count -> signature.

``run_data_demo`` is what ``experiment data demo`` (and ``nox -s demo``) runs; the full demo calls it
(or the same CLI stages) before planning the mixture and training. Every stage is restartable:
the sample is rebuilt byte-identically, tokenize skips finished shards, count only renames when a
name is wrong, and the signature is rewritten atomically with the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiment.data.errors import DataError


@dataclass(frozen=True)
class DataDemoResult:
    raw: Path
    shards: Path
    signature: Path
    docs: int
    tokens: int


def default_tokenizer() -> Path:
    """Mistral's Llama-family SentencePiece model from mistral-common (the tests' tokenizer)."""
    try:
        import mistral_common
    except ImportError:
        raise DataError("mistral-common", "no default tokenizer installed", "pass --tokenizer or pip install mistral-common") from None
    return Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


def run_data_demo(work: Path, signatures: Path, tokenizer: Path | None = None, mb: float = 2.0,
                  name: str = "demo-data", console=None) -> DataDemoResult:
    """Build ``mb`` MB of real text in ``work/raw``, shards in ``work/shards``, ``signatures/<name>.json``."""
    from experiment.data import count, signature
    from experiment.data.tokenize import TokenizeConfig, run
    from experiment.data.tokenize_output import TOKENIZER_INFO
    from experiment.demo.corpus import build_sample

    tokenizer = tokenizer or default_tokenizer()
    raw, shards = work / "raw", work / "shards"
    build_sample(raw, mb=mb, console=console)
    run(TokenizeConfig(inputs=[raw], output=shards, tokenizer=tokenizer, progress=console is not None), console=console)
    recount = count.count([shards])
    wrong = [r for r in recount if r.renamed]
    if wrong:
        raise DataError(wrong[0].old, "a freshly written shard's name disagreed with its recount", "report this bug")
    info = signature.TokenizerInfo.model_validate_json((shards / TOKENIZER_INFO).read_text())
    built = signature.build(shards, name, signatures, info)
    path = signature.write(built, signatures)
    docs = sum(s.docs for s in built.shards)
    tokens = sum(s.tokens for s in built.shards)
    if console is not None:
        from rich.table import Table

        table = Table(title="data demo outputs")
        table.add_column("what")
        table.add_column("where")
        table.add_row("raw JSONL (sample corpus)", str(raw))
        table.add_row(f"Megatron shards ({len(built.shards)}, {docs:,} docs, {tokens:,} tokens)", str(shards))
        table.add_row("data signature", str(path))
        console.print(table)
    return DataDemoResult(raw, shards, path, docs, tokens)
