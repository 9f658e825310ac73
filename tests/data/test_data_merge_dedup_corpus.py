"""merge (record-preserving, size-bounded), dedup (datatrove MinHash, seed 004's 64/0.85), sample corpus."""

from __future__ import annotations

import json

import pytest

from experiment.data import naming, sources
from experiment.data.errors import DataError


def test_sample_corpus_is_real_multilingual_and_deterministic(sample_dir, tmp_path):
    from experiment.demo.corpus import build_sample

    again = tmp_path / "again"
    build_sample(again, mb=0.4)
    files = sorted(p.name for p in sample_dir.glob("*.jsonl"))
    assert files == sorted(p.name for p in again.glob("*.jsonl"))
    assert all((sample_dir / f).read_bytes() == (again / f).read_bytes() for f in files)
    names = [naming.parse(f"{sources.stem_of(f)}_text_document") for f in files]
    assert {n.language for n in names} == {"en", "ja"}
    assert {n.domain for n in names} >= {"code-docs", "manual", "dictionary", "legal"}
    ja = [d.text for d in sources.iter_documents(sample_dir / "ja_manual_man_split_0000.jsonl")]
    assert any("\u3040" <= ch <= "\u30ff" for ch in ja[0])  # real kana


def test_merge_packs_records_in_order_under_the_target(sample_dir, tmp_path):
    from experiment.data.merge import merge

    src = tmp_path / "small"
    src.mkdir()
    lines = (sample_dir / "en_manual_man_split_0000.jsonl").read_bytes().splitlines(keepends=True)
    for i in range(0, len(lines), 2):  # many tiny shards of one group
        (src / f"en_manual_man_split_{i:04d}.jsonl").write_bytes(b"".join(lines[i : i + 2]))
    (group,) = merge([src], tmp_path / "merged", target_mb=0.02)
    assert group.stem == "en_manual_man" and group.records == len(lines) and len(group.outputs) > 1
    merged = b"".join(p.read_bytes() for p in group.outputs)
    assert merged == b"".join(lines)
    assert all(p.stat().st_size <= 20_000 or p.read_bytes().count(b"\n") == 1 for p in group.outputs)


def test_merge_stops_at_a_bad_line_and_writes_nothing(tmp_path):
    from experiment.data.merge import merge

    src = tmp_path / "in"
    src.mkdir()
    (src / "en_web_a_split_0.jsonl").write_text('{"text": "a"}\n')
    (src / "en_web_a_split_1.jsonl").write_text('{"text": "b"}\n{"txt": "c"}\n')
    with pytest.raises(DataError) as info:
        merge([src], tmp_path / "out", target_mb=1)
    assert info.value.line == 2 and info.value.file.endswith("en_web_a_split_1.jsonl")
    assert not list((tmp_path / "out").glob("*.jsonl"))


def test_lsh_bands_for_seed_004():
    from experiment.data.dedup import lsh_bands

    bands, rows = lsh_bands(64, 0.85)
    assert bands * rows <= 64 and (bands, rows) == (4, 15)
    # the S-curve's midpoint sits near the threshold
    assert 0.8 < (1 / bands) ** (1 / rows) < 0.95


@pytest.mark.slow
def test_dedup_removes_near_duplicates_across_shards(sample_dir, tmp_path):
    from experiment.data.dedup import dedup

    src = tmp_path / "in"
    src.mkdir()
    docs_a = [json.loads(line) for line in (sample_dir / "en_dictionary_gcide_split_0000.jsonl").read_text().splitlines()]
    docs_b = [json.loads(line) for line in (sample_dir / "ja_manual_man_split_0000.jsonl").read_text().splitlines()]
    words = docs_a[0]["text"].split(" ")
    words[len(words) // 2] = "CHANGED"  # one word differs: Jaccard of 5-gram shingles stays far above 0.85
    near = dict(docs_a[0], text=" ".join(words), source="near-copy")
    ja_copy = dict(docs_b[1], source="ja-copy")
    (src / "en_dictionary_gcide_split_0000.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs_a))
    (src / "ja_manual_man_split_0000.jsonl").write_text("".join(json.dumps(d) + "\n" for d in [*docs_b, near, ja_copy]))
    report = dedup(src, tmp_path / "out", workers=1)  # in-process: no worker pool to start
    assert (report.bands, report.rows) == (4, 15)
    assert report.removed == 2 and report.kept == len(docs_a) + len(docs_b)
    kept = [json.loads(line) for p in sorted((tmp_path / "out").glob("*.jsonl")) for line in p.read_text().splitlines()]
    assert sorted(d["source"] for d in kept) == sorted(d["source"] for d in docs_a + docs_b)
    assert kept[: len(docs_a)] == docs_a  # untouched records come out unchanged, in order
