"""Who ran a run: the kit's code identity, the Python environment, the image (if any).

Recorded in ``run.lock.json`` and re-computed by ``reproduce``. Nothing here names the user, the host
or a path outside the training folder. The image's own record (``/etc/midtrain-kit/image.json``,
written at build time) holds the environment hash of the locked install, so a process can tell
whether it runs inside the pinned image: its own environment hash must equal the recorded one.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import experiment
from experiment.lock.hashing import hash_bytes

IMAGE_INFO_PATH = Path("/etc/midtrain-kit/image.json")
# mounted read-only by experiment.launch.container: the ref and digest the image was started as
RUN_IMAGE_PATH = Path("/run/midtrain-kit/image-ref.json")
KIT_DISTRIBUTION = "midtrain-kit"
_SOURCE_SUFFIXES = (".py", ".j2", ".sh", ".json", ".toml")


@dataclass(frozen=True)
class ImageInfo:
    """The image a run used: reference, content digest and the environment hash recorded at build."""

    ref: str
    digest: str | None = None
    flavor: str | None = None
    env_hash: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def package_root() -> Path:
    return Path(experiment.__file__).resolve().parent


def source_hash(root: Path | None = None) -> str:
    """Hash of the kit's own source files (names + bytes), equal in a checkout and in the image."""
    root = root or package_root()
    parts = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in _SOURCE_SUFFIXES and "__pycache__" not in p.parts:
            rel = p.relative_to(root).as_posix()
            parts.append(f"{rel}\0{hash_bytes(p.read_bytes())}\n")
    return hash_bytes("".join(parts).encode())


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace")


def git_state(repo: Path | None = None) -> dict:
    """Commit of the checkout the kit runs from, and a hash of its uncommitted changes to the kit.

    The diff covers what changes a run (``experiment/``, ``pyproject.toml``, ``env/``), including
    untracked source files, not unrelated files of the repository."""
    repo = repo or package_root().parent
    if not (repo / ".git").exists():
        return {"commit": None, "dirty": None, "dirty_diff_hash": None}
    commit = (_git(["rev-parse", "HEAD"], repo) or "").strip() or None
    paths = ["experiment", "pyproject.toml", "env"]
    diff = _git(["diff", "--binary", "HEAD", "--", *paths], repo) or ""
    untracked = (_git(["ls-files", "--others", "--exclude-standard", "--", *paths], repo) or "").split()
    blob = diff.encode()
    for rel in sorted(untracked):
        f = repo / rel
        if f.is_file():
            blob += f"\0untracked {rel}\0".encode() + f.read_bytes()
    dirty = bool(blob)
    return {"commit": commit, "dirty": dirty, "dirty_diff_hash": hash_bytes(blob) if dirty else None}


def kit_section() -> dict:
    """Version, source hash, and git state (or, inside the image, the commit recorded at build)."""
    state = git_state()
    if state["commit"] is None:
        baked = read_image_info()
        if baked:
            state = {"commit": baked.get("kit_commit"), "dirty": baked.get("kit_dirty"),
                     "dirty_diff_hash": baked.get("kit_dirty_diff_hash")}
    return {"version": experiment.__version__, "source_hash": source_hash(), **state}


def distributions() -> dict[str, str]:
    """Every installed distribution except the kit itself (its identity is the source hash)."""
    found: dict[str, str] = {}
    for dist in md.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name and name != KIT_DISTRIBUTION:
            found[name] = dist.version
    return dict(sorted(found.items()))


def environment_hash(dists: dict[str, str] | None = None) -> str:
    dists = distributions() if dists is None else dists
    return hash_bytes("".join(f"{k}=={v}\n" for k, v in sorted(dists.items())).encode())


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def runtime_versions() -> dict:
    """Python, torch, CUDA, cuDNN, NCCL, Transformer Engine, megatron-core versions, and the GPU model."""
    import torch

    cuda = torch.version.cuda
    gpu = nccl = cudnn = None
    if torch.cuda.is_available():
        gpu = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        nccl = ".".join(str(x) for x in torch.cuda.nccl.version())
        cudnn = torch.backends.cudnn.version()
    te = _version("transformer-engine") or _version("transformer_engine")
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "cuda": cuda,
        "cudnn": str(cudnn) if cudnn else None,
        "nccl": nccl,
        "transformer_engine": te,
        "megatron_core": _version("megatron-core"),
        "gpu": gpu,
    }


def read_image_info(path: Path = IMAGE_INFO_PATH) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def inside_pinned_image(path: Path = IMAGE_INFO_PATH) -> bool:
    """True when the image's build record exists and this environment is exactly the one it recorded."""
    info = read_image_info(path)
    return bool(info) and info.get("env_hash") == environment_hash()


def environment_section(image: ImageInfo | None) -> dict:
    dists = distributions()
    return {
        "containerized": image is not None,
        "image": image.to_dict() if image else None,
        **runtime_versions(),
        "distributions": dists,
        "distributions_hash": environment_hash(dists),
    }


IMAGE_REF_VAR = "MIDTRAIN_IMAGE_REF"
IMAGE_DIGEST_VAR = "MIDTRAIN_IMAGE_DIGEST"


def detect_image(info_path: Path = IMAGE_INFO_PATH, run_path: Path = RUN_IMAGE_PATH) -> ImageInfo | None:
    """The pinned image this process runs in, or None (a host, or an image whose environment was changed).

    Believed only when this environment's hash equals the one the image recorded at build; the ref and
    digest come from the file the launcher mounts (the image cannot know its own digest)."""
    info = read_image_info(info_path)
    if not info or info.get("env_hash") != environment_hash():
        return None
    started = read_image_info(run_path) or {}
    return ImageInfo(ref=started.get("ref") or info.get("ref", "unknown"), digest=started.get("digest"),
                     flavor=info.get("flavor"), env_hash=info.get("env_hash"))


def image_from_environ(environ: Mapping[str, str], info_path: Path = IMAGE_INFO_PATH) -> ImageInfo | None:
    """For the CLI (it owns the environment): the image this process runs in, or None on a host.

    ``experiment.launch.container`` passes the image's ref and digest as MIDTRAIN_IMAGE_REF/_DIGEST;
    the claim is believed only if the environment is the one the image recorded at build."""
    info = read_image_info(info_path)
    if not info or info.get("env_hash") != environment_hash():
        return None
    return ImageInfo(ref=environ.get(IMAGE_REF_VAR, info.get("ref", "unknown")),
                     digest=environ.get(IMAGE_DIGEST_VAR) or None,
                     flavor=info.get("flavor"), env_hash=info.get("env_hash"))
