"""The run records its mixture; a resume with another mixture is refused unless the folder allows it.
Also: the data-section fields this feature added keep existing folders valid."""

from __future__ import annotations

import json

import pytest

from experiment.mixture.checks import load_checked
from experiment.mixture.plan import plan_folder
from experiment.mixture.record import MixtureChanged, check_resume, read_record, write_record
from tests.mixture.helpers import folder, name

SHARDS = [(name("en", "web", 0, 4000), 4000), (name("en", "code", 1, 2000), 2000),
          (name("ar", "news", 2, 3000), 3000)]
RATIO = {"en": {"web": 1, "code": 2}, "ar": {"news": 1}}


def test_new_fields_have_safe_defaults(tmp_path):
    d = load_checked(folder(tmp_path, SHARDS, RATIO, lang_prob={"en": 0.5, "ar": 0.5}), require_artifacts=False).config.data
    assert d.optional_domains == [] and d.normalize_lang_prob is False and d.allow_mixture_change is False


def test_same_mixture_resumes(tmp_path):
    path = folder(tmp_path / "f", SHARDS, RATIO, lang_prob={"en": 0.5, "ar": 0.5})
    plan = plan_folder(load_checked(path, require_artifacts=False))
    run = tmp_path / "run"
    write_record(run, plan)
    assert read_record(run)["shards"][0]["weight"] == plan.entries[0].weight
    assert check_resume(run, plan, allow_change=False) == []
    assert check_resume(tmp_path / "fresh", plan, allow_change=False) == []  # nothing recorded yet


def test_changed_mixture_is_refused_unless_allowed(tmp_path):
    path = folder(tmp_path / "f", SHARDS, RATIO, lang_prob={"en": 0.5, "ar": 0.5})
    run = tmp_path / "run"
    write_record(run, plan_folder(load_checked(path, require_artifacts=False)))
    (path / "lang_prob.json").write_text(json.dumps({"en": 0.7, "ar": 0.3}))
    changed = plan_folder(load_checked(path, require_artifacts=False))
    with pytest.raises(MixtureChanged) as err:
        check_resume(run, changed, allow_change=False)
    p = err.value.problems[0]
    assert p.field == "data.allow_mixture_change" and "re-read some samples" in p.message
    assert f"weight of {SHARDS[2][0]}: 0.5 -> 0.3" in p.message
    assert check_resume(run, changed, allow_change=True)  # allowed: the differences come back to be logged
