"""The lock checked against the present: code, environment, folder, data, blend, base, determinism.

Code, environment/image, the folder's files, signatures, tokenizer, every shard's bytes, the blend given to
Megatron, the base checkpoint and the determinism variables are recomputed and compared with the lock. Each
difference is one ``Finding`` that names exactly what differs (file, key, shard, variable; expected and
found) and says whether it can change the run. Harmless ones (a reformatted JSON file, a reordered
signature, a renamed shard whose bytes, weight and place in the blend are unchanged) are explained and do
not block. ``experiment reproduce`` (``lock.reproduce``) runs this before it re-runs anything;
``experiment compare`` reads ``NUMERIC_ENV`` to tell which version differences can change the numbers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from experiment.folder import FolderError, TrainingFolder
from experiment.lock import environment, lockfile
from experiment.lock.hashing import HashCache, hash_files
from experiment.lock.records import (
    BaseCheckpointRecord,
    BlendRecord,
    EnvironmentRecord,
    KitRecord,
    RunLock,
    SignatureRecord,
)
from experiment.mixture.checks import load_checked

# environment entries whose change can change the numbers (the rest of the distribution set is noted)
NUMERIC_ENV = ("torch", "megatron_core", "transformer_engine", "cuda", "cudnn", "nccl", "machine")
# files of a folder that the run never reads
UNREAD_SUFFIXES = (".md", ".txt", ".png")


@dataclass(frozen=True)
class Finding:
    """One difference between the lock and what is here now."""

    area: str      # code | environment | folder | signature | tokenizer | data | blend | base | determinism
    what: str      # the exact thing: file, key, shard file, variable
    expected: str
    found: str
    blocking: bool  # True: the re-run cannot be expected to give the same bytes
    why: str


def load_folder(path: Path, overrides: tuple[str, ...] | list[str] = ()) -> TrainingFolder:
    """The folder as far as verification needs it: a missing or renamed shard is a finding to name,
    not a reason to stop, so artifacts are not required here (the re-run requires them). ``overrides``:
    the ``--set`` list the lock recorded, applied again."""
    return load_checked(path, require_artifacts=False, overrides=tuple(overrides))


def locked_overrides(lock: RunLock) -> tuple[str, ...]:
    """The ``experiment run --set`` overrides a locked run was started with (none for older locks), and, where the
    folder says ``micro_batch_size = "auto"``, the micro-batch the run measured and used (a re-run uses it
    instead of measuring again: another machine's timings may pick another size, and another size changes
    the bits)."""
    overrides = tuple(lock.config.overrides)
    training = lock.config.experiment.get("training", {})
    launch = getattr(lock, "launch", None)
    if training.get("micro_batch_size") == "auto" and launch is not None:  # the resolved config: after any --set
        overrides = tuple(o for o in overrides if o.partition("=")[0].strip() != "training.micro_batch_size")
        overrides += (f"training.micro_batch_size={launch.micro_batch_size}",)
    return overrides


def check_code(lock: RunLock) -> list[Finding]:
    want, have = lock.kit, KitRecord.model_validate(environment.kit_section())
    out = []
    if want.source_hash != have.source_hash:
        out.append(Finding("code", "experiment (kit source)", f"{want.source_hash} (commit {want.commit})",
                           f"{have.source_hash} (commit {have.commit})", True,
                           "the kit's code differs; check out the locked commit (and its dirty diff) or use the image"))
    elif (want.commit, want.dirty_diff_hash) != (have.commit, have.dirty_diff_hash):
        out.append(Finding("code", "git commit", str(want.commit), str(have.commit), False,
                           "another commit, but the kit's source files are byte-identical"))
    return out


def check_environment(lock: RunLock, image: environment.ImageInfo | None) -> list[Finding]:
    want, have = lock.environment, EnvironmentRecord.model_validate(environment.environment_section(image))
    out = []
    for key in NUMERIC_ENV:
        if getattr(want, key) != getattr(have, key):
            out.append(Finding("environment", key, str(getattr(want, key)), str(getattr(have, key)), True,
                               "a different version can change the numbers; use the locked image"))
    if want.python.rsplit(".", 1)[0] != have.python.rsplit(".", 1)[0]:
        out.append(Finding("environment", "python", want.python, have.python, True,
                           "another Python minor version"))
    wd, hd = want.image and want.image.digest, have.image and have.image.digest
    if want.containerized and have.containerized and wd and hd and wd != hd:
        out.append(Finding("environment", "image digest", wd, hd, True,
                           "another image; rebuild from env/ at the locked commit or pull the locked digest"))
    if want.containerized != have.containerized:
        out.append(Finding("environment", "containerized", str(want.containerized), str(have.containerized),
                           False, "the run was made " + ("in the image" if want.containerized else "on a host") +
                           "; numerics depend on the versions compared above, the output comparison tells"))
    if want.distributions_hash != have.distributions_hash:
        a, b = want.distributions, have.distributions
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        shown = ", ".join(f"{k} {a.get(k)}->{b.get(k)}" for k in diff[:6]) + (" ..." if len(diff) > 6 else "")
        out.append(Finding("environment", f"installed distributions ({len(diff)} differ)", want.distributions_hash,
                           have.distributions_hash, False,
                           f"not torch/megatron/TE/CUDA themselves: {shown}"))
    return out


def dict_diff(a: Any, b: Any, where: str = "") -> list[str]:
    """Key paths where two parsed JSON/TOML values differ, e.g. ``web: 1.0 -> 2.0``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{where}.{k}" if where else str(k)
            if k not in a:
                out.append(f"{sub}: added ({json.dumps(b[k])})")
            elif k not in b:
                out.append(f"{sub}: removed (was {json.dumps(a[k])})")
            else:
                out += dict_diff(a[k], b[k], sub)
        return out
    if a != b:
        return [f"{where or '(whole file)'}: {json.dumps(a)} -> {json.dumps(b)}"]
    return []


def check_folder(lock: RunLock, folder: TrainingFolder, blend_same: bool | None) -> list[Finding]:
    want = lock.folder.files
    content = lock.folder.content
    have = lockfile.folder_files(folder)
    now = lockfile.folder_content(folder)
    out = []
    for rel in sorted(set(want) | set(have)):
        if want.get(rel) == have.get(rel):
            continue
        unread = rel.endswith(UNREAD_SUFFIXES)
        if rel not in have:
            out.append(Finding("folder", rel, want[rel], "missing", not unread, "restore the file"
                               if not unread else "the run does not read it"))
        elif rel not in want:
            out.append(Finding("folder", rel, "absent", have[rel], False, "a new file; the run "
                               + ("does not read it" if unread else "reads only the files experiment.toml names")))
        elif unread:
            out.append(Finding("folder", rel, want[rel], have[rel], False, "the run does not read it"))
        elif rel in content and rel in now:
            changes = dict_diff(content[rel], now[rel])
            if not changes:
                out.append(Finding("folder", rel, want[rel], have[rel], False,
                                   "formatting/key order only: the parsed content is identical"))
            else:
                why = "; ".join(changes[:5])
                harmless = blend_same is True and rel != lockfile.Path("experiment.toml").name
                out.append(Finding("folder", rel, want[rel], have[rel], not harmless,
                                   why + ("; the blend given to Megatron is unchanged" if harmless else "")))
        else:
            out.append(Finding("folder", rel, want[rel], have[rel], True, "content changed"))
    return out


def check_signatures(lock: RunLock, folder: TrainingFolder) -> list[Finding]:
    want = lock.signatures
    have = {k: SignatureRecord.model_validate(v) for k, v in lockfile.signatures_section(folder).items()}
    out = []
    for key in sorted(set(want) | set(have)):
        w, h = want.get(key), have.get(key)
        if w is None or h is None:
            out.append(Finding("signature", key, "listed" if w else "absent", "listed" if h else "absent", True,
                               "the folder reads another set of data signatures"))
        elif w.file_hash != h.file_hash:
            if w.canonical_hash == h.canonical_hash:
                out.append(Finding("signature", key, w.file_hash, h.file_hash, False,
                                   "shards reordered or reformatted only: the signature is read as a set (sorted "
                                   "by prefix), so the planner and Megatron see the same shards in the same order"))
            else:
                out.append(Finding("signature", key, w.canonical_hash, h.canonical_hash, False,
                                   "signature content changed; the shard, tokenizer and blend checks below say "
                                   "what it changes"))
    return out


def check_tokenizer(lock: RunLock, folder: TrainingFolder) -> list[Finding]:
    want, have = lock.tokenizer, lockfile.tokenizer_section(folder)
    out = []
    for key in sorted(set(want) & set(have)):
        w, h = want[key], have[key]
        if w != h:
            fields = [k for k in sorted(set(w) | set(h)) if w.get(k) != h.get(k)]
            out.append(Finding("tokenizer", f"{key}: {w.get('name')}", ", ".join(f"{k}={w.get(k)}" for k in fields),
                               ", ".join(f"{k}={h.get(k)}" for k in fields), True,
                               "the shards were tokenized with another tokenizer: token ids differ"))
    return out


def check_data(lock: RunLock, folder: TrainingFolder, cache: HashCache, data_root: Path | None,
               blend_now: list | None) -> tuple[list[Finding], dict[str, str]]:
    """Every locked shard's bytes; a shard that is gone under its name is looked for by content.
    Returns the findings and the renames found ({locked shard key: its new key})."""
    want = lock.data.shards
    now = lockfile.shard_files(folder, data_root)
    out: list[Finding] = []
    renames: dict[str, str] = {}
    present: dict[str, Path] = {}
    for key, info in now.items():
        for ext in (".bin", ".idx"):
            p = info["root"] / (info["prefix"] + ext)
            if p.is_file():
                present[f"{key}{ext}"] = p
    by_algo: dict[str, list[str]] = {}
    for name, p in present.items():
        by_algo.setdefault(now[name.rsplit(".", 1)[0]]["algorithm"], []).append(os.fspath(p))
    digests: dict[str, str] = {}
    for algo, paths in by_algo.items():
        digests.update(hash_files(paths, algo, cache))
    found_by_hash = {digests[os.fspath(p)]: name for name, p in present.items()}
    locked_blend = {n: (i, w) for i, (n, w) in enumerate(lock.data.blend.entries)}
    new_blend = {n: (i, w) for i, (n, w) in enumerate(blend_now or [])}
    for key in sorted(want):
        w = want[key]
        for ext in ("bin", "idx"):
            name = f"{key}.{ext}"
            expect = getattr(w, ext)
            if name in present:
                got = digests[os.fspath(present[name])]
                if got != expect.hash:
                    size = os.path.getsize(present[name])
                    out.append(Finding("data", name, f"{expect.hash} ({expect.bytes} bytes)",
                                       f"{got} ({size} bytes)", True,
                                       "the shard's bytes changed" + ("" if size == expect.bytes else
                                                                       ", and its size")))
                continue
            twin = found_by_hash.get(expect.hash)
            if twin is None:
                out.append(Finding("data", name, expect.hash, "missing", True,
                                   "no shard with these bytes is listed; restore it or pass --data-root"))
                continue
            old, new = key, twin.rsplit(".", 1)[0]
            renames[old] = new
            same_place = locked_blend.get(old) is not None and locked_blend.get(old) == new_blend.get(new)
            out.append(Finding(
                "data", name, f"{old}.{ext}", f"renamed to {new}.{ext} (same bytes)", not same_place,
                "same bytes, same weight and same place in the blend: Megatron reads identical samples"
                if same_place else
                "same bytes, but the name sets language/domain/token count and its place in the sorted blend: "
                f"blend entry {locked_blend.get(old)} -> {new_blend.get(new)}"))
    return out, renames


def check_blend(lock: RunLock, blend_now: list | None, renames: Mapping[str, str] | None = None) -> list[Finding]:
    """The blend given to Megatron, entry by entry (a renamed shard compared under its new name)."""
    renames = renames or {}
    want = [[renames.get(n, n), w] for n, w in lock.data.blend.entries]
    if not lock.data.blend.available or blend_now is None:
        return []
    if want == blend_now:
        return []
    for i, (a, b) in enumerate(zip(want, blend_now)):
        if a != b:
            return [Finding("blend", f"entry {i}", f"{a[0]} weight {a[1]!r}", f"{b[0]} weight {b[1]!r}", True,
                            "the shard probabilities given to Megatron differ, so the sample order differs")]
    return [Finding("blend", "length", str(len(want)), str(len(blend_now)), True, "another number of shards")]


def check_base(lock: RunLock, folder: TrainingFolder, cache: HashCache, base: Path | None) -> list[Finding]:
    want = lock.base_checkpoint
    if want is None:
        return []
    root = base if base is not None else folder.resolve(folder.config.checkpoint.base)
    if not root.is_dir():
        return [Finding("base", want.path, want.hash, "missing", True, "pass --base DIR or restore it")]
    have = BaseCheckpointRecord.model_validate(lockfile.base_checkpoint_section(folder, cache, base))
    if have.hash == want.hash:
        return []
    diff = sorted(k for k in set(want.files) | set(have.files) if want.files.get(k) != have.files.get(k))
    return [Finding("base", f"{want.path}/{k}", str(want.files.get(k, "absent")),
                    str(have.files.get(k, "absent")), True, "the base weights differ") for k in diff]


def determinism_now(folder: TrainingFolder) -> dict[str, str]:
    """What a run of this folder exports now (the runner's recipe for its ``training.deterministic``)."""
    from experiment import determinism

    return dict(sorted(determinism.environment(folder.config.training.deterministic).items()))


def check_determinism(lock: RunLock, folder: TrainingFolder, environ: Mapping[str, str]) -> list[Finding]:
    """The locked determinism variables against the recipe a run would export now (blocking), and
    against this shell's environment (named; the launcher exports the recipe over it, so not in force)."""
    want, have = lock.determinism, determinism_now(folder)
    out = []
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            out.append(Finding("determinism", key, str(want.get(key)), str(have.get(key)), True,
                               "a run of this folder now exports another value (training.deterministic or the "
                               "kit's recipe changed)"))
        elif key in environ and environ[key] != want[key]:
            out.append(Finding("determinism", key, want[key], f"{environ[key]} (your environment)", False,
                               f"`experiment run` exports {key}={want[key]} for the run over your environment's "
                               "value, so the locked value is in force"))
    return out


def _counted(cache: HashCache, name: str, reads: dict[str, tuple[int, int]] | None, check, *args):
    """Run one hashing check; ``reads[name]`` = (files served from the cache, files read in full)."""
    hits, missed = cache.hits, cache.reads
    result = check(*args)
    if reads is not None:
        reads[name] = (cache.hits - hits, cache.reads - missed)
    return result


def verify(lock: RunLock, folder: TrainingFolder, *, cache: HashCache, data_root: Path | None = None,
           base: Path | None = None, environ: Mapping[str, str] | None = None,
           image: environment.ImageInfo | None = None,
           reads: dict[str, tuple[int, int]] | None = None) -> list[Finding]:
    """Every difference between the lock and this machine's code, environment and inputs. ``reads``
    (if given) receives, per hashing check (data, base), how many files came from the cache and how many
    were read in full."""
    environ = environ or {}
    blend_now, plan_error = None, None
    try:
        blend = BlendRecord.model_validate(lockfile.blend_section(folder, data_root))
        blend_now = [[name, weight] for name, weight in blend.entries] if blend.available else None
    except (FolderError, ValueError, OSError) as err:
        plan_error = err
    findings_data, renames = _counted(cache, "data", reads, check_data, lock, folder, cache, data_root, blend_now)
    if plan_error is not None:
        findings_blend = [Finding("blend", "plan", "a plan", "none", True,
                                  f"the mixture cannot be planned: {plan_error}")]
    else:
        findings_blend = check_blend(lock, blend_now, renames)
    return [
        *check_code(lock),
        *check_environment(lock, image),
        *check_folder(lock, folder, not findings_blend and blend_now is not None),
        *check_signatures(lock, folder),
        *check_tokenizer(lock, folder),
        *findings_data,
        *findings_blend,
        *_counted(cache, "base", reads, check_base, lock, folder, cache, base),
        *check_determinism(lock, folder, environ),
    ]


def print_findings(findings: list[Finding], title: str, console) -> None:
    """One block per finding (long hashes and reasons stay readable in a log, unlike a narrow table)."""
    console.print(f"[bold]{title}[/bold]")
    for f in findings:
        mark = "[red]BLOCKS[/red]" if f.blocking else "[green]harmless[/green]"
        console.print(f"  {mark} [bold]{f.area}[/bold] {f.what}", soft_wrap=True)
        console.print(f"      expected: {f.expected}", soft_wrap=True, highlight=False)
        console.print(f"      found:    {f.found}", soft_wrap=True, highlight=False)
        console.print(f"      why:      {f.why}", soft_wrap=True, highlight=False)
