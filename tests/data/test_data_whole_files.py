"""Whole-file JSONL inputs (gigatoken's own reader, our line check): the same bytes and the same errors
as the block reader, for every kind of line gigatoken's lenient reader would read differently."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from experiment.data import encoders, gigatoken_encoder
from experiment.data.errors import DataError
from experiment.data.tokenize import TokenizeConfig, run


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _tokenize(inputs, out, tok, **kw):
    kw.setdefault("small_input_bytes", 0)  # these inputs are tiny: keep them on gigatoken's whole-file path
    return run(TokenizeConfig(inputs=inputs, output=out, tokenizer=tok, progress=False, **kw))


AWKWARD = [  # lines that are valid, but unusual
    {"text": ""}, {"text": "   "}, {"text": "\u3000 full-width blank"}, {"text": "tab\tand \\ backslash \"quoted\""},
    {"meta": {"text": "nested key, not the document"}, "text": "outer text wins"}, {"type": "text", "text": "key name as a value"},
    {"text": "emoji 🤗 and 日本語", "id": 7}, {"text": "</s> <s> literal specials"}, {"text": "x" * 5000},
]


def _awkward_file(path: Path) -> None:
    lines = [json.dumps(r, ensure_ascii=i % 2 == 0) for i, r in enumerate(AWKWARD)]
    path.write_bytes(("\r\n".join(lines[:3]) + "\r\n\n   \n" + "\n".join(lines[3:])).encode())  # CRLF, blank lines, no final \n


def test_whole_files_write_the_block_readers_bytes(sample_dir, sp_model_path, tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in sample_dir.glob("*.jsonl"):
        (inputs / p.name).write_bytes(p.read_bytes())
    _awkward_file(inputs / "en_web_awkward_split_0.jsonl")
    import gzip

    import zstandard

    awkward = (inputs / "en_web_awkward_split_0.jsonl").read_bytes()
    (inputs / "en_web_awkward_split_1.jsonl.gz").write_bytes(gzip.compress(awkward))  # these two keep the block reader
    (inputs / "en_web_awkward_split_2.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(awkward))
    calls = []
    real = gigatoken_encoder.encode_jsonl
    monkeypatch.setattr(gigatoken_encoder, "encode_jsonl", lambda tok, paths, key: calls.append(len(paths)) or real(tok, paths, key))
    whole = _tokenize([inputs], tmp_path / "whole", sp_model_path, group_bytes=150_000)
    blocks = _tokenize([inputs], tmp_path / "blocks", sp_model_path, whole_files=False)
    assert len(calls) > 1 and sum(calls) == len(list(inputs.glob("*.jsonl")))  # several groups, every .jsonl in one
    assert _digest(tmp_path / "whole") == _digest(tmp_path / "blocks")
    assert [(s.docs, s.tokens, s.empty_docs) for s in whole.shards] == [(s.docs, s.tokens, s.empty_docs) for s in blocks.shards]
    for shard in (s for s in whole.shards if "awkward" in s.prefix.name):
        assert shard.empty_docs == 1 and shard.docs == len(AWKWARD) - 1  # "" dropped, "   " kept (EOD only)


GOOD = b'{"text": "a good first document"}\n{"text": "and a second"}\n'
# (content of the bad file, line the error must name, words of the message). The first six are lines
# gigatoken's reader reads leniently (it takes "a"); the last four it skips.
LENIENT = {
    "junk_after_object": (GOOD + b'{"text": "a"} junk\n', 3, "malformed JSON"),
    "trailing_comma": (GOOD + b'{"text": "a", }\n', 3, "malformed JSON"),
    "two_objects": (b'{"text": "a"} {"text": "b"}\n', 1, "malformed JSON"),
    "repeated_key": (GOOD + b'{"text": "a", "text": "b"}\n', 3, "appears twice"),
    "broken_array": (GOOD + b'{"text": "a", "x": [1, 2,}\n', 3, "malformed JSON"),
    "control_char": (b'{"text": "a\x01b"}\n', 1, "malformed JSON"),
    "null_text": (GOOD + b'{"text": null}\n', 3, "not a string"),
    "number_text": (GOOD + b'{"text": 5}\n', 3, "not a string"),
    "missing_key": (GOOD + b'{"body": "a"}\n', 3, "missing text key"),
    "lone_surrogate": (GOOD + b'{"text": "a\\ud800"}\n', 3, "surrogate"),
}


@pytest.mark.parametrize("case", sorted(LENIENT))
def test_lines_gigatoken_reads_leniently_get_the_strict_error(case, sp_model_path, tmp_path):
    content, line, words = LENIENT[case]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "en_web_a_split_0.jsonl").write_bytes(GOOD)  # same group as the bad file, before it
    bad = folder / "en_web_b_split_0.jsonl"
    bad.write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        _tokenize([folder], out, sp_model_path)
    assert Path(info.value.file) == bad and info.value.line == line and words in info.value.message, info.value
    names = [p.name for p in out.iterdir()]
    assert any(n.startswith("en_web_a_split_0_text_document_dc=2") and n.endswith(".idx") for n in names), names
    assert not any(n.startswith("en_web_b") or ".tmp" in n for n in names), names


@pytest.mark.parametrize("content", [b'\xef\xbb\xbf{"text": "starts with a BOM"}\n{"text": "x"}\n',
                                     '{"text": "a"}\n\u3000\u00a0\n{"text": "b"}\n'.encode()],
                         ids=["bom", "unicode-blank-line"])
def test_files_in_doubt_behave_as_with_the_block_reader(content, sp_model_path, tmp_path):
    src = tmp_path / "in" / "en_web_doubt_split_0.jsonl"
    src.parent.mkdir()
    src.write_bytes(content)
    outcomes = []
    for whole in (True, False):
        out = tmp_path / f"out-{whole}"
        try:
            _tokenize([src], out, sp_model_path, whole_files=whole)
            outcomes.append(_digest(out))
        except DataError as err:
            outcomes.append((err.file, err.line, err.message))
    assert outcomes[0] == outcomes[1]


def test_large_files_and_a_count_mismatch_use_the_block_reader(sample_dir, sp_shards, sp_model_path, tmp_path, monkeypatch):
    def refuse(*a):
        raise AssertionError("a file above whole_file_bytes was read whole")

    real = gigatoken_encoder.encode_jsonl
    monkeypatch.setattr(gigatoken_encoder, "encode_jsonl", refuse)
    _tokenize([sample_dir], tmp_path / "big", sp_model_path, whole_file_bytes=1000)
    assert _digest(tmp_path / "big") == _digest(sp_shards)

    def one_row_short(tok, paths, key):  # as if gigatoken had skipped a line our check accepted
        flat, offsets = real(tok, paths, key)
        return flat[: offsets[-2]], offsets[:-1]

    monkeypatch.setattr(gigatoken_encoder, "encode_jsonl", one_row_short)
    _tokenize([sample_dir], tmp_path / "short", sp_model_path)
    assert _digest(tmp_path / "short") == _digest(sp_shards)


def test_a_failed_probe_discards_the_early_encoding(sample_dir, sp_shards, sp_model_path, tmp_path, monkeypatch):
    """gigatoken starts on the whole files before the probe has run; if the probe then fails, the
    reference encodes every input and nothing gigatoken made is written."""
    monkeypatch.setattr(encoders, "same_ids", lambda a, b, texts: [0])
    report = _tokenize([sample_dir], tmp_path / "out", sp_model_path, cache_dir=tmp_path / "cache")  # a fresh load_encoder
    assert "sentencepiece" in report.backend_note and "differs" in report.backend_note
    assert _digest(tmp_path / "out") == _digest(sp_shards)
