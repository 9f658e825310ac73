"""Fixtures for checkpoint conversion: a real Llama-family tokenizer folder, one process group."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def llama_tokenizer_dir(sp_model_path, tmp_path_factory) -> Path:
    """The Mistral 32k SentencePiece model as a transformers tokenizer folder (tokenizer.json + config)."""
    from transformers import LlamaTokenizer

    src = tmp_path_factory.mktemp("sp")
    shutil.copy(sp_model_path, src / "tokenizer.model")
    out = tmp_path_factory.mktemp("tokenizer")
    LlamaTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    return out


@pytest.fixture()
def dist1():
    """A single-process gloo group with TP=1/PP=1 megatron state (idempotent across tests)."""
    from experiment.model import parallel as distributed

    distributed.initialize()
    yield
