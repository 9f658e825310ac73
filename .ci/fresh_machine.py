#!/usr/bin/env python3
"""The fresh-machine test: the README's set-up lines and `nox -s demo` in a pristine container.

Why: CI machines keep what earlier work installed (Debian packages, pip caches, venvs, work/), so a
green CI can hide what a new user's machine lacks. Here the container is the kit's own mmdebstrap base
(env/make_base.sh: Debian 12 with its python3, python3-venv and ca-certificates, nothing else), built
fresh into a private podman store; a clean clone of the commit is copied in; inside it run exactly the
lines between `<!-- setup:begin -->` and `<!-- setup:end -->` of README.md, then `nox -s demo`.

Passed in, read-only, only what any new machine of this kind has: its package sources (every path the
host's `pip config list` names: pip configuration files, local wheel folders and indexes, the CA bundle)
and the matching PIP_* settings. Nothing left by earlier work: no installed Debian packages (the demo
installs its own with apt-get from Debian's mirror), no pip cache, no venvs, no work/.

Passes only on "run demo: finished" and an identical reproduction (the re-run's outputs section equals
the lock's). Prints each phase's wall time. Usage: python3 .ci/fresh_machine.py [--keep] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- setup:begin -->", "<!-- setup:end -->"
IMAGE = "localhost/midtrain-kit-fresh-base:latest"
CLONE = "/root/midtrain-kit"  # where the clone lies inside (a user's checkout in their home)
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIP_CONFIG_FILES = (Path("/etc/pip.conf"), Path("/etc/xdg/pip"))
# lines that start each phase inside the container, for the wall-time table
MARKERS = (r"installing missing Debian packages", r"pip install --require-hashes", r"─ 1/\d+ ")  # regexes
PHASES = ("README set-up (venv + pip install nox)", "apt-get install (the demo's own check)",
          "pip install of the locks + the kit")


def setup_commands(readme: str) -> list[str]:
    """The shell lines of README.md's set-up block (comments and blank lines dropped)."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise SystemExit(f"README.md: expected one {BEGIN} ... {END} block")
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    fences = re.findall(r"```(?:bash|sh)?\n(.*?)```", block, re.S)
    if len(fences) != 1:
        raise SystemExit("README.md: the set-up block must hold exactly one ```bash code block")
    return [line for line in fences[0].splitlines() if line.strip() and not line.lstrip().startswith("#")]


def pip_sources() -> tuple[dict[str, str], list[Path]]:
    """The host's pip settings as PIP_* variables, and every local path they name (to mount read-only)."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         check=True).stdout
    env: dict[str, str] = {}
    paths: set[Path] = {p for p in PIP_CONFIG_FILES if p.exists()}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if not sep or "." not in key:
            continue
        value = value.strip().strip("'\"")
        env["PIP_" + key.split(".", 1)[1].upper().replace("-", "_")] = value
        for token in value.split():
            local = Path(token.removeprefix("file://"))
            if local.is_absolute() and local.exists():
                # an index folder (.../simple) links to its files next to it: mount the parent
                paths.add(local.parent if local.name == "simple" else local)
    if CA_BUNDLE.exists():
        paths.add(CA_BUNDLE)
        env.update(SSL_CERT_FILE=str(CA_BUNDLE), REQUESTS_CA_BUNDLE=str(CA_BUNDLE))
    return env, sorted(p for p in paths if not any(q in p.parents for q in paths))


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$ " + shlex.join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


class Podman:
    """podman on a private store under ``root`` (the repo's containers.conf: runc, cgroupfs)."""

    def __init__(self, root: Path) -> None:
        self.args = ["podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
                     "--storage-driver", "overlay"]
        self.env = {**os.environ, "CONTAINERS_CONF": str(REPO / "env" / "containers.conf")}

    def __call__(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run([*self.args, *args], env=self.env, **kw)


def reproduction_identical(clone: Path) -> tuple[bool, str]:
    lock = clone / "training" / "demo" / "run.lock.json"
    rerun = clone / "training" / "demo" / ".reproduce" / "training" / "demo" / "run.lock.json"
    if not (lock.is_file() and rerun.is_file()):
        return False, f"missing {lock if not lock.is_file() else rerun}"
    a, b = json.loads(lock.read_text())["outputs"], json.loads(rerun.read_text())["outputs"]
    n = len(a.get("checkpoints") or {})
    return a == b, f"the re-run's outputs section {'equals' if a == b else 'DIFFERS from'} the lock's " \
                   f"(losses and {n} checkpoint(s))"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new one under /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (clone, log, store)")
    parser.add_argument("--commit", default="HEAD", help="the commit to test (default: HEAD)")
    args = parser.parse_args(argv)
    for tool in ("podman", "mmdebstrap", "git"):
        if shutil.which(tool) is None:
            raise SystemExit(f"fresh-machine test: {tool} is not installed "
                             f"(python3 -m experiment.system_packages container; .ci/run installs them)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="midtrain-fresh-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    commands = setup_commands((REPO / "README.md").read_text())
    script = "\n".join(["set -euo pipefail", *commands, "nox -s demo"])
    print("fresh-machine test: README set-up block + demo, as run inside the container:\n  "
          + "\n  ".join(script.splitlines()[1:]), flush=True)
    podman = Podman(work)
    try:
        t = time.perf_counter()
        commit = run(["git", "-C", str(REPO), "rev-parse", args.commit], capture_output=True,
                     text=True).stdout.strip()
        clone = work / "clone"
        shutil.rmtree(clone, ignore_errors=True)
        run(["git", "clone", "--quiet", "--no-hardlinks", "--no-checkout", str(REPO), str(clone)])
        run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", commit])
        times["clean clone"] = time.perf_counter() - t

        t = time.perf_counter()
        base = work / "base.tar"
        run([str(REPO / "env" / "make_base.sh"), str(base), "0"])
        podman("import", "--quiet", str(base), IMAGE, capture_output=True)
        times["base image (mmdebstrap + import)"] = time.perf_counter() - t

        env, mounts = pip_sources()
        argv = ["run", "--rm", "--network", "host", "--init", "-w", CLONE, "-v", f"{clone}:{CLONE}:rw",
                "-e", "LANG=C.UTF-8", "-e", "HOME=/root"]
        for path in mounts:
            argv += ["-v", f"{path}:{path}:ro"]
        for key, value in sorted(env.items()):
            argv += ["-e", f"{key}={value}"]
        log = work / "fresh-machine.log"
        print(f"fresh-machine test: commit {commit[:12]}, mounts (read-only): "
              f"{' '.join(map(str, mounts))}; log: {log}", flush=True)
        t = time.perf_counter()
        seen: dict[str, float] = {}
        with open(log, "w") as fh:
            proc = subprocess.Popen([*podman.args, *argv, IMAGE, "bash", "-c", script], env=podman.env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                fh.write(line)
                sys.stdout.write(line)
                for marker in MARKERS:
                    if marker not in seen and re.search(marker, line):
                        seen[marker] = time.perf_counter() - t
            rc = proc.wait()
        times["set-up + nox -s demo (in the container)"] = time.perf_counter() - t
        marks = [0.0, *(seen.get(m) for m in MARKERS)]
        for (name, start), end in zip(zip(PHASES, marks), marks[1:]):
            if start is not None and end is not None:
                times[f"  {name}"] = end - start
        text = log.read_text()
        stages = re.search(r"│ total\s*│\s*│\s*([0-9.]+)", text)
        finished = "run demo: finished" in text
        same, why = reproduction_identical(clone)
        times["total"] = time.perf_counter() - t_all
        print("\nfresh-machine test: wall times")
        for name, seconds in times.items():
            print(f"  {name:45} {seconds:8.1f} s")
        if stages:
            print(f"  {'demo stages (its own table, set-up excluded)':45} {float(stages.group(1)):8.1f} s")
        ok = rc == 0 and finished and same
        print(f"fresh-machine test: {'PASS' if ok else 'FAIL'}: exit {rc}; 'run demo: finished' "
              f"{'seen' if finished else 'NOT seen'}; {why}")
        return 0 if ok else 1
    finally:
        if not args.keep:
            subprocess.run([*podman.args, "rmi", "-f", IMAGE], env=podman.env, capture_output=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
