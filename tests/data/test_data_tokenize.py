"""Tokenize end to end with real tokenizers; megatron.core reads every document back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from experiment.data import naming, sources
from experiment.data.tokenize import TokenizeConfig, run


def _inputs_by_stem(sample_dir: Path) -> dict[str, Path]:
    return {sources.stem_of(p): p for p in sources.find_inputs([sample_dir])}


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.suffix in (".bin", ".idx")}


def test_sentencepiece_ids_equal_own_encode_plus_eod_for_every_document(sample_dir, sp_shards, sp_model_path, read_docs):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    inputs = _inputs_by_stem(sample_dir)
    prefixes = sorted(p.with_suffix("") for p in sp_shards.glob("*.idx"))
    assert len(prefixes) == len(inputs) == 8
    total = 0
    for prefix in prefixes:
        name = naming.parse(prefix.name)
        source = inputs[name.stem.removesuffix("_text_document")]
        texts = [d.text for d in sources.iter_documents(source)]
        expected = [ids + [sp.eos_id()] for ids in sp.encode(texts)]
        got = read_docs(prefix)
        assert got == expected, prefix.name
        assert (name.docs, name.sentences, name.tokens) == (len(got), len(got), sum(map(len, got)))
        assert prefix.with_suffix(".bin").stat().st_size == 2 * name.tokens  # uint16 for a 32k vocabulary
        total += len(got)
    assert total > 50


def test_fast_backend_writes_the_same_bytes_as_the_reference(sample_dir, sp_shards, sp_model_path, tmp_path):
    info = json.loads((sp_shards / "tokenizer_info.json").read_text())
    report = run(TokenizeConfig(inputs=[sample_dir], output=tmp_path, tokenizer=sp_model_path, backend="reference", progress=False))
    assert "reference" in report.backend_note
    assert _digest(tmp_path) == _digest(sp_shards)
    assert json.loads((tmp_path / "tokenizer_info.json").read_text()) == info


def test_literal_special_tokens_are_plain_text(tmp_path, sp_model_path, sp_tokenizer_json, read_docs):
    import sentencepiece as spm
    from tokenizers import Tokenizer

    texts = ["a <s> b </s> c <unk>", "<s>", "</s></s>", "x<|endoftext|>y <|im_start|>user", "[INST] hi [/INST]"]
    src = tmp_path / "en_web_special_split_0.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    reference = Tokenizer.from_file(str(sp_tokenizer_json))
    reference.encode_special_tokens = True
    for tok in (sp_model_path, sp_tokenizer_json):  # gigatoken on both (asked: auto takes the reference this small); references checked below
        out = tmp_path / f"out-{tok.name}"
        report = run(TokenizeConfig(inputs=[src], output=out, tokenizer=tok, progress=False, backend="gigatoken"))
        assert report.backend_note.startswith("gigatoken")
        docs = read_docs(next(out.glob("*.idx")).with_suffix(""))
        assert docs == [sp.encode(t) + [2] for t in texts]
        assert docs == [reference.encode(t, add_special_tokens=False).ids + [2] for t in texts]
        assert all(1 not in d and 2 not in d[:-1] for d in docs)  # <s>/</s> never become control ids


def test_tokenizers_json_ids_equal_own_encode_for_every_document(sample_dir, sp_tokenizer_json, tmp_path, read_docs):
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(sp_tokenizer_json))
    tk.encode_special_tokens = True
    inputs = _inputs_by_stem(sample_dir)
    run(TokenizeConfig(inputs=[sample_dir], output=tmp_path, tokenizer=sp_tokenizer_json, progress=False))
    for idx in sorted(tmp_path.glob("*.idx")):
        name = naming.parse(idx.name)
        texts = [d.text for d in sources.iter_documents(inputs[name.stem.removesuffix("_text_document")])]
        assert read_docs(idx.with_suffix("")) == [e.ids + [2] for e in tk.encode_batch(texts, add_special_tokens=False)]


@pytest.mark.slow
def test_smollm2_byte_level_bpe_folder(sample_dir, smollm2_tokenizer_dir, tmp_path, read_docs):
    """SmolLM2's tokenizer (as the demo uses it): ids == tokenizers' encode, special strings as text."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(smollm2_tokenizer_dir / "tokenizer.json"))
    eos = json.loads((smollm2_tokenizer_dir / "tokenizer_config.json").read_text())["eos_token"]
    eod = tk.token_to_id(eos)
    tk.encode_special_tokens = True
    picked = sorted(sample_dir.glob("*.jsonl"))[:3]
    special = tmp_path / "en_web_special_split_0.jsonl"
    special.write_text(json.dumps({"text": "x <|endoftext|> <|im_start|>user hi<|im_end|> 日本語"}) + "\n")
    out = tmp_path / "out"
    report = run(TokenizeConfig(inputs=[*picked, special], output=out, tokenizer=smollm2_tokenizer_dir, progress=False))
    assert report.shards and all(not s.skipped for s in report.shards)
    for path, shard in zip(sorted([*picked, special]), report.shards):
        texts = [d.text for d in sources.iter_documents(path)]
        expected = [e.ids + [eod] for e in tk.encode_batch(texts, add_special_tokens=False)]
        assert read_docs(shard.prefix) == expected
    specials = {t.content for t in tk.get_added_tokens_decoder().values() if t.special}
    ids = read_docs(report.shards[-1].prefix)[0]
    assert not any(tk.id_to_token(i) in specials for i in ids[:-1])


def test_rerun_skips_finished_outputs(sample_dir, sp_shards, sp_model_path):
    before = _digest(sp_shards)
    report = run(TokenizeConfig(inputs=[sample_dir], output=sp_shards, tokenizer=sp_model_path, progress=False))
    assert all(s.skipped for s in report.shards)
    assert _digest(sp_shards) == before


def test_names_from_the_command_line(tmp_path, sp_model_path):
    src = tmp_path / "raw" / "some file.txt"
    src.parent.mkdir()
    src.write_text("first document\n\nsecond document\r\n")
    report = run(TokenizeConfig(inputs=[src.parent], output=tmp_path / "o", tokenizer=sp_model_path, language="en",
                                domain="web", progress=False))
    (shard,) = report.shards
    assert shard.prefix.name.startswith("en_web_some-file_split_0000_text_document_dc=2_sc=2_tc=")
    assert shard.empty_docs == 1


def test_converted_tokenizer_is_cached_by_hash(sp_model_path, tmp_path):
    from experiment.data.gigatoken_encoder import _gigatoken_json
    from experiment.data.tokenizer_spec import resolve_tokenizer

    spec = resolve_tokenizer(sp_model_path)
    first = _gigatoken_json(spec, tmp_path)
    (cached,) = tmp_path.glob("gigatoken-*.json")
    assert spec.sha256() in cached.name and cached.read_text() == first
    assert _gigatoken_json(spec, tmp_path) == first == _gigatoken_json(spec, None)
    assert not json.loads(first)["added_tokens"]  # <s>, </s> removed: they stay text


@pytest.mark.parametrize("whole_files", [True, False], ids=["whole-files", "blocks"])
def test_spot_check_catches_fast_ids_that_differ_from_the_reference(whole_files, tmp_path, sp_model_path, monkeypatch):
    """The leading documents' written ids are re-encoded by sentencepiece: a wrong id stops the input
    (whether gigatoken read the file itself or was handed blocks of texts)."""
    from experiment.data import gigatoken_encoder
    from experiment.data.errors import DataError

    src = tmp_path / "in" / "en_web_spot_split_0.jsonl"
    src.parent.mkdir()
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["first document", "", "second document", "third"]))
    real, real_files = gigatoken_encoder.GigatokenEncoder.encode_texts, gigatoken_encoder.encode_jsonl

    def wrong(self, texts):
        flat, offsets = real(self, texts)
        if isinstance(texts, list):  # the load-time probe passes lists: leave it right
            return flat, offsets
        flat = flat.copy()
        flat[offsets[1]] += 1  # first id of the second non-empty document (the empty one is dropped)
        return flat, offsets

    def wrong_files(tok, paths, key):
        flat, offsets = real_files(tok, paths, key)
        flat = flat.copy()
        flat[offsets[2]] += 1  # the same document: here the empty text is still row 1
        return flat, offsets

    monkeypatch.setattr(gigatoken_encoder.GigatokenEncoder, "encode_texts", wrong)
    monkeypatch.setattr(gigatoken_encoder, "encode_jsonl", wrong_files)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="ids differ from sentencepiece on document 2"):
        run(TokenizeConfig(inputs=[src], output=out, tokenizer=sp_model_path, backend="gigatoken", progress=False,
                           whole_files=whole_files))
    assert not [p for p in out.iterdir() if p.suffix in (".bin", ".idx") or ".tmp" in p.name]


def test_empty_documents_are_dropped_from_sliced_arrow_blocks():
    import numpy as np
    import pyarrow as pa

    from experiment.data import encoder_base, gigatoken_encoder
    from experiment.data.tokenize_input import _drop_empty

    for kind in (pa.string(), pa.large_string()):
        texts = pa.array(["", "ab", "", "c", "déf", ""], type=kind).slice(1, 4)
        kept, dropped = _drop_empty(texts)
        assert kept.to_pylist() == ["ab", "c", "déf"] and dropped == 1
        assert encoder_base.arrow_offsets(kept).tolist() == [0, 2, 3, 7]
        assert gigatoken_encoder._arrow_to_awkward(texts).tolist() == ["ab", "", "c", "déf"]
        assert np.diff(encoder_base.arrow_offsets(texts)).tolist() == [2, 0, 1, 4]


@pytest.mark.parametrize("texts,chars,most,expected", [
    (["aaaa", "bb", "c"], 6, 256, ["aaaa", "bb"]),  # the longest run within the characters
    (["aaa", "aaa", "a"], 6, 256, ["aaa", "aaa"]),  # exactly at the bound
    (["aaaaaaa", "b"], 6, 256, ["aaaaaaa"]),  # at least one, even when it alone is over
    (["a"] * 5, 100, 3, ["a"] * 3),  # at most `most`
])
def test_spot_sample_rule(texts, chars, most, expected):
    """The block reader and the whole-file check take the spot-check sample by the same rule."""
    import pyarrow as pa

    from experiment.data.encoders import SpotSample
    from experiment.data.tokenize_input import _leading

    sample = SpotSample(chars, most)
    for text in texts:
        if not sample.offer(text):
            break
    assert sample.texts == expected
    block = pa.array(["x" * 10_000, "y" * 5_000, "z" * 2_000])  # the block reader's sample, 16,000 characters
    assert _leading(block) == ["x" * 10_000, "y" * 5_000]
