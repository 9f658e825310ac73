"""The mixing files' root models: each offending entry is one Problem naming file, key and fix."""

from __future__ import annotations

from experiment.mixture import inputs


def test_lang_prob_entries_that_are_not_numbers_are_each_named():
    problems = inputs.lang_prob_problems({"en": 0.5, "ar": True, "ja": "0.5", "da": -1}, "lp.json")
    assert [(p.file, p.field) for p in problems] == [("lp.json", "ar"), ("lp.json", "ja"), ("lp.json", "da")]
    assert problems[0].message == "probability True is not a number >= 0" and "[0, 1]" in problems[0].fix
    assert inputs.lang_prob_problems(["en"], "lp.json")[0].message == "is not a JSON object"


def test_ratio_keeps_ints_as_ints_and_names_nested_keys():
    assert inputs.PerLanguageRatio.model_validate({"en": {"web": 1, "code": 0.5}}).root == {"en": {"web": 1, "code": 0.5}}
    assert isinstance(inputs.FlatRatio.model_validate({"web": 2}).root["web"], int)
    problems = inputs.ratio_problems({"en": {"web": float("nan"), "code": "x"}}, "dr.json")
    assert [p.field for p in problems] == ["en.web", "en.code"]


def test_exclude_list_forms():
    assert inputs.read_exclude_list(["a.bin"], "ex.json") == (["a.bin"], [])
    assert inputs.read_exclude_list({"exclude_iterator_name": ["b"]}, "ex.json") == (["b"], [])
    names, problems = inputs.read_exclude_list({"names": ["b"]}, "ex.json")
    assert names == [] and problems[0].file == "ex.json" and "list of shard names" in problems[0].message
