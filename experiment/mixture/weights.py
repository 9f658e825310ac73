"""Per-shard Megatron weights from the mixing rules: seed 002's ratio mode and the proportions mode.

Two ways to say what a step is made of:

* **ratio mode** (seed 002, ALLaM's ``data_ratio_from_file.py``; also seed 000's per-source scaling): a
  multiplier per domain (``data_ratio.json``, flat or per language) and a selection probability per language
  (``lang_prob.json``). Within a language a shard's weight is proportional to ``tokens x multiplier`` and the
  language's shards together carry its probability.
* **proportion mode** (OLMo 2 Dolmino table, seed 003): ``data.target_proportions`` gives each domain's
  share of the token budget; within a domain shards are weighted by their tokens.

Weights are **per token** and sum to 1. Megatron's ``GPTDataset`` packs documents into samples of exactly
``seq_length`` tokens, so a per-token weight is also the per-sample weight ``BlendedDataset`` draws with.
The arithmetic of ratio mode follows the seed script operation for operation (numpy's ``bincount`` adds in
input order, like the script's ``+=``), so the same inputs give the same floats; where that script is silent
or breaks, the planner reports a ``Problem`` instead. Pure functions, no file I/O: ``mixture.plan`` reads a
folder's inputs and calls ``plan``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy

from experiment.folder import Problem
from experiment.mixture import inputs
from experiment.mixture.datatypes import (
    Dropped,
    MixtureError,
    MixtureMode,
    MixturePlan,
    MixtureSpec,
    Shard,
    ShardTable,
    as_table,
    empty_plan,
    no_gc,
)
from experiment.mixture.rules import apply_excludes, check_budget_and_weights, is_per_language, multiplier_of

#: Published share tables are rounded (OLMo 2's Dolmino shares sum to 1.0001): within this, normalise and say so.
PROPORTION_TOLERANCE = 1e-3


def _ratio_problems(spec: MixtureSpec) -> list[Problem]:
    return inputs.ratio_problems(spec.data_ratio, spec.ratio_file)


def _lang_prob_problems(spec: MixtureSpec) -> list[Problem]:
    out, f = [], spec.lang_prob_file
    if spec.lang_prob is None:
        return out
    out = inputs.lang_prob_problems(spec.lang_prob, f)
    if out:
        return out
    total = math.fsum(spec.lang_prob.values())
    if total <= 0:
        out.append(Problem(f, "", "probabilities sum to 0", "give at least one language a probability > 0"))
    elif abs(total - 1.0) > 1e-6 and not spec.normalize_lang_prob:
        out.append(Problem(f, "", f"probabilities sum to {total:.6g}, not 1",
                           f"divide each by {total:.6g}, or set data.normalize_lang_prob = true in "
                           "experiment.toml to let the kit do it (as seed 002's script did silently)"))
    return out


def _proportion_problems(spec: MixtureSpec) -> list[Problem]:
    out, f = [], spec.config_file
    assert spec.target_proportions is not None
    total = math.fsum(spec.target_proportions.values())
    for k, v in spec.target_proportions.items():
        if v < 0:
            out.append(Problem(f, f"data.target_proportions.{k}", f"share {v} is negative", "use a share >= 0"))
    if abs(total - 1.0) > PROPORTION_TOLERANCE:
        out.append(Problem(f, "data.target_proportions", f"shares sum to {total:.6g}, not 1",
                           f"divide each by {total:.6g}"))
    if spec.data_ratio:
        out.append(Problem(spec.ratio_file, "", "has multipliers but data.target_proportions is also set",
                           "use one: empty data_ratio.json ({}) for proportions, or drop target_proportions"))
    if spec.lang_prob is not None:
        out.append(Problem(f, "data.lang_prob", "is set but data.target_proportions fixes every domain's share",
                           "remove data.lang_prob, or drop target_proportions"))
    return out


def plan_ratio(t: ShardTable, spec: MixtureSpec, problems: list[Problem]) -> MixturePlan:
    """Seed 002's rule: w = p(lang) * tc*m / sum over the language's kept shards of tc*m. The phases below run
    in this order, so problems and notes are listed in it."""
    problems.extend(_ratio_problems(spec))
    problems.extend(_lang_prob_problems(spec))
    if problems:
        return empty_plan(MixtureMode.RATIO, spec)
    per_language = is_per_language(spec.data_ratio)
    rows, dropped = apply_excludes(t, spec, problems)
    notes: list[str] = []
    lang_prob = _normalized_lang_prob(spec)
    pairs = list(zip(t.language, t.domain))
    verdict = _pair_verdicts(set(pairs[i] for i in rows), spec, per_language, lang_prob)
    kept, missing_ratio, missing_lang = _apply_verdicts(t, rows, pairs, verdict, dropped)
    _missing_rule_problems(missing_ratio, missing_lang, spec, per_language, notes, problems)
    _unmatched_ratio_problems(set(pairs), spec, per_language, problems)
    codes, code, lang_prob = _language_groups(t, kept, lang_prob, spec, notes, problems)
    if not kept and not problems:
        problems.append(Problem(spec.ratio_file, "", "no shard is left to train on",
                                "check data_ratio.json, lang_prob.json and the exclude list"))
    if problems or not kept:
        return empty_plan(MixtureMode.RATIO, spec)
    kept, mult, w = _ratio_weights(t, kept, code, codes, verdict, pairs, lang_prob, dropped)
    result = MixturePlan(MixtureMode.RATIO, t.take(kept), [float(m) for m in mult], w.tolist(), spec.budget_tokens,
                         spec.budget_from, spec.seq_length, tuple(sorted(dropped)), tuple(notes))
    check_budget_and_weights(result, spec, problems)
    return result


def _normalized_lang_prob(spec: MixtureSpec) -> dict[str, Any] | None:
    """Seed 002: lang_prob divided by its sum first. The kit sums exactly (fsum), so the file's key order
    cannot change a bit of the result; seed 002 summed in key order (the same float whenever that is exact)."""
    lang_prob = dict(sorted(spec.lang_prob.items())) if spec.lang_prob is not None else None
    if lang_prob is not None:
        total = math.fsum(lang_prob.values())
        lang_prob = {k: v / total for k, v in lang_prob.items()}
    return lang_prob


def _pair_verdicts(pairs: Iterable[tuple[str, str]], spec: MixtureSpec, per_language: bool,
                   lang_prob: dict[str, Any] | None) -> dict[tuple[str, str], Any]:
    """Every rule is decided once per (language, domain) pair, then applied to the rows: pair -> multiplier,
    or the reason it is left out."""
    verdict: dict[tuple[str, str], Any] = {}
    for pair in pairs:
        lang, domain = pair
        m = multiplier_of(spec.data_ratio, per_language, lang, domain)
        if m is None:
            verdict[pair] = "domain not in data_ratio.json"
        elif m == 0:
            verdict[pair] = "multiplier 0"
        elif lang_prob is not None and lang not in lang_prob:
            verdict[pair] = "language not in lang_prob.json"
        else:
            verdict[pair] = m
    return verdict


def _apply_verdicts(t: ShardTable, rows: list[int], pairs: list[tuple[str, str]],
                    verdict: dict[tuple[str, str], Any], dropped: list[Dropped]
                    ) -> tuple[list[int], dict[tuple[str, str], int], dict[str, int]]:
    """The rows kept; the others go to ``dropped``, counted per pair missing from data_ratio.json and per
    language missing from lang_prob.json."""
    kept, missing_ratio, missing_lang = [], {}, {}
    for i in rows:
        v = verdict[pairs[i]]
        if type(v) is str:
            dropped.append(Dropped(t.name[i], t.language[i], t.domain[i], t.tokens[i], v))
            if v == "domain not in data_ratio.json":
                missing_ratio[pairs[i]] = missing_ratio.get(pairs[i], 0) + 1
            elif v == "language not in lang_prob.json":
                missing_lang[t.language[i]] = missing_lang.get(t.language[i], 0) + 1
        else:
            kept.append(i)
    return kept, missing_ratio, missing_lang


def _missing_rule_problems(missing_ratio: dict[tuple[str, str], int], missing_lang: dict[str, int],
                           spec: MixtureSpec, per_language: bool, notes: list[str], problems: list[Problem]) -> None:
    """Shards the rules leave out because no rule names them: a problem, or a note when marked optional."""
    optional = set(spec.optional)
    for (lang, domain), n in sorted(missing_ratio.items()):
        key = f"{lang}.{domain}" if per_language else domain
        if domain in optional or key in optional or (per_language and lang in optional
                                                      and lang not in spec.data_ratio):
            notes.append(f"{n} shard(s) of {key} left out: not in {spec.ratio_file} (marked optional)")
            continue
        where = (f"language {lang!r} has no entry" if per_language and lang not in spec.data_ratio
                 else f"domain {domain!r} has no multiplier" + (f" under {lang!r}" if per_language else ""))
        problems.append(Problem(spec.ratio_file, key, f"{where}, but the data has {n} shard(s) of it "
                                "(seed 002's script dropped them without a word)",
                                f"add {key!r} with a multiplier (0 to leave it out), or list it in "
                                "data.optional_domains"))
    for lang, n in sorted(missing_lang.items()):
        if lang in optional:
            notes.append(f"{n} shard(s) of language {lang!r} left out: not in {spec.lang_prob_file} (optional)")
            continue
        problems.append(Problem(spec.lang_prob_file, lang, f"language {lang!r} has {n} shard(s) but no "
                                "probability (seed 002's script crashed with KeyError)",
                                f"add {lang!r} with a probability (0 to leave it out), or list it in "
                                "data.optional_domains"))


def _unmatched_ratio_problems(present: set[tuple[str, str]], spec: MixtureSpec, per_language: bool,
                              problems: list[Problem]) -> None:
    """data_ratio entries that match no data (``present``: every listed shard's pair, excluded ones too)."""
    optional = set(spec.optional)
    present_domains = {d for _, d in present}
    present_langs = {lang for lang, _ in present}
    if per_language:
        for lang, table in spec.data_ratio.items():
            if lang not in present_langs:
                if lang not in optional:
                    problems.append(Problem(spec.ratio_file, lang, f"language {lang!r} has no shards in the data",
                                            "remove it, correct the name, or list it in data.optional_domains"))
                continue
            for domain in table:
                key = f"{lang}.{domain}"
                if (lang, domain) not in present and domain not in optional and key not in optional:
                    problems.append(Problem(spec.ratio_file, key, f"domain {domain!r} of {lang!r} has no shards "
                                            "in the data", "remove it, correct the name, or list it in "
                                            "data.optional_domains"))
    else:
        for domain in spec.data_ratio:
            if domain not in present_domains and domain not in optional:
                problems.append(Problem(spec.ratio_file, domain, f"domain {domain!r} has no shards in the data",
                                        "remove it, correct the name, or list it in data.optional_domains"))


def _language_groups(t: ShardTable, kept: list[int], lang_prob: dict[str, Any] | None, spec: MixtureSpec,
                     notes: list[str], problems: list[Problem]
                     ) -> tuple[dict[str, int], list[int], dict[str, Any] | None]:
    """The language groups, in order of first appearance (seed 002's output order): group -> code, each kept
    row's code, and ``lang_prob`` with the share of an optional language that lost all its shards given to
    the others in proportion. A non-optional one is a problem: seed 002 left the weights summing below 1."""
    optional = set(spec.optional)
    group_of = (lambda i: t.language[i]) if lang_prob is not None else (lambda i: "*")
    codes: dict[str, int] = {}
    code = [codes.setdefault(group_of(i), len(codes)) for i in kept]
    if lang_prob is not None:
        lost = [lang for lang, p in lang_prob.items() if p > 0 and lang not in codes]
        for lang in lost:
            if lang in optional:
                notes.append(f"language {lang!r} has no kept shards; its probability {lang_prob[lang]:.6g} "
                             "goes to the other languages in proportion (marked optional)")
                continue
            problems.append(Problem(
                spec.lang_prob_file, lang,
                f"language {lang!r} has probability {lang_prob[lang]:.6g} but no kept shards (all excluded, "
                "multiplier 0, or none in the data); seed 002's weights would sum to less than 1",
                "set its probability to 0, un-exclude shards, or list it in data.optional_domains to give "
                "its share to the other languages"))
        if any(lang in optional for lang in lost):
            kept_mass = sum(p for lang, p in lang_prob.items() if lang in codes)
            if kept_mass > 0:
                lang_prob = {k: (v / kept_mass if k in codes else 0.0) for k, v in lang_prob.items()}
    return codes, code, lang_prob


def _ratio_weights(t: ShardTable, kept: list[int], code: list[int], codes: dict[str, int],
                   verdict: dict[tuple[str, str], Any], pairs: list[tuple[str, str]], lang_prob: dict[str, Any] | None,
                   dropped: list[Dropped]) -> tuple[list[int], list[Any], Any]:
    """w = tc*m / (sum of the language's tc*m) * p, with seed 002's operation order. Returns the kept rows in
    blend order, their multipliers and weights; a row of weight 0 (language probability 0) goes to ``dropped``."""
    order = sorted(range(len(kept)), key=code.__getitem__)  # stable: grouped by language, names sorted within
    kept = [kept[j] for j in order]
    code_arr = numpy.asarray([code[j] for j in order], dtype=numpy.int64)
    mult = [verdict[pairs[i]] for i in kept]
    tm = numpy.asarray([t.tokens[i] for i in kept], dtype=numpy.float64) * numpy.asarray(mult, dtype=numpy.float64)
    sampled = numpy.bincount(code_arr, weights=tm, minlength=len(codes))  # in row order, like `+=`
    group_p = numpy.asarray([lang_prob[g] if lang_prob is not None else 1.0 for g in codes], dtype=numpy.float64)
    w = tm / sampled[code_arr] * group_p[code_arr]
    zero = numpy.flatnonzero(w <= 0)
    for j in zero:
        i = kept[j]
        dropped.append(Dropped(t.name[i], t.language[i], t.domain[i], t.tokens[i],
                               "weight 0 (language probability 0)"))
    if zero.size:
        keep = numpy.flatnonzero(w > 0)
        kept, mult, w = [kept[j] for j in keep], [mult[j] for j in keep], w[keep]
    return kept, mult, w


def plan_proportions(t: ShardTable, spec: MixtureSpec, problems: list[Problem]) -> MixturePlan:
    """OLMo 2 / seed 003: each domain gets its share of the budget; within it, shards weigh by tokens."""
    problems.extend(_proportion_problems(spec))
    targets = dict(spec.target_proportions or {})
    optional = set(spec.optional)
    rows, dropped = apply_excludes(t, spec, problems)
    notes: list[str] = []
    kept = []
    for i in rows:
        d = t.domain[i]
        if d not in targets:
            dropped.append(Dropped(t.name[i], t.language[i], d, t.tokens[i], "domain not in target_proportions"))
        elif targets[d] == 0:
            dropped.append(Dropped(t.name[i], t.language[i], d, t.tokens[i], "share 0"))
        else:
            kept.append(i)
    for domain in sorted({d.domain for d in dropped if d.reason == "domain not in target_proportions"}):
        if domain in optional:
            notes.append(f"domain {domain!r} left out: not in data.target_proportions (marked optional)")
        else:
            problems.append(Problem(spec.config_file, f"data.target_proportions.{domain}",
                                    f"the data has domain {domain!r} but it has no share",
                                    "give it a share (0 to leave it out), or list it in data.optional_domains"))
    present = {t.domain[i] for i in kept}
    for domain in [d for d, share in targets.items() if share > 0 and d not in present]:
        if domain in optional:
            notes.append(f"domain {domain!r} has no kept shards; its share goes to the others in proportion")
        else:
            problems.append(Problem(spec.config_file, f"data.target_proportions.{domain}",
                                    f"domain {domain!r} has a share but no kept shards in the data",
                                    "correct the name, add its data, or list it in data.optional_domains"))
    total = math.fsum(targets.values())
    if total > 0 and abs(total - 1.0) > 1e-12 and abs(total - 1.0) <= PROPORTION_TOLERANCE:
        notes.append(f"data.target_proportions sum to {total:.6g}; each share was divided by that sum")
    mass = math.fsum(targets[d] for d in present)  # exactly rounded: independent of the set's order
    if not kept or mass <= 0:
        if not problems:
            problems.append(Problem(spec.config_file, "data.target_proportions", "no shard is left to train on",
                                    "check the shares and the exclude list"))
        return empty_plan(MixtureMode.PROPORTIONS, spec)
    w = _proportion_weights(t, kept, targets, mass)
    result = MixturePlan(MixtureMode.PROPORTIONS, t.take(kept), [1.0] * len(kept), w, spec.budget_tokens, spec.budget_from,
                         spec.seq_length, tuple(sorted(dropped)), tuple(notes), targets)
    if not problems:
        check_budget_and_weights(result, spec, problems)
    return result


def _proportion_weights(t: ShardTable, kept: list[int], targets: dict[str, float], mass: float) -> list[float]:
    """Each kept row's weight: its domain's share (divided by the kept domains' total ``mass``) split by tokens
    (evenly when the domain has 0 tokens)."""
    domain_tokens: dict[str, int] = {}
    domain_count: dict[str, int] = {}
    for i in kept:
        domain_tokens[t.domain[i]] = domain_tokens.get(t.domain[i], 0) + t.tokens[i]
        domain_count[t.domain[i]] = domain_count.get(t.domain[i], 0) + 1
    w = []
    for i in kept:
        d = t.domain[i]
        share = targets[d] / mass
        w.append(share * t.tokens[i] / domain_tokens[d] if domain_tokens[d] else share / domain_count[d])
    return w


def duplicate_problems(t: ShardTable) -> list[Problem]:
    """Shard names are unique across signatures (``t`` is sorted by name, so duplicates are neighbours)."""
    out = []
    names = t.name
    for i in range(1, len(names)):
        if names[i] == names[i - 1]:
            out.append(Problem(t.signature[i], names[i], f"shard name listed twice (also in {t.signature[i - 1]})",
                               "list each shard once; shard names must be unique across signatures"))
    return out

def plan(shards: Iterable[Shard] | ShardTable, spec: MixtureSpec) -> MixturePlan:
    """Plan the mixture, or raise ``MixtureError`` with every problem. Input order does not matter."""
    with no_gc():
        return _plan(as_table(shards), spec)


def _plan(t: ShardTable, spec: MixtureSpec) -> MixturePlan:
    names = t.name
    if len(set(names)) == len(names):
        order = sorted(range(len(names)), key=names.__getitem__)  # seed 002 sorted by name
    else:
        order = sorted(range(len(names)), key=lambda i: (names[i], t.prefix[i], t.signature[i]))
    t = t.take(order)
    problems = duplicate_problems(t)
    if spec.target_proportions is not None:
        result = plan_proportions(t, spec, problems)
    else:
        result = plan_ratio(t, spec, problems)
    if problems:
        raise MixtureError(problems, result if result.weight else None)
    return result
