"""A tokenize run really killed (SIGKILL) mid-way, then re-run, gives the same bytes as one clean run."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# Runs `tokenize.run` in a child process that SIGKILLs itself at a chosen point:
#   append N  -> after the N-th block written into a temporary .bin (inside a shard)
#   commit N  -> at the N-th shard, after its .bin got its final name but before its .idx did
CHILD = r"""
import os, signal, sys
from pathlib import Path
from experiment.data import shards
from experiment.data.tokenize import TokenizeConfig, run

mode, n, sample, out, tok = sys.argv[1], int(sys.argv[2]), *map(Path, sys.argv[3:6])
seen = {"append": 0, "commit": 0}
append, commit = shards.ShardWriter.append, shards.commit

def killing_append(self, *args):
    append(self, *args)
    seen["append"] += 1
    if mode == "append" and seen["append"] == n:
        os.kill(os.getpid(), signal.SIGKILL)

def killing_commit(tmp, final):
    seen["commit"] += 1
    if mode == "commit" and seen["commit"] == n:
        os.replace(f"{tmp}.bin", f"{final}.bin")
        os.kill(os.getpid(), signal.SIGKILL)
    commit(tmp, final)

shards.ShardWriter.append = killing_append
shards.commit = killing_commit
if __name__ == "__main__":
    run(TokenizeConfig(inputs=[sample], output=out, tokenizer=tok, block_bytes=1 << 14, progress=False))
"""


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("mode,n", [("append", 6), ("commit", 3)])
def test_killed_run_resumes_to_identical_bytes(mode, n, sample_dir, sp_shards, sp_model_path, tmp_path):
    from experiment.data.tokenize import TokenizeConfig, run

    out = tmp_path / "out"
    child = subprocess.run([sys.executable, "-c", CHILD, mode, str(n), str(sample_dir), str(out), str(sp_model_path)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = sorted(p.name for p in out.iterdir())
    finished = [p for p in left if p.endswith(".idx") and not p.startswith(".")]
    assert 0 < len(finished) < 8, left  # really mid-way: some shards done, some not
    if mode == "append":
        assert any(p.startswith(".") and ".tmp" in p for p in left)  # a half-written temporary shard
    else:
        assert any(p.endswith(".bin") and p.replace(".bin", ".idx") not in left for p in left)  # .bin without .idx

    report = run(TokenizeConfig(inputs=[sample_dir], output=out, tokenizer=sp_model_path, progress=False))
    assert sum(s.skipped for s in report.shards) == len(finished)
    assert _digest(out) == _digest(sp_shards)  # also: no temporary or orphan files remain


def test_output_index_lists_finished_shards_and_leftovers_once(tmp_path):
    """One listing of the output folder finds what a glob per input found: finished pairs, and what a
    killed run leaves (temporary files, a .bin renamed before its .idx); other files are ignored."""
    from experiment.data.tokenize_output import OutputIndex

    done = "en_web_a_split_0_text_document_dc=2_sc=2_tc=9"
    orphan = "en_web_b_split_0_text_document_dc=1_sc=1_tc=4"
    for name in (f"{done}.bin", f"{done}.idx", f"{orphan}.bin", ".en_web_b_split_0_text_document.tmp-123.bin",
                 ".en_web_c.x_split_0_text_document.tmp-9.idx", "tokenizer_info.json", "notes.bin"):
        (tmp_path / name).write_bytes(b"")
    index = OutputIndex(tmp_path)
    assert index.finished("en_web_a_split_0_text_document") == tmp_path / done
    assert index.finished("en_web_b_split_0_text_document") is None
    index.clean("en_web_b_split_0_text_document")
    assert not (tmp_path / f"{orphan}.bin").exists() and not (tmp_path / ".en_web_b_split_0_text_document.tmp-123.bin").exists()
    index.clean("en_web_c.x_split_0_text_document")  # a '.' in the subdomain
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{done}.bin", f"{done}.idx", "tokenizer_info.json", "notes.bin"])
    index.add("en_web_b_split_0_text_document", tmp_path / orphan)
    assert index.finished("en_web_b_split_0_text_document") == tmp_path / orphan
    assert OutputIndex(tmp_path / "missing").finished("x") is None
