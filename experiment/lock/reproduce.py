"""``experiment reproduce LOCK``: verify the inputs against a lockfile, re-run, compare the outputs.

1. verify: ``lock.verify`` compares code, environment, folder, data, blend, base and determinism with the
   lock; a blocking difference stops here (unless ``--ignore``).
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
from typing import Mapping

from experiment.folder import TrainingFolder
from experiment.lock import environment, lockfile
from experiment.lock.hashing import HashCache
from experiment.lock.records import OutputsRecord, RunLock
from experiment.lock.verify import load_folder, locked_overrides, print_findings, verify
from experiment.mixture.checks import load_checked

# checkpoint files that hold tensor data (the rest is bookkeeping: manifests, metadata)
TENSOR_DATA_SUFFIXES = (".distcp", ".pt", ".bin", ".safetensors")


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
    overrides: tuple[str, ...] = ()  # the lock's `--set` list (reproduce_run fills it in from the lock)


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
            sig = sigmod.read_signature(folder.resolve(written))
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


def local_world_size(lock: RunLock) -> int | None:
    """The processes a re-run on this one machine starts: the lock's whole world (nodes x ranks per node), so
    a run of 2 nodes x 1 rank re-runs as 2 local processes, with the same layout and data order (the
    folder's ``launch.nproc_per_node`` alone is one node's share)."""
    return lock.launch.world_size or None


def world_size_problem(lock: RunLock, lockfile_path: Path) -> str | None:
    """Why this machine cannot run the lock's world as local processes, with the numbers and the fix; None
    when it can. GPU runs need one visible GPU per rank; CPU runs one core per rank (gloo ranks on fewer
    cores than ranks run, but each step takes the sum of their compute and a run of days becomes weeks)."""
    world = lock.launch.world_size
    nodes = lock.launch.launcher.get("nnodes", 1)
    where = (f"{lockfile_path}: launch.world_size {world} ({nodes} node(s) x "
             f"{lock.launch.launcher.get('nproc_per_node', world // max(1, nodes))} rank(s))")
    fix = ("re-run it where that many fit: `experiment reproduce LOCK --launcher slurm` on a cluster, or a "
           "machine with more")
    if lock.environment.gpu:
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < world:
            return f"{where} ran on GPUs ({', '.join(lock.environment.gpu)}); this machine has {have} visible; fix: {fix}"
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < world:
        return f"{where} needs {world} CPU cores here, one per rank; this machine gives this process {cores}; fix: {fix}"
    return None


def rerun_command(folder_path: Path, options: ReproduceOptions, nproc: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "experiment.cli", "run", os.fspath(folder_path)]
    if options.container:
        cmd += ["--container"] + (["--image", options.image] if options.image else [])
    else:
        cmd += ["--host"]
    # always named: a folder whose experiment.toml says slurm/pbs would otherwise submit and return at once
    cmd += ["--launcher", options.launcher]
    if options.launcher != "local":
        cmd += ["--wait"]  # returns when the chain of jobs has ended
    if nproc and options.launcher == "local":
        cmd += ["--nproc", str(nproc)]
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


def reproduce_run(options: ReproduceOptions, console) -> int:
    """Verify the inputs against the lock, re-run in a mirror, compare the outputs; ``logs/reproduce.json``
    records the verdict. Exit status: 0 reproduced (or verified), 1 inputs differ, 2 outputs diverged,
    3 re-run failed."""
    from rich.table import Table

    lock = lockfile.read_lock(options.lockfile)
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
    nproc = None
    if options.launcher == "local":
        problem = world_size_problem(lock, Path(options.lockfile))
        if problem:
            console.print(f"[red]refusing to re-run[/red]: {problem}", soft_wrap=True, highlight=False)
            return 1
        nproc = local_world_size(lock)
        nodes = lock.launch.launcher.get("nnodes", 1)
        if nodes > 1:
            hosts = ", ".join(dict.fromkeys(h for seg in lock.launch.launcher.get("segments", [])
                                            for h in seg.get("hosts", [])))
            console.print(f"the lock ran on {nodes} nodes{f' ({hosts})' if hosts else ''}: re-running its world "
                          f"size {nproc} as {nproc} local processes on this machine", highlight=False, soft_wrap=True)
    work = options.out or (folder.path / ".reproduce")
    mirror = mirror_folder(folder, work, options.base, options.data_root)
    cmd = rerun_command(mirror, options, nproc)
    console.print(f"re-running: {' '.join(cmd)}")
    res = subprocess.run(cmd)
    if res.returncode != 0:
        console.print(f"[red]re-run failed[/red] (exit {res.returncode})")
        return 3
    have = OutputsRecord.model_validate(lockfile.outputs_section(load_checked(mirror, overrides=options.overrides), cache))
    div = compare_outputs(lock.outputs, have, options.steps)
    relock = mirror / lockfile.LOCK_NAME
    sections = differing_sections(lock, lockfile.read_lock(relock)) if relock.is_file() else None
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
