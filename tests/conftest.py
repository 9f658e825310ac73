"""Shared fixtures: the real Llama-family SentencePiece tokenizer that ships in mistral-common."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sp_model_path() -> Path:
    """Mistral's 32k SentencePiece model (Llama-family BPE), from the PyPI package mistral-common."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    assert path.is_file(), f"mistral-common no longer ships {path}"
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
