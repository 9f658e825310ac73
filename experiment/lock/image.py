"""Build the kit's image and record it: ``python -m experiment.lock.image [--flavor cpu|gpu]``
(what ``nox -s build_image`` runs), and ``record`` (run inside the image at build time).

cpu: the base is made here (``env/make_base.sh``: mmdebstrap, fixed SOURCE_DATE_EPOCH) and imported
with ``buildah commit --timestamp 0``; the locked wheels are downloaded on the host into
``build/wheelhouse`` (no index inside the build); ``buildah bud --timestamp 0 --layers=false``
builds the Dockerfile. gpu: the Dockerfile's pinned NVIDIA base (needs registry access), or
``apptainer build`` of the Apptainerfile into a SIF. The image id, manifest digest, storage driver
(part of the digest), base tarball hash and SIF sha256 go into ``env/image.lock``.

With no engine it says so, prints the commands to run, and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from experiment.atomic import write_atomic
from experiment.engine import SOURCE_DATE_EPOCH as EPOCH
from experiment.engine import engine_env as _engine_env
from experiment.errors import KitError
from experiment.lock.environment import IMAGE_INFO_PATH, environment_hash, git_state, source_hash
from experiment.lock.hashing import hash_file

REPO = Path(__file__).resolve().parents[2]
IMAGE_LOCK = REPO / "env" / "image.lock"
WHEELHOUSE = REPO / "build" / "wheelhouse"
BASE_TAR = REPO / "build" / "base-bookworm.tar"
BASE_REF = "localhost/midtrain-kit-base:bookworm"
IMAGE_REF = "localhost/midtrain-kit:{flavor}"


class BuildError(KitError):
    pass


def record(flavor: str, kit_commit: str, kit_dirty_diff_hash: str, path: Path = IMAGE_INFO_PATH) -> dict:
    """Inside the image at build time: write what this environment is, for ``inside_pinned_image``."""
    info = {"flavor": flavor, "env_hash": environment_hash(), "kit_commit": kit_commit,
            "kit_dirty": kit_dirty_diff_hash not in ("", "none"),
            "kit_dirty_diff_hash": None if kit_dirty_diff_hash in ("", "none") else kit_dirty_diff_hash,
            "kit_source_hash": source_hash(), "ref": IMAGE_REF.format(flavor=flavor)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, sort_keys=True, indent=1) + "\n")
    return info


def _run(cmd: list[str], env: dict | None = None, capture: bool = False) -> str:
    import time

    print(f"+ [{time.strftime('%H:%M:%S')}] " + shlex.join(cmd), flush=True)
    res = subprocess.run(cmd, env=env, cwd=REPO, text=True, capture_output=capture)
    if res.returncode != 0:
        raise BuildError(f"{cmd[0]} failed (exit {res.returncode}): {shlex.join(cmd)}\n{res.stderr or ''}")
    return res.stdout if capture else ""


def engine_env(root: str | None = None) -> dict:
    """The build's engine environment: the kit's one (``experiment.engine``) with SOURCE_DATE_EPOCH fixed."""
    return _engine_env(reproducible_build=True)


def _store_args(root: str | None) -> list[str]:
    return ["--root", f"{root}/storage", "--runroot", f"{root}/run"] if root else []


def wheelhouse(flavor: str) -> None:
    """build/wheelhouse: the kit's wheel (built reproducibly) and, for cpu, every locked wheel."""
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    for old in WHEELHOUSE.glob("midtrain_kit-*.whl"):
        old.unlink()
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(WHEELHOUSE),
          str(REPO)], env=env)
    shutil.rmtree(REPO / "build" / "lib", ignore_errors=True)
    if flavor == "cpu":
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes", "-r",
              str(REPO / "env" / "cpu.lock.txt"), "-d", str(WHEELHOUSE)], env=env)


def base_image(engine: str, root: str | None, rebuild: bool) -> dict:
    """Debian bookworm + Python 3.11 by mmdebstrap, imported as a deterministic local image."""
    if rebuild or not BASE_TAR.is_file():
        BASE_TAR.parent.mkdir(parents=True, exist_ok=True)
        tmp = BASE_TAR.with_suffix(".tar.tmp")
        _run([str(REPO / "env" / "make_base.sh"), str(tmp), EPOCH])
        os.replace(tmp, BASE_TAR)
    env = engine_env()
    ctr = _run(["buildah", *_store_args(root), "from", "scratch"], env=env, capture=True).strip()
    try:
        _run(["buildah", *_store_args(root), "add", ctr, str(BASE_TAR), "/"], env=env, capture=True)
        _run(["buildah", *_store_args(root), "config", "--cmd", "/bin/bash", ctr], env=env)
        _run(["buildah", *_store_args(root), "commit", "--quiet", "--timestamp", EPOCH, "--rm", ctr, BASE_REF],
             env=env, capture=True)
    except BuildError:
        _run(["buildah", *_store_args(root), "rm", ctr], env=env, capture=True)
        raise
    return {"ref": BASE_REF, "tar_sha256": hash_file(BASE_TAR, "sha256"), **_inspect("buildah", BASE_REF, root)}


def _inspect(engine: str, ref: str, root: str | None) -> dict:
    fmt = "{{.FromImageID}} {{.FromImageDigest}}" if engine == "buildah" else "{{.Id}} {{.Digest}}"
    args = ["buildah", *_store_args(root), "inspect", "--type", "image", "--format", fmt, ref] if engine == "buildah" \
        else [engine, *_store_args(root), "image", "inspect", "--format", fmt, ref]
    ident, _, digest = _run(args, env=engine_env(), capture=True).strip().partition(" ")
    return {"image_id": ident if ident.startswith("sha256:") else f"sha256:{ident}", "digest": digest}


def storage_driver(engine: str, root: str | None) -> str:
    if engine == "docker":
        return _run(["docker", "info", "--format", "{{.Driver}}"], capture=True).strip()
    out = _run(["buildah", *_store_args(root), "info", "--format", "{{.store.GraphDriverName}}"],
               env=engine_env(), capture=True)
    return out.strip()


def build_commands(flavor: str, engine: str, tag: str, root: str | None, state: dict | None = None) -> list[list[str]]:
    state = state or git_state(REPO)
    args = ["--build-arg", f"SOURCE_DATE_EPOCH={EPOCH}", "--build-arg", f"FLAVOR={flavor}",
            "--build-arg", f"KIT_COMMIT={state['commit'] or 'unknown'}",
            "--build-arg", f"KIT_DIRTY_DIFF_HASH={state['dirty_diff_hash'] or 'none'}"]
    if flavor == "cpu":
        args += ["--build-arg", f"BASE={BASE_REF}"]
    if engine == "apptainer":
        return [["apptainer", "build", "--force", f"build/midtrain-kit-{flavor}.sif", "Apptainerfile"]]
    if engine == "docker":
        return [["docker", "build", *args, "-t", tag, "-f", "Dockerfile", "."]]
    cert = ["-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro"] \
        if flavor == "gpu" else []
    return [["buildah", *_store_args(root), "bud", "--quiet", "--isolation", "chroot", "--network", "host",
             "--timestamp", EPOCH, "--layers=false", *cert, *args, "-t", tag, "-f", "Dockerfile", "."]]


def pick_engine(flavor: str, wanted: str | None) -> str | None:
    order = [wanted] if wanted else (["buildah", "docker"] + (["apptainer"] if flavor == "gpu" else []))
    return next((e for e in order if shutil.which(e)), None)


def write_image_lock(flavor: str, entry: dict, path: Path = IMAGE_LOCK) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[flavor] = entry
    write_atomic(path, json.dumps(data, sort_keys=True, indent=1) + "\n")


def build(flavor: str, engine: str | None = None, root: str | None = None, rebuild_base: bool = False,
          lock_path: Path | None = IMAGE_LOCK, tag: str | None = None, inputs: dict | None = None) -> dict:
    """Build and record one image. ``inputs`` (the ``kit_state`` of an earlier build's entry) reuses that
    build's wheelhouse and kit identity, so a second build has exactly the same inputs."""
    tag = tag or IMAGE_REF.format(flavor=flavor)
    found = pick_engine(flavor, engine)
    if found is None:
        cmds = build_commands(flavor, engine or "buildah", tag, root)
        raise BuildError(
            f"no container engine found ({engine or 'buildah/podman, docker' + (', apptainer' if flavor == 'gpu' else '')}"
            "); install one (Debian: apt-get install podman buildah runc mmdebstrap) and run:\n"
            + ("  env/make_base.sh build/base-bookworm.tar 0  # then buildah from scratch/add/commit --timestamp 0\n"
               if flavor == "cpu" else "")
            + "".join("  " + shlex.join(c) + "\n" for c in cmds))
    if inputs is None:
        wheelhouse(flavor)
        inputs = git_state(REPO)
    entry: dict = {"ref": tag, "engine": found, "source_date_epoch": int(EPOCH), "kit_commit": inputs["commit"],
                   "kit_state": inputs}
    if flavor == "cpu":
        if found == "apptainer":
            raise BuildError("the cpu image is built with buildah/podman or docker, not apptainer")
        entry["base"] = base_image(found, root, rebuild_base)
    for cmd in build_commands(flavor, found, tag, root, inputs):
        _run(cmd, env=engine_env())
    if found == "apptainer":
        sif = REPO / "build" / f"midtrain-kit-{flavor}.sif"
        entry["sif_sha256"] = hash_file(sif, "sha256")
    else:
        entry.update(_inspect("buildah" if found == "buildah" else found, tag, root))
        entry["storage_driver"] = storage_driver(found, root)
    if lock_path is not None:
        write_image_lock(flavor, entry, lock_path)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nox -s build_image --", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    rec = sub.add_parser("record", help="(inside the image) write /etc/midtrain-kit/image.json")
    rec.add_argument("--flavor", required=True)
    rec.add_argument("--kit-commit", default="unknown")
    rec.add_argument("--kit-dirty-diff-hash", default="none")
    parser.add_argument("--flavor", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--engine", choices=("buildah", "podman", "docker", "apptainer"))
    parser.add_argument("--root", help="a separate container storage folder (fresh-store builds)")
    parser.add_argument("--rebuild-base", action="store_true", help="run mmdebstrap again")
    parser.add_argument("--tag")
    args = parser.parse_args(argv)
    if args.cmd == "record":
        print(json.dumps(record(args.flavor, args.kit_commit, args.kit_dirty_diff_hash), sort_keys=True))
        return 0
    engine = "buildah" if args.engine == "podman" else args.engine
    try:
        entry = build(args.flavor, engine, args.root, args.rebuild_base, tag=args.tag)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"image {entry['ref']} (recorded in env/image.lock)")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for k, v in sorted(entry.items()):
        table.add_row(k, json.dumps(v) if isinstance(v, dict) else str(v))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
