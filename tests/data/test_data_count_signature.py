"""count: names carry the recount (also for other tools' shards); signature: same inputs, same bytes."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from experiment.data import naming, signature
from experiment.data.errors import DataError


def _megatron_shard(prefix, docs, vocab=32000):
    """A shard written by megatron.core's own builder, as Megatron-LM's preprocess_data.py does."""
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(vocab))
    for doc in docs:  # a document of several sentences (--split-sentences)
        builder.add_document(torch.tensor([t for s in doc for t in s]), [len(s) for s in doc])
    builder.finalize(f"{prefix}.idx")


def test_counts_in_names_equal_the_recount(sp_shards, tmp_path):
    from experiment.data.count import count
    from experiment.data.shards import read_shard

    work = tmp_path / "shards"
    shutil.copytree(sp_shards, work)
    results = count([work], dry_run=True)
    assert len(results) == 8 and not any(r.renamed for r in results)
    for r in results:
        name = naming.parse(r.new.name)
        assert (name.docs, name.sentences, name.tokens) == (r.counts.docs, r.counts.sentences, r.counts.tokens)
        assert read_shard(r.new).counts == r.counts

    # a shard whose name lies about its counts is renamed to the truth
    victim = results[0].new
    liar = victim.parent / naming.parse(victim.name).with_counts(1, 1, 1).format()
    for ext in (".bin", ".idx"):
        os.replace(f"{victim}{ext}", f"{liar}{ext}")
    fixed = [r for r in count([work]) if r.renamed]
    assert len(fixed) == 1 and fixed[0].name_was_wrong and fixed[0].new == victim


def test_count_renames_other_tools_shards(tmp_path):
    from experiment.data.count import count

    _megatron_shard(tmp_path / "wiki_text_document", [[[5, 6, 2]], [[7, 8], [9, 2]], [[1, 2]]])
    with pytest.raises(DataError, match="--language and --domain"):
        count([tmp_path])
    (result,) = count([tmp_path], language="en", domain="encyclopedia")
    assert result.new.name == "en_encyclopedia_wiki_split_0000_text_document_dc=3_sc=4_tc=9"
    assert result.new.with_suffix(".bin").is_file() and not (tmp_path / "wiki_text_document.idx").exists()


def test_signature_is_canonical_and_hashes_the_bytes(sp_shards, tmp_path):
    import blake3

    info = signature.TokenizerInfo.model_validate_json((sp_shards / "tokenizer_info.json").read_text())
    first = signature.write(signature.build(sp_shards, "s", tmp_path / "a", info), tmp_path / "a")
    second = signature.write(signature.build(sp_shards, "s", tmp_path / "a", info), tmp_path / "a")
    assert first.read_bytes() == second.read_bytes()
    sig = signature.read_signature(first)
    assert sig.root_path(first) == sp_shards.resolve()
    assert [s.prefix for s in sig.shards] == sorted(p.stem for p in sp_shards.glob("*.idx"))
    for s in sig.shards:
        assert s.bin_hash == blake3.blake3((sp_shards / f"{s.prefix}.bin").read_bytes()).hexdigest()
        assert s.tokens == naming.parse(s.prefix).tokens and s.dtype == "uint16"
    assert sig.tokenizer.eod_id == 2 and len(sig.tokenizer.sha256) == 64
    xxh = signature.build(sp_shards, "s", tmp_path, info, algorithm="xxh3")
    assert xxh.hash_algorithm == "xxh3" and xxh.shards[0].bin_hash != sig.shards[0].bin_hash
    assert json.loads(first.read_text())["name"] == "s"


def test_signature_refuses_names_that_disagree_with_data(sp_shards, tmp_path):
    work = tmp_path / "shards"
    shutil.copytree(sp_shards, work)
    victim = sorted(work.glob("*.idx"))[0].with_suffix("")
    liar = work / naming.parse(victim.name).with_counts(1, 1, 1).format()
    for ext in (".bin", ".idx"):
        os.replace(f"{victim}{ext}", f"{liar}{ext}")
    info = signature.TokenizerInfo.model_validate_json((work / "tokenizer_info.json").read_text())
    with pytest.raises(DataError, match="run `experiment data count`"):
        signature.build(work, "s", tmp_path, info)


def test_tokenize_refuses_a_folder_of_another_tokenizer(sp_shards, sample_dir, sp_tokenizer_json, tmp_path):
    from experiment.data.tokenize import TokenizeConfig, run

    work = tmp_path / "shards"
    shutil.copytree(sp_shards, work)
    info = json.loads((work / "tokenizer_info.json").read_text())
    info["sha256"] = "0" * 64
    (work / "tokenizer_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="another tokenizer"):
        run(TokenizeConfig(inputs=[sample_dir], output=work, tokenizer=sp_tokenizer_json, progress=False))
