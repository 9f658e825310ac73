"""The Debian packages the kit needs outside Python, in one declared list.

`.ci/run`, the container recipes, the README's set-up line and the demo's prerequisite check are derived
from (or tested against) this list, so a package installed by hand on one machine cannot hide a gap that
a fresh machine would hit.
"""

from __future__ import annotations

from dataclasses import dataclass

from experiment.errors import KitError


@dataclass(frozen=True)
class SystemPackage:
    name: str
    """The Debian package name (`apt-get install NAME`)."""
    group: str
    """What it belongs to: `corpus` (the demo's real text), `container` (image build and run),
    `slurm` (a real Slurm of several virtual nodes for tests), `browser` (headless checks of HTML reports)."""
    needed_by: str
    """Which part of the kit needs it, in words."""


PACKAGES: tuple[SystemPackage, ...] = (
    SystemPackage("python3.11-doc", "corpus", "demo corpus: English code docs (HTML and reST)"),
    SystemPackage("debian-reference-en", "corpus", "demo corpus: English manual"),
    SystemPackage("debian-reference-ja", "corpus", "demo corpus: Japanese manual"),
    SystemPackage("manpages-ja", "corpus", "demo corpus: Japanese man pages"),
    SystemPackage("dict-gcide", "corpus", "demo corpus: English dictionary (GCIDE)"),
    SystemPackage("podman", "container", "running the kit's image (`--container`, tests/container)"),
    SystemPackage("buildah", "container", "building the kit's image (`nox -s build_image`)"),
    SystemPackage("runc", "container", "the OCI runtime podman uses here (crun fails on hybrid cgroups)"),
    SystemPackage("catatonit", "container", "podman's `--init` (Python as PID 1 ignores SIGTERM)"),
    SystemPackage("mmdebstrap", "container", "the local Debian base image (no registry is reachable)"),
    SystemPackage("slurm-wlm", "slurm", "a real Slurm of several virtual nodes for the cluster tests (`nox -s cluster`)"),
    SystemPackage("munge", "slurm", "Slurm's authentication daemon"),
    SystemPackage("iproute2", "slurm", "the virtual nodes' network namespaces, veth pairs and bridge (`ip`)"),
    SystemPackage("util-linux", "slurm", "entering a virtual node: `nsenter`, `unshare`, `mount --bind`"),
    SystemPackage("chromium", "browser", "headless check that report.html renders"),
)


def names(*groups: str) -> list[str]:
    """Package names of the given groups (all groups when none is given), in declared order."""
    return [p.name for p in PACKAGES if not groups or p.group in groups]


def groups() -> tuple[str, ...]:
    """Every group, in declared order."""
    return tuple(dict.fromkeys(p.group for p in PACKAGES))


def demo_groups(container: bool) -> tuple[str, ...]:
    """The groups the demo needs: its corpus, and the container engine for ``--container``."""
    return ("corpus", "container") if container else ("corpus",)


def install_command(packages: list[str]) -> str:
    """The exact command that installs ``packages`` (what a user without root is told to run)."""
    return "sudo apt-get update && sudo apt-get install -y --no-install-recommends " + " ".join(packages)


def missing(packages: list[str]) -> list[str]:
    """The packages of ``packages`` that dpkg does not list as installed (all of them without dpkg)."""
    import shutil
    import subprocess

    if shutil.which("dpkg-query") is None:
        return list(packages)
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
                         capture_output=True, text=True).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def ensure(groups: tuple[str, ...], say=print) -> list[str]:
    """Install the missing packages of ``groups`` when root with apt-get (saying so in one line); otherwise
    raise ``SystemPackagesMissing`` carrying the exact command. Returns what was installed."""
    import os
    import shutil
    import subprocess

    absent = missing(names(*groups))
    if not absent:
        return []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemPackagesMissing(absent)
    say(f"installing missing Debian packages ({', '.join(groups)}): apt-get install {' '.join(absent)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL, "env": env}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *absent]
    if subprocess.run(install, stderr=subprocess.DEVNULL, **quiet).returncode != 0:  # stale or empty lists
        subprocess.run(["apt-get", "update", "-q"], check=True, **quiet)
        subprocess.run(install, check=True, **quiet)
    still = missing(absent)
    if still:
        raise SystemPackagesMissing(still)
    return absent


class SystemPackagesMissing(KitError):
    """Declared Debian packages are not installed and cannot be installed here (not root, or no apt)."""

    def __init__(self, packages: list[str]) -> None:
        self.packages = packages
        self.fix = install_command(packages)
        super().__init__(f"missing Debian packages: {' '.join(packages)}\n  fix: {self.fix}")


def main(argv: list[str] | None = None) -> int:
    """``python3 -m experiment.system_packages [GROUP ...]``: the names, one line (for `.ci/run` and recipes);
    ``--table``: each package with its group and what needs it."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if "--table" in args:
        for p in PACKAGES:
            if len(args) == 1 or p.group in args:
                print(f"{p.name:22} {p.group:10} {p.needed_by}")
        return 0
    unknown = set(args) - {p.group for p in PACKAGES}
    if unknown:
        print(f"unknown group(s): {' '.join(sorted(unknown))}; groups: "
              f"{' '.join(dict.fromkeys(p.group for p in PACKAGES))}", file=sys.stderr)
        return 2
    print(" ".join(names(*args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
