"""Every check of issue 4 point 4 fails with its message, naming the file and the entry; `experiment check`
runs them through experiment.folder.SEMANTIC_CHECKS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiment.folder import errors
from experiment.mixture.checks import check_all
from experiment.mixture.datatypes import MixtureError, MixtureSpec, Shard
from experiment.mixture.rules import MAX_BLEND_DATASETS
from experiment.mixture.weights import plan
from tests.mixture.helpers import folder, name, signature, write_shard

RATIO = {"en": {"web": 1, "code": 2}, "ar": {"news": 1}}
PROB = {"en": 0.6, "ar": 0.4}


def _shards():
    return [(name("en", "web", 0, 4000), 4000), (name("en", "code", 1, 2000), 2000),
            (name("ar", "news", 2, 3000), 3000)]


def _real_folder(tmp_path: Path, **kw) -> Path:
    """A folder whose shards exist on disk (real .bin/.idx), so only the broken thing is reported."""
    shards = kw.pop("shards", _shards())
    sizes = {}
    for n, tokens in shards:
        sizes[n] = write_shard(tmp_path / "shards" / n, [list(range(1, 101))] * (tokens // 100))
    sig = signature(shards, sizes=sizes)
    return folder(tmp_path, shards, kw.pop("data_ratio", RATIO), lang_prob=kw.pop("lang_prob", PROB), sig=sig, **kw)


def _problems(path: Path):
    loaded, problems = check_all(path)
    assert loaded is not None
    return problems


def _one(problems, needle: str):
    hits = [p for p in problems if needle in p.message]
    assert hits, f"no problem mentions {needle!r}: {[str(p) for p in problems]}"
    assert all(p.file and p.fix for p in hits)
    return hits[0]


def test_a_good_folder_has_no_problems(tmp_path):
    assert _problems(_real_folder(tmp_path)) == []


def test_missing_shard_is_an_artifact_not_made_yet(tmp_path):
    path = _real_folder(tmp_path)
    victim = _shards()[1][0]
    (path / "shards" / f"{victim}.bin").unlink()
    problems = _problems(path)
    p = _one(problems, "does not exist")
    assert p.field == victim and p.file.endswith("sig.json") and p.missing_artifact
    assert errors(problems) == []  # the folder is well formed; `experiment run` refuses, `check` warns


def test_shard_size_must_match_signature(tmp_path):
    path = _real_folder(tmp_path)
    victim = _shards()[0][0]
    with open(path / "shards" / f"{victim}.bin", "ab") as f:
        f.write(b"\0\0")
    p = _one(_problems(path), "the signature says")
    assert p.field == victim and not p.missing_artifact


def test_language_probabilities_must_sum_to_one(tmp_path):
    p = _one(_problems(_real_folder(tmp_path, lang_prob={"en": 0.6, "ar": 0.6})), "sum to 1.2, not 1")
    assert p.file.endswith("lang_prob.json") and "normalize_lang_prob" in p.fix


def test_target_proportions_must_sum_to_one(tmp_path):
    path = _real_folder(tmp_path, data_ratio={}, lang_prob=None,
                        data_extra='token_budget = "1M"\n[data.target_proportions]\nweb = 0.5\ncode = 0.3\nnews = 0.3')
    p = _one(_problems(path), "shares sum to 1.1, not 1")
    assert p.field == "data.target_proportions" and p.file.endswith("experiment.toml")


def test_domain_in_ratio_but_not_in_data(tmp_path):
    ratio = {"en": {"web": 1, "code": 2, "math": 3}, "ar": {"news": 1}}
    p = _one(_problems(_real_folder(tmp_path / "a", data_ratio=ratio)), "has no shards in the data")
    assert p.field == "en.math" and p.file.endswith("data_ratio.json")
    assert _problems(_real_folder(tmp_path / "b", data_ratio=ratio, data_extra='optional_domains = ["math"]')) == []


def test_domain_in_data_but_not_in_ratio(tmp_path):
    ratio = {"en": {"web": 1}, "ar": {"news": 1}}
    p = _one(_problems(_real_folder(tmp_path / "a", data_ratio=ratio)), "dropped them without a word")
    assert p.field == "en.code" and p.file.endswith("data_ratio.json")
    path = _real_folder(tmp_path / "b", data_ratio=ratio, data_extra='optional_domains = ["en.code"]')
    assert _problems(path) == []


def test_language_without_probability(tmp_path):
    p = _one(_problems(_real_folder(tmp_path, lang_prob={"en": 1.0})), "has 1 shard(s) but no probability")
    assert p.field == "ar" and p.file.endswith("lang_prob.json")


def test_language_that_loses_all_its_shards(tmp_path):
    path = _real_folder(tmp_path, exclude={"exclude_iterator_name": [_shards()[2][0] + ".bin"]})
    p = _one(_problems(path), "no kept shards")
    assert p.field == "ar" and "less than 1" in p.message


def test_exclude_entry_that_matches_nothing(tmp_path):
    p = _one(_problems(_real_folder(tmp_path, exclude=["en_web_typo_split_0_text_document.bin"])),
             "matches no shard")
    assert p.field == "en_web_typo_split_0_text_document.bin" and p.file.endswith("exclude_iterator.json")


def test_weight_too_small_to_be_drawn(tmp_path):
    shards = _shards() + [(name("ar", "tiny", 3, 100), 100)]
    path = _real_folder(tmp_path, shards=shards, data_ratio={"en": RATIO["en"], "ar": {"news": 1, "tiny": 1}},
                        lang_prob={"en": 0.999, "ar": 0.001}, training="train_iters = 2\nglobal_batch_size = 8")
    p = _one(_problems(path), "Megatron would never draw them")
    assert p.field == shards[3][0]


def test_budget_unreachable_within_epoch_cap(tmp_path):
    path = _real_folder(tmp_path, data_extra='token_budget = "100K"\nmax_epochs = 4')
    p = _one(_problems(path), "above max_epochs=4")
    assert p.field == "data.max_epochs" and "'code'" in p.message


def test_budget_unreachable_in_proportion_mode(tmp_path):
    path = _real_folder(tmp_path, data_ratio={}, lang_prob=None, data_extra=(
        'token_budget = "20K"\nmax_epochs = 2\n[data.target_proportions]\nweb = 0.2\ncode = 0.7\nnews = 0.1'))
    p = _one(_problems(path), "repeated 7 times")
    assert p.field == "data.target_proportions.code"


def test_count_in_name_must_match_signature(tmp_path):
    shards = _shards()
    sig = signature(shards)
    sig.shards[0].tokens += 1
    path = folder(tmp_path, shards, RATIO, lang_prob=PROB, sig=sig)
    p = _one(_problems(path), "the name says tc=4000 but the signature says 4001")
    listed = [e["prefix"] for e in json.loads((path / "sig.json").read_text())["shards"]]
    assert p.field == f"shards[{listed.index(shards[0][0])}].tokens"  # index in the file as written


def test_broken_signature_is_reported(tmp_path):
    path = folder(tmp_path, _shards(), RATIO, lang_prob=PROB)
    (path / "sig.json").write_text(json.dumps({"name": "x"}))
    _one(_problems(path), "not a valid data signature")


def test_ratio_file_shape(tmp_path):
    mixed = {"en": {"web": 1}, "code": 2}
    p = _one(_problems(folder(tmp_path / "a", _shards(), mixed, lang_prob=PROB)), "mixes flat domain")
    assert p.field == "code"
    neg = {"en": {"web": -1, "code": 2}, "ar": {"news": 1}}
    p = _one(_problems(folder(tmp_path / "b", _shards(), neg, lang_prob=PROB)), "is not a number >= 0")
    assert p.field == "en.web"


def test_too_many_shards_for_megatron():
    n = MAX_BLEND_DATASETS + 1
    shards = [Shard(f"/d/{name('en', 'web', i, 1000)}", "en", "web", "s", 1000) for i in range(n)]
    with pytest.raises(MixtureError) as err:
        plan(shards, MixtureSpec(data_ratio={"web": 1}, budget_tokens=10**12, seq_length=16))
    assert any("at most 32766 (int16)" in p.message for p in err.value.problems)


def test_duplicate_shard_across_signatures():
    s = Shard(f"/a/{name('en', 'web', 0, 1000)}", "en", "web", "s", 1000, signature="a.json")
    t = Shard(f"/b/{name('en', 'web', 0, 1000)}", "en", "web", "s", 1000, signature="b.json")
    with pytest.raises(MixtureError) as err:
        plan([s, t], MixtureSpec(data_ratio={"web": 1}, budget_tokens=10**6, seq_length=16))
    assert "listed twice (also in a.json)" in str(err.value)


def test_every_problem_at_once(tmp_path):
    """Several mistakes in one folder are all reported in one go."""
    ratio = {"en": {"web": 1, "math": 1}, "ar": {"news": 1}}
    path = _real_folder(tmp_path, data_ratio=ratio, lang_prob={"en": 0.7, "ar": 0.7},
                        exclude=["nothing_here.bin"])
    messages = " | ".join(p.message for p in _problems(path))
    assert "sum to 1.4" in messages  # lang_prob stops the per-shard rules; fix it and the rest appear
    (path / "lang_prob.json").write_text(json.dumps(PROB))
    messages = " | ".join(p.message for p in _problems(path))
    for needle in ("matches no shard", "'code' has no multiplier", "'math' of 'en' has no shards"):
        assert needle in messages


def test_open_file_limit(tmp_path):
    """Megatron holds ~3 files per shard open; a blend above `ulimit -n` would die with 'Too many open files'."""
    import resource

    from experiment.mixture.checks import open_files_problems

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert open_files_problems(10, "experiment.toml") == []
    if soft != resource.RLIM_INFINITY:
        p = open_files_problems(soft, "experiment.toml")[0]
        assert p.field == "data.signatures" and "ulimit -n" in p.message and "mmap_bin_files" in p.fix
