"""Each bad input gets a clear error naming file and line; shards already written stay intact."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from experiment.data.errors import DataError
from experiment.data.tokenize import TokenizeConfig, run

GOOD = "".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(3))
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + bytes(range(256))

CASES = {
    "malformed": ("jsonl", GOOD.encode() + b'{"text": "unterminated\n', 4, "malformed JSON"),
    "missing_key": ("jsonl", b'{"text": "ok"}\n{"body": "no text key"}\n', 2, "missing text key 'text'"),
    "not_string": ("jsonl", b'{"text": "ok"}\n{"text": 42}\n', 2, "not a string"),
    "null_text": ("jsonl", b'{"text": null}\n', 1, "not a string"),
    "empty": ("jsonl", b"", 0, "the file is empty"),
    "blank_only": ("jsonl", b"\n\n", 0, "no documents"),
    "binary_jsonl": ("jsonl", PNG, 1, "binary"),
    "bad_utf8": ("jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', 2, "not UTF-8"),
    "binary_txt": ("txt", b"fine line\n" + PNG, 2, "binary"),
    "binary_gz": ("jsonl.gz", gzip.compress(PNG), 1, "binary"),
    "corrupt_gz": ("jsonl.gz", b"\x1f\x8b\x08\x00garbage", 0, "cannot read|corrupt|binary"),
    "not_parquet": ("parquet", PNG, 0, "not a readable Parquet file"),
}


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture
def good_output(tmp_path, sp_model_path):
    """A folder with one finished shard (from en_web_a) that a failing run must not touch."""
    good = tmp_path / "in" / "en_web_a_split_0.jsonl"
    good.parent.mkdir()
    good.write_text(GOOD)
    out = tmp_path / "out"
    run(TokenizeConfig(inputs=[good], output=out, tokenizer=sp_model_path, progress=False))
    return good.parent, out, _hashes(out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_names_file_and_line(case, good_output, sp_model_path):
    folder, out, before = good_output
    ext, content, line, message = CASES[case]
    bad = folder / f"en_web_b_split_0.{ext}"
    bad.write_bytes(content)
    with pytest.raises(DataError) as info:
        run(TokenizeConfig(inputs=[folder], output=out, tokenizer=sp_model_path, progress=False))
    err = info.value
    assert Path(err.file) == bad and err.line == line and err.fix
    assert any(m in err.message for m in message.split("|")), err.message
    assert f"{bad}:{line}" in str(err) if line else str(bad) in str(err)
    assert _hashes(out) == before  # the finished shard is intact; no temporary files left behind


@pytest.mark.parametrize("tokenizer,message", [("missing.model", "tokenizer not found"), ("junk.bin", "unknown tokenizer file type"),
                                               ("broken.json", "not a tokenizer.json"), ("broken.model", "not a SentencePiece model")])
def test_unknown_tokenizer_path(tokenizer, message, good_output, tmp_path):
    folder, out, before = good_output
    path = tmp_path / tokenizer
    if tokenizer != "missing.model":
        path.write_bytes({"junk.bin": PNG, "broken.json": b"{not json", "broken.model": b"\n\x05hello"}[tokenizer])
    with pytest.raises(DataError, match=message) as info:
        run(TokenizeConfig(inputs=[folder], output=out, tokenizer=path, progress=False))
    assert Path(info.value.file) == path
    assert _hashes(out) == before


def test_output_without_space_by_free_space_check(good_output, sp_model_path):
    """Free space is checked before each shard and each block (here: a reserve larger than the disk)."""
    from experiment.data.shards import NoSpace

    folder, out, before = good_output
    (folder / "en_web_b_split_0.jsonl").write_text(GOOD)
    with pytest.raises(NoSpace, match="not enough free space") as info:
        run(TokenizeConfig(inputs=[folder], output=out, tokenizer=sp_model_path, reserve_bytes=1 << 60, progress=False))
    assert Path(info.value.file) == out
    assert _hashes(out) == before


def test_output_without_space_on_a_real_full_disk(tmp_path, sp_model_path, sample_dir):
    """A real 256 KiB tmpfs fills up mid-run: clear error, finished shards kept, no partial file."""
    from experiment.data.shards import NoSpace

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True,
                      timeout=60).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the free-space check above still runs")
    try:
        with pytest.raises(NoSpace) as info:
            run(TokenizeConfig(inputs=[sample_dir], output=mnt, tokenizer=sp_model_path, progress=False))
        assert Path(info.value.file) == mnt
        left = sorted(p.name for p in mnt.iterdir())
        assert not [p for p in left if p.startswith(".") and ".tmp" in p], left
        from experiment.data.shards import read_shard

        for idx in mnt.glob("*.idx"):  # whatever finished is complete and readable
            read_shard(idx.with_suffix(""))
    finally:
        subprocess.run(["umount", str(mnt)], check=False, timeout=60)


def test_cli_prints_file_line_and_fix(tmp_path, sp_model_path):
    from typer.testing import CliRunner

    from experiment.cli import app

    bad = tmp_path / "en_web_a_split_0.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "broken"\n')
    result = CliRunner().invoke(app, ["data", "tokenize", str(bad), "-o", str(tmp_path / "o"), "-t", str(sp_model_path), "--no-progress"])
    assert result.exit_code == 2
    said = " ".join(result.output.split())  # rich wraps at the terminal width
    assert f"{bad}:2" in said and "malformed JSON" in said and "fix:" in said, result.output
