"""The encoder interface: a backend is one registered class, and nothing outside encoders.py asks which
class an encoder is."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from experiment.data import encoder_base, encoders, gigatoken_encoder, reference_encoders
from experiment.data.tokenize import TokenizeConfig, run

BACKEND_CLASSES = {"SentencePieceEncoder", "TokenizersEncoder", "GigatokenEncoder"}


def test_no_module_dispatches_on_an_encoder_class():
    root = Path(encoders.__file__).resolve().parents[1]
    for path in root.rglob("*.py"):
        if path.name == "encoders.py" and path.parent.name == "data":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            assert name not in BACKEND_CLASSES, f"{path}:{node.lineno} names {name}: use the Encoder interface"


def test_a_new_backend_is_one_registered_class(monkeypatch, sample_dir, sp_model_path, sp_shards, tmp_path):
    """A toy fast backend (sentencepiece behind another name): offered by --backend, probed, used by auto
    before gigatoken when registered first, and its shards equal the reference's."""
    calls = []

    class Toy(encoder_base.Encoder):
        backend = "toy"

        @classmethod
        def load(cls, spec, reference, threads=None, cache_dir=None):
            toy = cls()
            toy.inner = reference_encoders.SentencePieceEncoder(spec, threads)
            toy.vocab_size, toy.eod_id = reference.vocab_size, reference.eod_id
            return toy

        def encode_texts(self, texts):
            calls.append(len(texts))
            return self.inner.encode_texts(texts)

    monkeypatch.setattr(encoder_base, "_REGISTRY", {})
    for cls in (reference_encoders.SentencePieceEncoder, reference_encoders.TokenizersEncoder, Toy,
                gigatoken_encoder.GigatokenEncoder):
        encoder_base.register(cls)
    encoders._load_encoder.cache_clear()
    assert encoder_base.backend_choices() == ("auto", "reference", "toy", "gigatoken")
    out = tmp_path / "out"
    report = run(TokenizeConfig(inputs=[sample_dir], output=out, tokenizer=sp_model_path, progress=False))
    encoders._load_encoder.cache_clear()
    assert report.backend_note.startswith("toy") and calls
    for ours in sorted(out.glob("*.bin")):
        assert np.array_equal(np.fromfile(ours, np.uint16), np.fromfile(sp_shards / ours.name, np.uint16))
