"""The environment of a container engine (podman, buildah, docker) run by the kit.

One place for it, used by the image build (``experiment.lock.image``) and the container launcher
(``experiment.launch.container``): the repo's ``env/containers.conf`` and ``env/storage.conf`` (this
machine kind needs them) unless the caller's environment already names others, and for builds a fixed
``SOURCE_DATE_EPOCH`` so that image layers carry no wall-clock time.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = REPO_ROOT / "env" / "containers.conf"
STORAGE_CONF = REPO_ROOT / "env" / "storage.conf"
SOURCE_DATE_EPOCH = "0"


def engine_env(base: dict[str, str] | None = None, *, reproducible_build: bool = False) -> dict[str, str]:
    """``base`` (default: this process's environment) plus the engine settings the kit relies on."""
    env = dict(os.environ if base is None else base)
    if CONTAINERS_CONF.is_file():
        env.setdefault("CONTAINERS_CONF", os.fspath(CONTAINERS_CONF))
    if STORAGE_CONF.is_file():
        env.setdefault("CONTAINERS_STORAGE_CONF", os.fspath(STORAGE_CONF))
    if reproducible_build:
        env["SOURCE_DATE_EPOCH"] = SOURCE_DATE_EPOCH
    return env
