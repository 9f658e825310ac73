"""Real tokenized text for the training tests: two domains, written the way the kit writes shards.

``pydoc``: the reStructuredText sources of the Python 3.11 library docs (python3.11-doc);
``debref``: the English Debian Reference (debian-reference-en), HTML stripped to text. Tokenized with
mistral-common's real 32k SentencePiece model and written with megatron.core's IndexedDatasetBuilder.
"""

from __future__ import annotations

import html.parser
from pathlib import Path

import numpy as np

PYDOC = Path("/usr/share/doc/python3.11/html/_sources/library")
DEBREF = Path("/usr/share/debian-reference")


class _Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data):
        if data.strip():
            self.parts.append(data.strip())


def _documents(domain: str, limit_chars: int) -> list[str]:
    docs, total = [], 0
    if domain == "pydoc":
        files = sorted(PYDOC.glob("*.rst.txt"))
        read = lambda p: p.read_text(errors="replace")  # noqa: E731
    else:
        files = sorted(DEBREF.glob("*.en.html"))

        def read(p):
            parser = _Text()
            parser.feed(p.read_text(errors="replace"))
            return "\n".join(parser.parts)
    for path in files:
        text = read(path)
        # documents of a few kB: many documents, so a held-out split per source is possible
        for start in range(0, len(text), 4000):
            chunk = text[start:start + 4000]
            if len(chunk) > 200:
                docs.append(chunk)
                total += len(chunk)
            if total >= limit_chars:
                return docs
    return docs


def build_corpus(out_dir: Path, sp_model: Path, chars_per_domain: int = 400_000) -> Path:
    """Write the shards and ``signature.json`` into ``out_dir``; returns the signature's path."""
    import sentencepiece as spm
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from experiment.data.naming import make
    from experiment.data.signature import DataSignature, ShardEntry, TokenizerInfo
    from experiment.hashing import hash_file

    out_dir.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    eod = sp.eos_id()
    shards = []
    for domain in ("pydoc", "debref"):
        docs = _documents(domain, chars_per_domain)
        ids = sp.encode(docs)
        tokens = sum(len(d) + 1 for d in ids)
        name = make("en", domain, "main", 0).with_counts(len(docs), len(docs), tokens).format()
        builder = IndexedDatasetBuilder(str(out_dir / f"{name}.bin"), dtype=np.uint16)
        for doc in ids:
            builder.add_document(torch.tensor(doc + [eod], dtype=torch.int64), [len(doc) + 1])
        builder.finalize(str(out_dir / f"{name}.idx"))
        shards.append(ShardEntry(
            prefix=name, language="en", domain=domain, subdomain="main", docs=len(docs), sentences=len(docs),
            tokens=tokens, bin_bytes=(out_dir / f"{name}.bin").stat().st_size,
            idx_bytes=(out_dir / f"{name}.idx").stat().st_size, dtype="uint16",
            # hashed like `experiment data signature`: each segment of a run checks its shards against them
            bin_hash=hash_file(out_dir / f"{name}.bin"), idx_hash=hash_file(out_dir / f"{name}.idx"),
        ))
    sig = DataSignature(
        name="train-tests", root=".",
        tokenizer=TokenizerInfo(kind="sentencepiece", name=sp_model.name, sha256="test", vocab_size=sp.vocab_size(),
                                eod_id=eod),
        shards=shards,
    )
    path = out_dir / "signature.json"
    path.write_text(sig.to_json())
    return path


FOLDER_TOML = """
name = "{name}"
[data]
signatures = ["{signature}"]
data_ratio = "data_ratio.json"
valid_fraction = {valid_fraction}
[model]
preset = "tiny"
seq_length = {seq_length}
[training]
tensor_parallel = {tp}
pipeline_parallel = {pp}
micro_batch_size = {mbs}
global_batch_size = {gbs}
train_iters = {iters}
lr = {lr}
min_lr = {min_lr}
lr_warmup_iters = {warmup}
lr_decay_style = "cosine"
precision = "{precision}"
save_interval = {save_interval}
eval_interval = {eval_interval}
eval_iters = {eval_iters}
seed = 1234
deterministic = true
[checkpoint]
{checkpoint}
[launch]
nproc_per_node = {nproc}
"""


def make_folder(path: Path, signature: Path, *, name: str = "t", tp: int = 1, pp: int = 1, nproc: int = 2,
                iters: int = 8, mbs: int = 2, gbs: int = 8, seq_length: int = 64, lr: float = 3e-3,
                min_lr: float = 3e-4, warmup: int = 2, precision: str = "fp32", save_interval: int = 4,
                eval_interval: int = 4, eval_iters: int = 1, valid_fraction: float = 0.05,
                checkpoint: str = "from_scratch = true") -> Path:
    import json

    path.mkdir(parents=True, exist_ok=True)
    (path / "experiment.toml").write_text(FOLDER_TOML.format(
        name=name, signature=str(signature), valid_fraction=valid_fraction, seq_length=seq_length, tp=tp, pp=pp,
        mbs=mbs, gbs=gbs, iters=iters, lr=lr, min_lr=min_lr, warmup=warmup, precision=precision,
        save_interval=save_interval, eval_interval=eval_interval, eval_iters=eval_iters,
        checkpoint=checkpoint, nproc=nproc))
    (path / "data_ratio.json").write_text(json.dumps({"pydoc": 1.0, "debref": 1.0}))
    return path
