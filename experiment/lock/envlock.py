"""The kit's Python environment, resolved once with hashes (uv) into ``env/cpu.lock.txt`` and
``env/gpu.lock.txt``, and the check that ``pyproject.toml`` and the locks agree.

cpu: every dependency, torch 2.13.0 as the CPU wheel (``env/cpu-overrides.txt``; on this machine
kind served from ``/opt/wheels``), for CPU hosts and the CPU image. gpu: the same requirements
resolved for the NVIDIA PyTorch base image's Python (3.12), without the packages that image already
provides (torch, triton, CUDA/cuDNN/NCCL wheels; Transformer Engine ships in the base too), installed
with ``--no-deps`` on top of it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# provided by the NVIDIA PyTorch base image: never installed from the GPU lock
GPU_PROVIDED = re.compile(r"^(torch|triton|transformer-engine.*|nvidia-.*|cuda-.*)$")
FLAVORS = {
    "cpu": {"python": "3.11", "lock": "env/cpu.lock.txt", "overrides": "env/cpu-overrides.txt"},
    "gpu": {"python": "3.12", "lock": "env/gpu.lock.txt", "overrides": None},
}


def compile_command(flavor: str, output: str, find_links: str | None = "/opt/wheels") -> list[str]:
    """The ``uv pip compile`` argv that (re)writes one lock."""
    spec = FLAVORS[flavor]
    cmd = ["uv", "pip", "compile", "pyproject.toml", "--generate-hashes", "--python-version", spec["python"],
           "--python-platform", "x86_64-manylinux_2_28", "--custom-compile-command", "nox -s lock", "-q",
           "-o", output]
    if spec["overrides"]:
        cmd += ["--overrides", spec["overrides"]]
        if find_links:
            cmd += ["--find-links", find_links]
    return cmd


def _blocks(text: str) -> list[tuple[str | None, str]]:
    """Split a uv/pip-compile lock into (package name or None for the header, its text)."""
    out: list[tuple[str | None, str]] = []
    name, lines = None, []
    for line in text.splitlines(keepends=True):
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if m:
            out.append((name, "".join(lines)))
            name, lines = canonicalize_name(m.group(1)), []
        lines.append(line)
    out.append((name, "".join(lines)))
    return out


def drop_provided(text: str, provided: re.Pattern = GPU_PROVIDED) -> str:
    """The lock without the packages the base image provides (with a note naming them)."""
    kept, dropped = [], []
    for name, block in _blocks(text):
        if name is not None and provided.match(name):
            dropped.append(name)
        else:
            kept.append(block)
    note = "# provided by the NVIDIA PyTorch base image, not installed from here: " + ", ".join(sorted(dropped))
    return kept[0] + note + "\n" + "".join(kept[1:])


def pins(text: str) -> dict[str, str]:
    """{canonical name: version} of a lock."""
    return {name: block.split("==", 1)[1].split()[0] for name, block in _blocks(text) if name is not None}


def hashed(text: str) -> bool:
    return all("--hash=sha256:" in block for name, block in _blocks(text) if name is not None)


def pyproject_requirements(pyproject: Path) -> list[Requirement]:
    data = tomllib.loads(pyproject.read_text())
    return [Requirement(r) for r in data["project"]["dependencies"]]


def disagreements(pyproject: Path, lock_text: str, flavor: str) -> list[str]:
    """Every way a lock fails pyproject.toml: a dependency missing, or pinned outside its range."""
    locked = pins(lock_text)
    out = []
    for req in pyproject_requirements(pyproject):
        name = canonicalize_name(req.name)
        if flavor == "gpu" and GPU_PROVIDED.match(name):
            continue
        if name not in locked:
            out.append(f"{req.name}: required by pyproject.toml ({req}), not in the {flavor} lock")
            continue
        version = Version(locked[name])
        # a local label (2.13.0+cpu) satisfies ==2.13.0
        if not req.specifier.contains(Version(version.public), prereleases=True) and \
                not req.specifier.contains(version, prereleases=True):
            out.append(f"{req.name}: pyproject.toml wants {req.specifier}, the {flavor} lock pins {version}")
    if not hashed(lock_text):
        out.append(f"the {flavor} lock has entries without --hash")
    return out
