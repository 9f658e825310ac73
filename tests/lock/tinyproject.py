"""A tiny project for the lockfile and container tests: real text (Python docs), mistral-common's
SentencePiece model, megatron.core's IndexedDatasetBuilder, a signature carrying blake3 hashes, and a
training folder that points at it with ``../../`` paths (as the repo's training/<name> folders do)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PYDOC = Path("/usr/share/doc/python3.11/html/_sources/library")

TOML = """name = "tiny-lock"
[data]
signatures = ["../../data_signatures/tiny.json"]
data_ratio = "data_ratio.json"
valid_fraction = 0.0
[model]
preset = "tiny"
seq_length = 32
[training]
micro_batch_size = 2
global_batch_size = 4
train_iters = {iters}
lr = 0.001
min_lr = 0.0001
precision = "fp32"
save_interval = {save_interval}
eval_interval = 1000
eval_iters = 0
seed = 1234
deterministic = true
[checkpoint]
from_scratch = true
[launch]
nproc_per_node = 1
"""


def _texts(n_docs: int, offset: int) -> list[str]:
    files = sorted(PYDOC.glob("*.rst.txt"))
    docs = []
    for p in files[offset:]:
        text = p.read_text(errors="replace")
        docs += [text[i:i + 1500] for i in range(0, min(len(text), 6000), 1500) if len(text[i:i + 1500]) > 200]
        if len(docs) >= n_docs:
            return docs[:n_docs]
    return docs


def write_shards(root: Path, sp_model: Path) -> list[dict]:
    import sentencepiece as spm
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from experiment.data.naming import make
    from experiment.lock.hashing import hash_file

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (domain, split) in enumerate((("code", 0), ("code", 1), ("docs", 0))):
        docs = _texts(12, 40 * i)
        ids = sp.encode(docs)
        tokens = sum(len(d) + 1 for d in ids)
        name = make("en", domain, "main", split).with_counts(len(docs), len(docs), tokens).format()
        builder = IndexedDatasetBuilder(str(root / f"{name}.bin"), dtype=np.uint16)
        for doc in ids:
            builder.add_document(torch.tensor(doc + [sp.eos_id()], dtype=torch.int64), [len(doc) + 1])
        builder.finalize(str(root / f"{name}.idx"))
        entries.append(dict(
            prefix=name, language="en", domain=domain, subdomain="main", docs=len(docs), sentences=len(docs),
            tokens=tokens, bin_bytes=(root / f"{name}.bin").stat().st_size,
            idx_bytes=(root / f"{name}.idx").stat().st_size, dtype="uint16",
            bin_hash=hash_file(root / f"{name}.bin"), idx_hash=hash_file(root / f"{name}.idx"),
        ))
    return entries


def write_signature(path: Path, entries: list[dict], sp_model: Path, root: str = "../data/tiny") -> None:
    from experiment.data.signature import DataSignature
    from experiment.lock.hashing import hash_file

    sig = DataSignature.model_validate({
        "name": "tiny", "root": root, "hash_algorithm": "blake3",
        "tokenizer": {"kind": "sentencepiece", "name": sp_model.name, "sha256": hash_file(sp_model, "sha256"),
                      "vocab_size": 32000, "eod_id": 2},
        "shards": entries,
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sig.to_json())


def make_project(base: Path, sp_model: Path) -> Path:
    """base/{data/tiny, data_signatures/tiny.json, training/tiny}."""
    entries = write_shards(base / "data" / "tiny", sp_model)
    write_signature(base / "data_signatures" / "tiny.json", entries, sp_model)
    folder = base / "training" / "tiny"
    folder.mkdir(parents=True)
    (folder / "experiment.toml").write_text(TOML.format(iters=4, save_interval=2))
    (folder / "data_ratio.json").write_text(json.dumps({"code": 1.0, "docs": 2.0}, indent=1) + "\n")
    (folder / "README.md").write_text("A tiny run for the lockfile tests.\n")
    return base
