"""One ``Launcher`` interface, one registry: how ``experiment run`` starts a folder's training.

Every launcher answers the same four questions, in order:

- ``validate(request) -> problems``: everything that would make the run fail at start, found before
  anything is written or submitted (each problem names the field and the fix);
- ``prepare(request) -> Prepared``: create what the run needs at start (``logs/``, the job script) and
  return the exact command or script;
- ``submit(prepared) -> Submitted``: run it (local, container: in the foreground) or hand it to the
  scheduler (slurm, pbs: the job id);
- ``lock_writer``: who writes ``run.lock.json`` -- ``"parent"`` (``experiment run`` after torchrun
  exits 0) or ``"job"`` (the last segment of a scheduled chain, ``experiment.launch.chain end``).

The registry's keys are ``experiment.launcher_names.LAUNCHER_NAMES``, the choices the folder schema and
the CLI offer.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from experiment import runlog
from experiment.errors import KitError
from experiment.launch import jobscript
from experiment.launch.local import Launch, command_line, local_argv, run_local
from experiment.launcher_names import LAUNCHER_NAMES

STARTUP_GUESS_S = 10.0  # a segment's start (interpreter, model build, resume) before it is measured


class LaunchError(KitError):
    """The launch cannot go ahead; the message names what, and how to fix it."""


@dataclass(frozen=True)
class Request:
    """One ``experiment run`` invocation, validated enough to build a ``Launch``."""

    folder: object  # experiment.folder.TrainingFolder
    launch: Launch
    container: bool = False
    image: str | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class Prepared:
    request: Request
    text: str  # the command line or the job script, as shown by --dry-run
    argv: tuple[str, ...] = ()
    script: Path | None = None


@dataclass(frozen=True)
class Submitted:
    returncode: int = 0
    job_id: str | None = None
    message: str = ""


class Launcher:
    name: ClassVar[str]
    lock_writer: ClassVar[str] = "parent"

    def validate(self, request: Request) -> list[str]:
        return []

    def prepare(self, request: Request) -> Prepared:
        raise NotImplementedError

    def submit(self, prepared: Prepared) -> Submitted:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ local

class LocalLauncher(Launcher):
    """torchrun on this machine, in the foreground."""

    name = "local"

    def prepare(self, request: Request) -> Prepared:
        exports = " ".join(f"{k}={v}" for k, v in request.launch.env)
        argv = tuple(local_argv(request.launch))
        return Prepared(request, (exports + " " if exports else "") + command_line(list(argv)), argv)

    def submit(self, prepared: Prepared) -> Submitted:
        return Submitted(run_local(prepared.request.launch))


class ContainerLauncher(Launcher):
    """The same runner inside the kit's pinned image (podman/docker); the inner ``experiment run`` writes
    the lock, inside the image, so it records the image's digest."""

    name = "container"
    lock_writer = "job"

    def _plan(self, request: Request):
        from experiment.launch import container as ctr

        cfg = request.folder.config
        plan = ctr.plan(request.folder, request.image or cfg.image.ref, digest=cfg.image.digest,
                        command=(*ctr.inner_run_command(request.folder, request.launch.nproc_per_node), "--host"))
        return dataclasses.replace(plan, env={**plan.env, **dict(request.launch.env)})

    def validate(self, request: Request) -> list[str]:
        from experiment.launch.container import ContainerError

        try:
            self._plan(request)
        except ContainerError as err:
            return [str(err)]
        return []

    def prepare(self, request: Request) -> Prepared:
        from experiment.launch import container as ctr

        argv = tuple(ctr.engine_argv(self._plan(request)))
        return Prepared(request, command_line(list(argv)), argv)

    def submit(self, prepared: Prepared) -> Submitted:
        return Submitted(subprocess.run(list(prepared.argv), env=__import__(
            "experiment.launch.container", fromlist=["engine_env"]).engine_env()).returncode)


# ------------------------------------------------------------------------------------------ clusters

class ClusterLauncher(Launcher):
    """A job script for a scheduler; the job runs a chain of segments until the run reaches its length."""

    lock_writer = "job"
    submit_tool: ClassVar[str]

    def settings(self, request: Request) -> jobscript.ClusterSettings:
        cfg = request.folder.config
        lc = cfg.launch
        prefix = None
        if request.container:  # launch.container_runtime: apptainer (a .sif or URI) or podman (the nodes' store)
            from experiment.launch import container as ctr

            image_ref = cluster_image(request)
            digest = cfg.image.digest or (ctr.local_digest(image_ref) if lc.container_runtime == "podman" else None)
            prefix = ctr.cluster_prefix(request.folder, lc.container_runtime, image_ref, digest,
                                        dict(request.launch.env))
        gpus = lc.gpus_per_node if lc.gpus_per_node is not None else (
            request.launch.nproc_per_node if cfg.image.flavor == "gpu" else 0)
        return jobscript.ClusterSettings(
            self.name, cfg.name, lc.walltime, lc.partition, lc.account, gpus=gpus, container_prefix=prefix,
            cpus_per_task=lc.cpus_per_task or 2 * request.launch.nproc_per_node, signal_seconds=lc.signal_seconds)

    def validate(self, request: Request) -> list[str]:
        problems = walltime_problems(request.folder)
        if not request.dry_run and shutil.which(self.submit_tool) is None:
            problems.append(f"{self.submit_tool} is not on this machine; run on a login node, or use --dry-run "
                            "to write the job script only")
        if not request.dry_run:
            problems += image_problems(request) + self.active_jobs_problems(request.folder)
        return problems

    def active_jobs_problems(self, folder) -> list[str]:
        return []

    def prepare(self, request: Request) -> Prepared:
        folder = request.folder.path
        (folder / "logs").mkdir(parents=True, exist_ok=True)  # the scheduler opens its output file there
        text = jobscript.render(request.launch, self.settings(request))
        path = jobscript.write(folder, self.name, text)
        jobscript.check_syntax(path)
        return Prepared(request, text, script=path)


class SlurmLauncher(ClusterLauncher):
    name = "slurm"
    submit_tool = "sbatch"

    def validate(self, request: Request) -> list[str]:
        """The cluster checks, the ``--signal=TERM@signal_seconds`` lead (the script's, not PBS's), then,
        unless ``--dry-run``, the request against the partition as ``scontrol`` sees it."""
        problems = super().validate(request) + signal_problems(request.folder)
        if not request.dry_run:
            problems += self.partition_problems(request)
        return problems

    def partition_problems(self, request: Request) -> list[str]:
        """CPUs, GPUs, nodes and walltime vs. the partition (``launch.partition`` or the default one); none
        when the scheduler cannot be asked or does not know the partition (sbatch's error then speaks)."""
        from experiment.launch import partition

        part = partition.query(request.folder.config.launch.partition)
        if part is None:
            return []
        s = self.settings(request)
        lc, nproc = request.folder.config.launch, request.launch.nproc_per_node
        ask = partition.Ask(
            s.cpus_per_task, s.gpus, request.launch.nnodes, s.walltime,
            cpus_note="" if lc.cpus_per_task else f" (default: 2 per rank x launch.nproc_per_node {nproc})",
            gpus_note="" if lc.gpus_per_node is not None or not s.gpus else
            f" (default: launch.nproc_per_node {nproc} with image.flavor = \"gpu\")")
        return partition.problems(ask, part)

    def active_jobs_problems(self, folder) -> list[str]:
        active = active_jobs(folder.path)
        return [f"job {j} ({state}) of this folder's chain is {'queued' if state == 'PENDING' else 'running'}: "
                f"a second chain would train the same checkpoints; wait for it (`experiment status "
                f"{folder.path}`) or cancel it with `scancel {j}`" for j, state in active]

    def submit(self, prepared: Prepared, dependency: str | None = None, by: str = "cli") -> Submitted:
        job = sbatch(prepared.script, dependency)
        runlog.append_chain(prepared.request.folder.path / runlog.LOGS,
                            {"event": "submitted", "job_id": job, "by": by, "after": dependency})
        return Submitted(0, job, f"submitted job {job}")


class PbsLauncher(ClusterLauncher):
    name = "pbs"
    submit_tool = "qsub"

    def submit(self, prepared: Prepared, dependency: str | None = None, by: str = "cli") -> Submitted:
        argv = ["qsub", *(["-W", f"depend=afterany:{dependency}"] if dependency else []), os.fspath(prepared.script)]
        res = subprocess.run(argv, capture_output=True, text=True, cwd=prepared.script.parent)
        if res.returncode:
            raise LaunchError(f"qsub {prepared.script} failed: {res.stderr.strip()}; fix launch.partition "
                              "(the queue) or launch.account in experiment.toml")
        job = res.stdout.strip()
        runlog.append_chain(prepared.request.folder.path / runlog.LOGS,
                            {"event": "submitted", "job_id": job, "by": by, "after": dependency})
        return Submitted(0, job, f"submitted job {job}")


LAUNCHERS: dict[str, Launcher] = {"local": LocalLauncher(), "container": ContainerLauncher(),
                                  "slurm": SlurmLauncher(), "pbs": PbsLauncher()}
assert tuple(LAUNCHERS) == LAUNCHER_NAMES


def get(name: str) -> Launcher:
    if name not in LAUNCHERS:
        raise LaunchError(f"--launcher {name!r}: use one of {', '.join(LAUNCHERS)}")
    return LAUNCHERS[name]


# ------------------------------------------------------------------------------------------ helpers

def cluster_image(request: Request) -> str:
    """The image a job runs under Apptainer: a URI (``docker://``, ``oras://``, ...) as given, otherwise a
    ``.sif`` file, made absolute so the job finds it whatever its working directory. Under podman
    (``launch.container_runtime``): the image reference as given."""
    ref = request.image or request.folder.config.image.ref
    if request.folder.config.launch.container_runtime == "podman":
        return ref
    return ref if "://" in ref else os.path.abspath(ref)


def image_problems(request: Request) -> list[str]:
    """A job under ``--container`` whose image file is not there would fail on its node after queueing, and
    every later segment of the chain with it: refuse at submission instead."""
    if not request.container:
        return []
    ref = cluster_image(request)
    if request.folder.config.launch.container_runtime == "podman":
        return podman_image_problems(request, ref)
    if "://" in ref or os.path.isfile(ref):
        return []
    given = "--image" if request.image else "image.ref in experiment.toml"
    return [f"{given}: {ref} is not a file here, and a job under --container runs it with `apptainer exec`; "
            "build the .sif (docs/cluster.md) and pass its path on the shared filesystem with --image, "
            "or give a URI such as docker://REGISTRY/midtrain-kit:gpu"]


def podman_image_problems(request: Request, ref: str) -> list[str]:
    """Under podman the lock records the image's digest: pinned (``image.digest``) or found in this machine's
    podman store (the nodes run the same store, or pull the same reference)."""
    from experiment.launch.container import local_digest

    if request.folder.config.image.digest or local_digest(ref):
        return []
    given = "--image" if request.image else "image.ref in experiment.toml"
    where = f"not in podman's store here (`podman image inspect {ref}`)" if shutil.which("podman") else \
        "not looked up: podman is not on this machine"
    return [f"{given}: {ref} is {where}, and a job under --container with launch.container_runtime = \"podman\" "
            "records the image's digest in the lock; build it (`nox -s build_image -- --flavor cpu`) or pull it into "
            "the store the nodes' podman reads, or pin image.digest in experiment.toml"]


def walltime_problems(folder) -> list[str]:
    """A walltime that cannot fit the start, one step and one save before the exit margin, with the numbers
    (measured on this folder's last run where there is one)."""
    from experiment.train.walltime import parse_duration

    lc = folder.config.launch
    wall = parse_duration(lc.walltime)
    startup, step, save = _measured(folder)
    need = (startup or STARTUP_GUESS_S) + (step or 0.0) + save + lc.exit_margin_seconds
    if wall < need:
        return [f"launch.walltime {lc.walltime} ({wall} s) is too short for one step plus one save: start-up "
                f"{startup or STARTUP_GUESS_S:.0f} s{'' if startup else ' (not measured yet)'} + step {step or 0:.1f} s{'' if step else ' (not measured yet)'} + save "
                f"{save:.1f} s{'' if save else ' (not measured yet)'} + launch.exit_margin_seconds "
                f"{lc.exit_margin_seconds} s = {need:.0f} s; fix: raise launch.walltime or lower "
                "launch.exit_margin_seconds in experiment.toml"]
    return []


def _measured(folder) -> tuple[float | None, float | None, float]:
    """(start-up, step, save) seconds measured on this folder's last run: the longest start to first step
    of a segment in logs/chain.jsonl, one step from logs/run_status.json's tokens/s, the slowest recent save
    (0 when none); None where not measured yet."""
    from experiment.train.walltime import last_save_seconds

    logs = folder.path / "logs"
    save = last_save_seconds(logs) or 0.0
    step = None
    try:
        tps = runlog.read_status(logs, strict=False).get("tokens_per_s")
        t = folder.config.training
        step = t.global_batch_size * folder.config.model.seq_length / tps if tps else None
    except (ValueError, TypeError):
        pass
    events = runlog.read_chain(logs)
    begins = {e["job_id"]: e["time"] for e in events if e.get("event") == "begin"}
    measured = [e["time"] - begins[e["job_id"]] for e in events if e.get("event") == "first_step" and e["job_id"] in begins]
    return (max(measured) if measured else None), step, save


def signal_problems(folder) -> list[str]:
    """Slurm's ``--signal=TERM@signal_seconds`` fires ``walltime - signal_seconds`` after the job starts: that
    must leave the start-up and one step, or every segment is told to stop before its first step. (PBS's
    script sends no such signal: only the Slurm launcher asks this.)"""
    import math

    from experiment.train.walltime import parse_duration

    lc = folder.config.launch
    wall = parse_duration(lc.walltime)
    startup, step, _ = _measured(folder)
    need = (startup or STARTUP_GUESS_S) + (step or 0.0)
    lead = wall - lc.signal_seconds
    if lead >= need:
        return []
    when = "at the job's start" if lead <= 0 else f"{lead} s after the job starts"
    most = wall - math.ceil(need)
    fix = (f"lower launch.signal_seconds to {most} or less, or raise launch.walltime" if most >= 0 else
           "raise launch.walltime")
    return [f"experiment.toml: launch.signal_seconds {lc.signal_seconds} sends SIGTERM {when} "
            f"(launch.walltime {lc.walltime} = {wall} s), before start-up {startup or STARTUP_GUESS_S:.0f} s"
            f"{'' if startup else ' (not measured yet)'} + one step {step or 0:.1f} s"
            f"{'' if step else ' (not measured yet)'} = {need:.0f} s: the segment would stop before its first "
            f"step; fix: {fix} to at least {lc.signal_seconds + math.ceil(need)} s"
            f" ({_clock(lc.signal_seconds + math.ceil(need))})"]


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def queue_states(env: dict | None = None) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} of every job squeue knows (the local Slurm keeps ended ones for MinJobAge)."""
    if shutil.which("squeue") is None:
        return {}
    res = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%r"], capture_output=True, text=True, env=env)
    out = {}
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    return out


ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "REQUEUE_HOLD")


def active_jobs(folder: Path) -> list[tuple[str, str]]:
    jobs = [e["job_id"] for e in runlog.read_chain(Path(folder) / runlog.LOGS) if e.get("event") == "submitted"]
    states = queue_states() if jobs else {}
    return [(j, states[j][0]) for j in jobs if j in states and states[j][0] in ACTIVE]


_SBATCH_FIXES = (
    (re.compile(r"invalid partition", re.I), "set launch.partition in experiment.toml to one `sinfo -s` lists"),
    (re.compile(r"invalid account|account.*(not|invalid)", re.I),
     "set launch.account in experiment.toml to an account you may charge (`sacctmgr show assoc user=$USER`)"),
    (re.compile(r"time limit|walltime", re.I), "lower launch.walltime to the partition's MaxTime (`sinfo -s`)"),
    (re.compile(r"gres|gpu", re.I), "set launch.gpus_per_node to what the partition's nodes have (`sinfo -o %G`)"),
    (re.compile(r"cpu|more processors", re.I), "lower launch.cpus_per_task to what one node has (`sinfo -o %c`)"),
)


def sbatch(script: Path, dependency: str | None = None) -> str:
    """``sbatch --parsable``: the job id, or LaunchError with the scheduler's message and the fix."""
    argv = ["sbatch", "--parsable", *([f"--dependency=afterany:{dependency}"] if dependency else []),
            os.fspath(script)]
    res = subprocess.run(argv, capture_output=True, text=True, cwd=script.parent.parent)
    if res.returncode:
        message = (res.stderr or res.stdout).strip()
        fix = next((f for rx, f in _SBATCH_FIXES if rx.search(message)), "check the #SBATCH lines of "
                   f"{script} against your cluster's limits (`sinfo -s`)")
        raise LaunchError(f"sbatch refused {script}: {message}; fix: {fix}")
    return res.stdout.strip().split(";")[0]
