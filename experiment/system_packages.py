"""The Debian packages the kit needs outside Python, in one declared list.

`.ci/run`, the container recipes, the README's set-up line and the demo's prerequisite check are derived
from (or tested against) this list, so a package installed by hand on one machine cannot hide a gap that
a fresh machine would hit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SystemPackage:
    name: str
    """The Debian package name (`apt-get install NAME`)."""
    group: str
    """What it belongs to: `corpus` (the demo's real text), `container` (image build and run),
    `slurm` (a real single-node Slurm for tests), `browser` (headless checks of HTML reports)."""
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
    SystemPackage("slurm-wlm", "slurm", "a real single-node Slurm for the cluster tests (`nox -s slurm`)"),
    SystemPackage("munge", "slurm", "Slurm's authentication daemon"),
    SystemPackage("chromium", "browser", "headless check that report.html renders"),
)


def names(*groups: str) -> list[str]:
    """Package names of the given groups (all groups when none is given), in declared order."""
    return [p.name for p in PACKAGES if not groups or p.group in groups]
