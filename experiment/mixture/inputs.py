"""The mixing files as typed root models: ``data_ratio.json``, ``lang_prob.json`` and the exclude list.

The models say what each file may hold; ``problems`` turns pydantic's errors into the kit's
``Problem(file, field, message, fix)``, one per offending entry, so ``experiment check`` lists them all.
Numbers keep the JSON type they were written with (an ``int`` stays an ``int``), so the plan, and
every output written from it, is the same as with the raw file.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, RootModel, Strict, ValidationError

from experiment.folder import Problem

# a JSON number >= 0: no bool, no string, no NaN/Infinity
NonNegative = Annotated[Annotated[int, Strict()] | Annotated[float, Strict(), AllowInfNan(False)], Field(ge=0)]


class FlatRatio(RootModel[dict[str, NonNegative]]):
    """``{"domain": multiplier}``: one multiplier per domain, every language alike."""


class PerLanguageRatio(RootModel[dict[str, dict[str, NonNegative]]]):
    """``{"lang": {"domain": multiplier}}``: multipliers per language."""


class LangProb(RootModel[dict[str, NonNegative]]):
    """``{"lang": probability}``: the share of the budget each language gets (they sum to 1)."""


class SeedExclude(BaseModel):
    """Seed 002's form of the exclude list."""

    model_config = ConfigDict(extra="ignore")  # the seed's file may carry other keys; only this one is read
    exclude_iterator_name: list[str]


class ExcludeList(RootModel[list[str] | SeedExclude]):
    """``["name", ...]`` or ``{"exclude_iterator_name": ["name.bin", ...]}``: shards to leave out."""

    @property
    def names(self) -> list[str]:
        return self.root.exclude_iterator_name if isinstance(self.root, SeedExclude) else self.root


def _entry(raw: Any, loc: tuple) -> tuple[str, Any]:
    """The dotted key path of an error inside ``raw`` (pydantic's union tags dropped) and the value there."""
    keys, value = [], raw
    for part in loc:
        if isinstance(value, dict) and part in value:
            keys.append(str(part))
            value = value[part]
    return ".".join(keys), value


def problems(model: type[RootModel], raw: Any, file: str, message: Callable[[Any], str], fix: str,
             not_object: str) -> tuple[RootModel | None, list[Problem]]:
    """``raw`` validated as ``model``, or one ``Problem`` per offending entry (``not_object``: the fix when
    the file is not a JSON object at all)."""
    if not isinstance(raw, dict):
        return None, [Problem(file, "", "is not a JSON object", not_object)]
    try:
        return model.model_validate(raw), []
    except ValidationError as err:
        out, seen = [], set()
        for e in err.errors():
            key, value = _entry(raw, e["loc"])
            if key not in seen:
                seen.add(key)
                out.append(Problem(file, key, message(value), fix))
        return None, out


def ratio_problems(raw: Any, file: str) -> list[Problem]:
    """data_ratio.json's shape: all numbers (flat) or all {domain: number} (per language), none negative."""
    fix_shape = 'write {"domain": multiplier} or {"lang": {...}}'
    if not isinstance(raw, dict):
        return [Problem(file, "", "is not a JSON object", fix_shape)]
    nested = [isinstance(v, dict) for v in raw.values()]
    if any(nested) and not all(nested):
        flat_keys = [k for k, v in raw.items() if not isinstance(v, dict)]
        return [Problem(file, ", ".join(flat_keys), "mixes flat domain multipliers with per-language objects",
                        "use either {domain: multiplier} or {lang: {domain: multiplier}} throughout")]
    model = PerLanguageRatio if raw and all(nested) else FlatRatio
    return problems(model, raw, file, lambda v: f"multiplier {v!r} is not a number >= 0",
                    "write a multiplier >= 0 (0 leaves the domain out)", fix_shape)[1]


def lang_prob_problems(raw: Any, file: str) -> list[Problem]:
    """lang_prob.json: every probability a number >= 0 (their sum is checked by the planner)."""
    return problems(LangProb, raw, file, lambda v: f"probability {v!r} is not a number >= 0",
                    "write a number in [0, 1]", 'write {"lang": probability, ...}')[1]


def read_exclude_list(raw: Any, file: str) -> tuple[list[str], list[Problem]]:
    """The shard names of an exclude file, or the problem with it."""
    try:
        return ExcludeList.model_validate(raw).names, []
    except ValidationError:
        return [], [Problem(file, "", "is not a list of shard names",
                            'write ["name", ...] or {"exclude_iterator_name": ["name.bin", ...]}')]
