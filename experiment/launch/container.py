"""Run a training folder's runner inside the kit's pinned image.

Locally with podman (or docker): the folder (read-write), its data signatures, their shard roots and
the base checkpoint (read-only) are mounted at the same absolute paths inside the container, so every
relative path of the folder resolves the same way and nothing is rewritten. On clusters the same
mounts become an ``apptainer exec --bind`` line, a ``podman run -v`` line (``launch.container_runtime =
"podman"``: each node's podman runs the image from its store, on the node's own network and host name) or an
``srun --container-image --container-mounts`` line (pyxis/enroot) for the Slurm/PBS scripts.

The image's ref and digest (looked up with the engine when not given) travel in a small read-only file
mounted at /run/midtrain-kit/image-ref.json (and as MIDTRAIN_IMAGE_REF / MIDTRAIN_IMAGE_DIGEST for job
scripts); inside, the kit believes them only when its environment hash equals the one the image
recorded at build (``experiment.lock.environment.detect_image``), and the lockfile then records
``containerized: true`` with that ref and digest.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from experiment.engine import engine_env
from experiment.errors import KitError
from experiment.folder import TrainingFolder
from experiment.lock.environment import IMAGE_DIGEST_VAR, IMAGE_REF_VAR, RUN_IMAGE_PATH

ENGINES = ("podman", "docker")
DEFAULT_IMAGE = "localhost/midtrain-kit:cpu"
CLUSTER_RUNTIMES = ("apptainer", "podman")  # launch.container_runtime
# passed into a job's container by name, from each node's environment: the scheduler's job variables (the chain's
# job id, node count, restarts) and the rendezvous address the job script sets
JOB_ENV = ("SLURM_*", "PBS_*", "MASTER_ADDR", "MASTER_PORT", "MIDTRAIN_JOB_END_TIME", "MIDTRAIN_JOB_START")
# the same for Apptainer, whose --cleanenv takes names only with their values: the job variables the kit reads
# (experiment.launcher_names, experiment.train.walltime), expanded by the job script on each node
APPTAINER_JOB_ENV = ("SLURM_JOB_ID", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NODELIST",
                     "SLURM_RESTART_COUNT", "PBS_JOBID", "PBS_NODEFILE", "PBS_WALLTIME", "MASTER_ADDR",
                     "MASTER_PORT", "MIDTRAIN_JOB_END_TIME", "MIDTRAIN_JOB_START")
ENGINE_VARS = ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF")  # the kit's engine settings (experiment.engine)


class ContainerError(KitError):
    """No engine, no image, or the container failed; the message says what to do."""


@dataclass(frozen=True)
class Mount:
    path: Path
    read_only: bool = True
    target: Path | None = None  # where it appears inside (default: the same path)

    def spec(self) -> str:
        return f"{self.path}:{self.target or self.path}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True)
class ContainerRun:
    """One validated container invocation (built by the CLI, executed by ``run``)."""

    engine: str
    image: str
    mounts: tuple[Mount, ...]
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None


def detect_engine(prefer: str | None = None) -> str | None:
    for name in ([prefer] if prefer else []) + list(ENGINES):
        if name and shutil.which(name):
            return name
    return None


def image_id(engine: str, ref: str, root: str | None = None) -> dict[str, str] | None:
    """{"id": config digest, "digest": manifest digest} of a local image, or None if it is not there."""
    args = [engine, *(["--root", root] if root else []), "image", "inspect", "--format", "{{.Id}} {{.Digest}}", ref]
    res = subprocess.run(args, capture_output=True, text=True, env=engine_env())
    if res.returncode != 0:
        return None
    ident, _, digest = res.stdout.strip().partition(" ")
    ident = ident if ident.startswith("sha256:") else f"sha256:{ident}"
    return {"id": ident, "digest": digest or ident}


def folder_mounts(folder: TrainingFolder) -> tuple[Mount, ...]:
    """The folder (rw) and everything it reads (ro), at the same paths, nested paths folded.

    The folder's relative references (``../../data_signatures/x.json``) are resolved inside the
    container from the folder's own path, through any symlinks on the way (``reproduce`` mirrors a
    folder with links), so the lowest common folder of the folder and its references is mounted
    read-only, and every real target (signature folders, shard roots, base checkpoint) too."""
    from experiment.data import signature as sigmod

    cfg = folder.config
    refs = [*cfg.data.signatures, cfg.data.data_ratio, cfg.data.lang_prob, cfg.data.exclude_iterator]
    base = cfg.checkpoint.base if cfg.checkpoint.base and not cfg.checkpoint.from_scratch else None
    lexical = [Path(os.path.normpath(folder.path / r)) for r in [*refs, base] if r and not Path(r).is_absolute()]
    top = Path(os.path.commonpath([folder.path, *lexical]))
    wanted: dict[Path, bool] = {folder.path: False}
    if top != folder.path:
        wanted[top] = True
    for path in folder.signature_paths:
        wanted.setdefault(path.parent, True)
        try:
            wanted.setdefault(sigmod.read_signature(path).root_path(path), True)
        except (OSError, ValueError):
            pass  # a broken signature is reported by `experiment check`; mount what exists
    if base:
        wanted.setdefault(folder.resolve(base), True)
    mounts: list[Mount] = []
    for p in sorted(wanted, key=lambda q: len(q.parts)):
        inside = [m for m in mounts if p == m.path or m.path in p.parents]
        if inside:
            if not wanted[p] and all(m.read_only for m in inside):  # rw inside a ro mount: its own rw mount
                mounts.append(Mount(p, False))
            continue
        mounts.append(Mount(p, wanted[p]))
    return tuple(mounts)


def inner_run_command(folder: TrainingFolder, nproc: int | None = None) -> tuple[str, ...]:
    """What runs inside: the same ``experiment run`` (it detects the pinned image by its env hash)."""
    cmd = ["experiment", "run", os.fspath(folder.path)]
    if nproc:
        cmd += ["--nproc", str(nproc)]
    cmd += [a for o in getattr(folder, "overrides", ()) for a in ("--set", o)]
    return tuple(cmd)


def plan(folder: TrainingFolder, image: str = DEFAULT_IMAGE, *, engine: str | None = None,
         command: tuple[str, ...] | None = None, digest: str | None = None,
         extra_mounts: tuple[Mount, ...] = ()) -> ContainerRun:
    found = detect_engine(engine)
    if found is None:
        raise ContainerError(
            f"no container engine ({' or '.join(ENGINES)}) on this machine; install podman "
            "(apt-get install podman buildah runc) or run on the host with --host"
        )
    if digest is None:
        ident = image_id(found, image)
        if ident is None:
            raise ContainerError(f"image {image} is not in {found}'s local store; build it with "
                                 "`nox -s build_image -- --flavor cpu` (or pull it)")
        digest = ident["id"]
    env = {IMAGE_REF_VAR: image, IMAGE_DIGEST_VAR: digest}
    ref_file = _ref_file(folder, image, digest)
    mounts = folder_mounts(folder) + (Mount(ref_file, True, RUN_IMAGE_PATH),) + tuple(extra_mounts)
    return ContainerRun(found, image, mounts, command or inner_run_command(folder), env, folder.path)


def _ref_file(folder: TrainingFolder, image: str, digest: str) -> Path:
    """A small file naming the image as started; mounted read-only where detect_image reads it."""
    import json
    import tempfile

    d = Path(tempfile.gettempdir()) / "midtrain-kit-image-refs"
    d.mkdir(exist_ok=True)
    path = d / f"{folder.config.name}-{os.getpid()}.json"
    path.write_text(json.dumps({"ref": image, "digest": digest}, sort_keys=True) + "\n")
    return path


def engine_argv(run: ContainerRun, options: tuple[str, ...] = ()) -> list[str]:
    """``podman run`` argv: --init (Python as PID 1 ignores SIGTERM), host network for torchrun."""
    argv = [run.engine, "run", "--rm", "--init", "--network", "host", "--ipc", "host", *options]
    for m in run.mounts:
        argv += ["-v", m.spec()]
    for k, v in sorted(run.env.items()):
        argv += ["-e", f"{k}={v}"]
    if run.workdir:
        argv += ["-w", os.fspath(run.workdir)]
    return argv + [run.image, *run.command]


def podman_line(run: ContainerRun, engine_vars: dict[str, str] | None = None) -> str:
    """The same run with podman on each node of a job (``launch.container_runtime = "podman"``).

    ``podman run --rm --init --network host --uts host``: the node's own addresses, ``/etc/hosts`` and host name,
    so torchrun's rendezvous across nodes works as on the host; the scheduler's job variables and the rendezvous
    address pass by name (``-e 'SLURM_*'``, ``-e MASTER_ADDR``: each node's own values). The kit's engine
    settings (``CONTAINERS_CONF``/``CONTAINERS_STORAGE_CONF``, as ``experiment.engine`` gives them to the local
    launcher) go in front, so every node's podman reads the same configuration and store."""
    conf = {k: v for k, v in (engine_env() if engine_vars is None else engine_vars).items() if k in ENGINE_VARS}
    options = ("--uts", "host", *(a for name in JOB_ENV for a in ("-e", name)))
    prefix = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(conf.items())) + " " if conf else ""
    return prefix + shlex.join(engine_argv(dataclasses.replace(run, engine="podman"), options))


def local_digest(ref: str) -> str | None:
    """The image id (what the lock records as its digest) of ``ref`` in this machine's podman store, or None
    (no podman here, or the image is not in its store)."""
    if not shutil.which("podman"):
        return None
    ident = image_id("podman", ref)
    return ident["id"] if ident else None


def cluster_prefix(folder: TrainingFolder, runtime: str, image: str, digest: str | None,
                   env: dict[str, str]) -> str:
    """What a Slurm/PBS job puts in front of its ``torchrun`` and ``chain begin/end`` lines under --container.

    apptainer: ``apptainer exec ... SIF`` (``image``: a .sif path or a URI). podman: ``podman run ... REF`` with a
    small file naming the image and its digest (``image.digest``, else the id in this machine's store) mounted
    where ``detect_image`` reads it, written into the folder's ``launch/`` (the shared filesystem, next to the
    job script), so the lock ``chain end`` writes records the image's digest."""
    if runtime not in CLUSTER_RUNTIMES:
        raise ContainerError(f"launch.container_runtime {runtime!r}: use one of {', '.join(CLUSTER_RUNTIMES)}")
    ids = {IMAGE_REF_VAR: image, **({IMAGE_DIGEST_VAR: digest} if digest else {})}
    if runtime == "apptainer":
        plan = ContainerRun("apptainer", image, folder_mounts(folder), (), {**ids, **env}, folder.path)
        return apptainer_line(plan, image).rstrip()
    import json

    ref_file = folder.path / "launch" / "image-ref.json"
    ref_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref_file.with_name(f".{ref_file.name}.tmp")
    tmp.write_text(json.dumps({"ref": image, "digest": digest}, sort_keys=True) + "\n")
    tmp.replace(ref_file)
    mounts = folder_mounts(folder) + (Mount(ref_file, True, RUN_IMAGE_PATH),)
    return podman_line(ContainerRun("podman", image, mounts, (), {**ids, **env}, folder.path))


def apptainer_line(run: ContainerRun, sif: str) -> str:
    """The same run with Apptainer (clusters without Docker): ``apptainer exec --nv --bind ... SIF cmd``."""
    binds = ",".join(m.spec() for m in run.mounts)
    env = " ".join(f"--env {shlex.quote(f'{k}={v}')}" for k, v in sorted(run.env.items()))
    job = " ".join(f'--env "{k}=${{{k}:-}}"' for k in APPTAINER_JOB_ENV)  # each node's own values, at run time
    return (f"apptainer exec --nv --cleanenv {env} {job} --bind {shlex.quote(binds)} {shlex.quote(sif)} "
            + shlex.join(run.command))


def srun_line(run: ContainerRun, squashfs_or_ref: str) -> str:
    """The same run under Slurm with pyxis/enroot: ``srun --container-image=... --container-mounts=...``."""
    mounts = ",".join(m.spec() for m in run.mounts)
    env = ",".join(["ALL", *sorted(f"{k}={v}" for k, v in run.env.items())])
    return (f"srun --export={shlex.quote(env)} --container-image={shlex.quote(squashfs_or_ref)} "
            f"--container-mounts={shlex.quote(mounts)} --container-workdir={shlex.quote(os.fspath(run.workdir))} "
            + shlex.join(run.command))


def run(run: ContainerRun) -> int:
    """Execute it, streaming the container's output; returns the exit status."""
    return subprocess.run(engine_argv(run), env=engine_env()).returncode
