"""``experiment reproduce LOCK``: verify the inputs against a lockfile, re-run, compare the outputs.

1. verify: code, environment/image, the folder's files, signatures, tokenizer, every shard's bytes,
   the blend given to Megatron, the base checkpoint and the determinism variables are recomputed and
   compared with the lock. Each difference is one ``Finding`` that names exactly what differs
   (file, key, shard, variable; expected and found) and says whether it can change the run. Harmless
   ones (a reformatted JSON file, a reordered signature, a renamed shard whose bytes, weight and place
   in the blend are unchanged) are explained and do not block.
2. re-run: the folder is mirrored into a scratch tree (its files copied, what it points at linked, so
   every relative path resolves as before and ``experiment.toml`` stays byte-identical) and
   ``experiment run`` trains it, on the host or in the pinned image.
3. compare: per-step losses (then grad norms) and each checkpoint's files and tensors; the first step
   and the first tensor that differ are named.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from experiment.folder import FolderError, TrainingFolder
from experiment.mixture.checks import load_checked
from experiment.lock import environment, lockfile
from experiment.lock.hashing import HashCache, hash_files
from experiment.lock.records import (BaseCheckpointRecord, BlendRecord, EnvironmentRecord, KitRecord, OutputsRecord, RunLock,
                                     SignatureRecord)

# environment entries whose change can change the numbers (the rest of the distribution set is noted)
NUMERIC_ENV = ("torch", "megatron_core", "transformer_engine", "cuda", "cudnn", "nccl", "machine")
# checkpoint files that hold tensor data (the rest is bookkeeping: manifests, metadata)
TENSOR_DATA_SUFFIXES = (".distcp", ".pt", ".bin", ".safetensors")
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


@dataclass(frozen=True)
class ReproduceOptions:
    lockfile: Path
    steps: int | None = None
    data_root: Path | None = None
    base: Path | None = None
    container: bool = False
    image: str | None = None
    ignore: bool = False
    verify_only: bool = False
    out: Path | None = None
    hash_cache: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    folder: Path | None = None  # default: the lockfile's folder
    launcher: str = "local"  # or slurm/pbs: the re-run is a chain of jobs, waited for
    overrides: tuple[str, ...] = ()  # the lock's `--set` list (main fills it in from the lock)


@dataclass(frozen=True)
class Divergence:
    """Where a re-run first differs from the lock (None fields: that part matched)."""

    step: int | None = None
    field: str | None = None
    expected: str | None = None
    found: str | None = None
    checkpoint: str | None = None
    tensor: str | None = None
    files: tuple[str, ...] = ()
    compared_steps: int = 0
    compared_checkpoints: tuple[str, ...] = ()

    @property
    def identical(self) -> bool:
        return self.step is None and self.checkpoint is None

    @property
    def numerically_identical(self) -> bool:
        """Losses and every tensor equal; only bookkeeping files (not tensor data) differ."""
        return self.step is None and self.tensor is None and not any(
            f.endswith(TENSOR_DATA_SUFFIXES) or f == "(checkpoint missing)" for f in self.files)


def _short(h: Any) -> str:
    s = str(h)
    return s[:16] + "..." if len(s) > 19 and all(c in "0123456789abcdef" for c in s) else s


# ------------------------------------------------------------------------------------------ verify

def load_folder(path: Path, overrides: tuple[str, ...] | list[str] = ()) -> TrainingFolder:
    """The folder as far as verification needs it: a missing or renamed shard is a finding to name,
    not a reason to stop, so artifacts are not required here (the re-run requires them). ``overrides``:
    the ``--set`` list the lock recorded, applied again."""
    return load_checked(path, require_artifacts=False, overrides=tuple(overrides))


def locked_overrides(lock: RunLock) -> tuple[str, ...]:
    """The ``experiment run --set`` overrides a locked run was started with (none for older locks)."""
    return tuple(lock.config.overrides)


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


def _dict_diff(a: Any, b: Any, where: str = "") -> list[str]:
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
                out += _dict_diff(a[k], b[k], sub)
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
            changes = _dict_diff(content[rel], now[rel])
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


# ------------------------------------------------------------------------------------------ re-run

def mirror_folder(folder: TrainingFolder, work: Path, base: Path | None = None,
                  data_root: Path | None = None) -> Path:
    """A scratch copy of the folder's description at ``work/<ancestors>/<name>``, with every path it
    points at (``../..``-relative) linked at the same relative place: experiment.toml is unchanged.
    ``base`` replaces the base checkpoint it links to (reproduce --base); ``data_root`` writes the
    signatures into the mirror with that root (reproduce --data-root)."""
    cfg = folder.config
    refs = [*cfg.data.signatures, cfg.data.data_ratio, cfg.data.lang_prob, cfg.data.exclude_iterator]
    base_ref = cfg.checkpoint.base if cfg.checkpoint.base and not cfg.checkpoint.from_scratch else None
    if base_ref:
        refs.append(base_ref)
    refs = [r for r in refs if r]
    if base is not None and base_ref and Path(base_ref).is_absolute():
        raise ValueError(f"checkpoint.base is the absolute path {base_ref}; --base can only replace a relative one")
    depth = 0
    for r in refs:
        parts = Path(r).parts
        depth = max(depth, next((i for i, p in enumerate(parts) if p != ".."), len(parts)))
    dest = work.joinpath(*folder.path.parts[len(folder.path.parts) - max(depth, 1):])
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for rel in lockfile.folder_files(folder):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder.path / rel, dest / rel)
    if data_root is not None:
        from experiment.data import signature as sigmod

        for written in cfg.data.signatures:
            leaf = Path(os.path.normpath(dest / written))
            leaf.parent.mkdir(parents=True, exist_ok=True)
            sig = sigmod.read(folder.resolve(written))
            leaf.write_text(sig.model_copy(update={"root": os.fspath(data_root.resolve())}).to_json())
    if base is not None and base_ref:
        leaf = Path(os.path.normpath(dest / base_ref))
        if leaf.is_symlink() or leaf.exists():
            leaf.unlink()
        leaf.parent.mkdir(parents=True, exist_ok=True)
        leaf.symlink_to(base.resolve())
    for r in refs:
        if Path(r).is_absolute():
            continue  # resolves the same from anywhere
        lexical = Path(os.path.normpath(folder.path / r))
        rel = Path(os.path.normpath(dest / r)).relative_to(work)
        cur = work
        for i, part in enumerate(rel.parts):
            cur = cur / part
            if cur.is_dir() and not cur.is_symlink() and (cur == dest or cur in dest.parents or dest in cur.parents):
                continue  # one of the mirror's own folders: go deeper
            if not cur.exists() and not cur.is_symlink():
                original = lexical
                for _ in rel.parts[i + 1:]:
                    original = original.parent
                cur.symlink_to(original)
            break
    return dest


def rerun_command(folder_path: Path, options: ReproduceOptions) -> list[str]:
    cmd = [sys.executable, "-m", "experiment.cli", "run", os.fspath(folder_path)]
    if options.container:
        cmd += ["--container"] + (["--image", options.image] if options.image else [])
    else:
        cmd += ["--host"]
    # always named: a folder whose experiment.toml says slurm/pbs would otherwise submit and return at once
    cmd += ["--launcher", options.launcher]
    if options.launcher != "local":
        cmd += ["--wait"]  # returns when the chain of jobs has ended
    if options.steps:
        cmd += ["--max-iterations", str(options.steps)]
    cmd += [a for o in options.overrides for a in ("--set", o)]
    return cmd


def compare_outputs(want: OutputsRecord, have: OutputsRecord, steps: int | None = None) -> Divergence:
    """First step whose loss (then grad norm) differs, then the first checkpoint file and tensor."""
    w_steps = want.losses.steps
    h_steps = have.losses.steps
    if steps is not None:
        w_steps = [s for s in w_steps if s[0] is not None and s[0] <= steps]
    for i, expected in enumerate(w_steps):
        if i >= len(h_steps):
            return Divergence(step=expected[0], field="missing step", expected=str(expected[1]), found="(none)",
                              compared_steps=i)
        got = h_steps[i]
        if got != expected:
            field_ = next((n for n, a, b in zip(("step", "loss", "grad_norm", "lr"), expected, got) if a != b),
                          "record")
            return Divergence(step=expected[0], field=field_, expected=_fmt_row(expected), found=_fmt_row(got),
                              compared_steps=i)
    w_top, h_top = want.checkpoint_files, have.checkpoint_files
    top_bad = tuple(sorted(k for k in set(w_top) | set(h_top) if k != "latest_checkpointed_iteration.txt"
                           and w_top.get(k) != h_top.get(k)))
    if top_bad and steps is None:
        return Divergence(checkpoint="(checkpoint folder)", files=top_bad, compared_steps=len(w_steps))
    names = tuple(n for n in sorted(want.checkpoints)
                  if steps is None or int(n.removeprefix("iter_")) <= steps)
    first_bad: Divergence | None = None
    for name in names:
        w, h = want.checkpoints[name], have.checkpoints.get(name)
        if h is None:
            return Divergence(checkpoint=name, files=("(checkpoint missing)",), compared_steps=len(w_steps))
        bad = tuple(sorted(k for k in set(w.files) | set(h.files) if w.files.get(k) != h.files.get(k)))
        wt, ht = w.tensors or {}, h.tensors or {}
        tensor = next((k for k in sorted(set(wt) | set(ht)) if wt.get(k) != ht.get(k)), None)
        if tensor or (bad and first_bad is None):
            div = Divergence(checkpoint=name, tensor=tensor, files=bad, compared_steps=len(w_steps),
                             compared_checkpoints=names)
            if not div.numerically_identical:
                return div
            first_bad = first_bad or div
    return first_bad or Divergence(compared_steps=len(w_steps), compared_checkpoints=names)


def _fmt_row(row: list) -> str:
    vals = []
    for v in row[1:]:
        try:
            vals.append(f"{float.fromhex(v)!r} ({v})")
        except (TypeError, ValueError):
            vals.append(str(v))
    return ", ".join(vals)


# ------------------------------------------------------------------------------------------ main

def print_findings(findings: list[Finding], title: str, console) -> None:
    """One block per finding (long hashes and reasons stay readable in a log, unlike a narrow table)."""
    console.print(f"[bold]{title}[/bold]")
    for f in findings:
        mark = "[red]BLOCKS[/red]" if f.blocking else "[green]harmless[/green]"
        console.print(f"  {mark} [bold]{f.area}[/bold] {f.what}", soft_wrap=True)
        console.print(f"      expected: {f.expected}", soft_wrap=True, highlight=False)
        console.print(f"      found:    {f.found}", soft_wrap=True, highlight=False)
        console.print(f"      why:      {f.why}", soft_wrap=True, highlight=False)


def main(options: ReproduceOptions, console) -> int:
    """Exit status: 0 reproduced (or verified), 1 inputs differ, 2 outputs diverged, 3 re-run failed."""
    from rich.table import Table

    lock = lockfile.read(options.lockfile)
    folder_path = options.folder or Path(options.lockfile).resolve().parent
    options = replace(options, overrides=locked_overrides(lock))
    folder = load_folder(folder_path, options.overrides)
    if options.overrides:
        console.print("overrides recorded in the lock, applied again: " + " ".join(f"--set {o}" for o in options.overrides))
    cache = HashCache(options.hash_cache)
    image = environment.detect_image()
    reads: dict[str, tuple[int, int]] = {}
    findings = verify(lock, folder, cache=cache, data_root=options.data_root, base=options.base,
                      environ=options.environ, image=image, reads=reads)
    for name, (hits, full) in reads.items():
        how = "read in full" if not hits else ("cached (size, mtime, ctime, inode unchanged)" if not full else
                                              f"{hits} cached, {full} read in full")
        console.print(f"hash check {name}: {hits + full} file(s), {how}", highlight=False)
    blocking = [f for f in findings if f.blocking]
    if findings:
        print_findings(findings, f"{len(findings)} difference(s) from {options.lockfile} "
                                 f"({len(blocking)} blocking)", console)
    else:
        console.print(f"[green]inputs match[/green] {options.lockfile}: code, environment, data, tokenizer, "
                      "base weights and determinism")
    if blocking and not options.ignore:
        console.print("[red]refusing to re-run[/red]: fix the blocking differences above, or pass --ignore")
        return 1
    if options.verify_only:
        return 0
    work = options.out or (folder.path / ".reproduce")
    mirror = mirror_folder(folder, work, options.base, options.data_root)
    cmd = rerun_command(mirror, options)
    console.print(f"re-running: {' '.join(cmd)}")
    res = subprocess.run(cmd)
    if res.returncode != 0:
        console.print(f"[red]re-run failed[/red] (exit {res.returncode})")
        return 3
    have = OutputsRecord.model_validate(lockfile.outputs_section(load_checked(mirror, overrides=options.overrides), cache))
    div = compare_outputs(lock.outputs, have, options.steps)
    relock = mirror / lockfile.LOCK_NAME
    sections = differing_sections(lock, lockfile.read(relock)) if relock.is_file() else None
    rows = [(f"{div.compared_steps} step(s) of losses", "identical" if div.step is None else
             f"[red]first divergence at step {div.step}[/red] ({div.field}): expected {div.expected}, "
             f"found {div.found}")]
    if div.checkpoint is None:
        verdict = "identical"
    elif div.numerically_identical:
        verdict = (f"every tensor and tensor file identical; bookkeeping files differ in {div.checkpoint}: "
                   f"{', '.join(div.files)}")
    else:
        verdict = f"[red]{div.checkpoint} differs[/red]: first tensor {div.tensor}; files {', '.join(div.files)}"
    rows.append((f"checkpoints {', '.join(div.compared_checkpoints) or '(none)'}", verdict))
    if sections is not None:
        rows.append(("the re-run's run.lock.json", "byte-identical" if relock.read_text() == lockfile.dumps(lock)
                     else "sections that differ: " + ", ".join(sections)))
    table = Table(title="re-run against the lock")
    for col in ("compared", "result"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    reproduced = div.identical or div.numerically_identical
    _record_verdict(folder, reproduced, rows)
    return 0 if reproduced else 2


def _record_verdict(folder: TrainingFolder, reproduced: bool, rows: list[tuple[str, str]]) -> None:
    """``logs/reproduce.json``: the last verdict, for ``experiment report`` (logs/ is not part of the lock)."""
    from experiment.atomic import write_atomic

    plain = [(k, v.replace("[red]", "").replace("[/red]", "")) for k, v in rows]
    payload = {"reproduced": reproduced,
               "verdict": "reproduced: the re-run matches the lock" if reproduced else "NOT reproduced",
               "losses": f"{plain[0][0]}: {plain[0][1]}", "checkpoints": f"{plain[1][0]}: {plain[1][1]}"}
    if len(plain) > 2:
        payload["lockfile"] = f"{plain[2][0]}: {plain[2][1]}"
    write_atomic(folder.path / "logs" / "reproduce.json", json.dumps(payload, indent=1, sort_keys=True) + "\n")


def differing_sections(a: RunLock, b: RunLock) -> list[str]:
    """Top-level lock sections that differ (e.g. ``environment`` for a host lock re-run in the image)."""
    a, b = a.dump(), b.dump()
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
