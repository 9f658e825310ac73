"""Behaviour unchanged across commits: the demo's data, mixture and training outputs of two commits, byte for byte.

    python bench/same_bytes.py OLD_REV [NEW_REV]   (NEW_REV default: HEAD; run from the repository)

Each commit is checked out as a git worktree under --work and runs the demo's stages up to and including the
training (corpus, base model, tokenize, signature, check, mix, `experiment run`) with its own code and this
interpreter. Then every file of `training/demo/mixture/` (the worktree's absolute path replaced by ROOT),
`logs/losses.jsonl` and every file of every checkpoint are compared by hash. Exit 0 when all are identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGE_RUNNER = """
import os, shutil, subprocess, sys, time
from pathlib import Path
root = Path.cwd()
sys.path.insert(0, str(root))
import experiment.demo as demo
env = {**os.environ, "PYTHONPATH": str(root)}
for st in demo.stages(root, 3.0, False):
    if st.is_done():
        continue
    for p in st.clear:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    t = time.time()
    r = subprocess.run([sys.executable, "-m", st.module, *st.argv], env=env, capture_output=True, text=True)
    print(f"  {st.name[:58]:58s} rc {r.returncode} {time.time() - t:6.1f} s", flush=True)
    if r.returncode:
        sys.exit(r.stdout[-3000:] + r.stderr[-3000:])
    if st.argv[0] == "run":
        break
"""


def _digests(root: Path) -> dict[str, str]:
    folder = root / "training" / "demo"
    files = sorted(p for p in (folder / "mixture").iterdir() if p.is_file())
    files += [folder / "logs" / "losses.jsonl"]
    files += sorted(p for p in (folder / "checkpoints").rglob("*") if p.is_file() and "iter_" in str(p))
    out = {}
    for p in files:
        data = p.read_bytes()
        for form in {str(root.resolve()), str(root)}:  # the worktree's path as written by the outputs
            data = data.replace(form.encode(), b"ROOT")
        out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new", nargs="?", default="HEAD")
    ap.add_argument("--work", type=Path, default=Path("/tmp/midtrain-same-bytes"))
    args = ap.parse_args()
    results = {}
    for rev in (args.old, args.new):
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True,
                                text=True, check=True).stdout.strip()
        tree = args.work / commit
        if not tree.is_dir():
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(tree), commit], check=True)
        print(f"{rev} ({commit}) in {tree}", flush=True)
        start = time.time()
        subprocess.run([sys.executable, "-c", STAGE_RUNNER], cwd=tree, check=True,
                       env={**os.environ, "PYTHONPATH": str(tree)})
        results[rev] = _digests(tree)
        print(f"  {len(results[rev])} files hashed, {time.time() - start:.0f} s")
    old, new = results[args.old], results[args.new]
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    groups = {"mixture": "/mixture/", "losses": "losses.jsonl", "checkpoints": "/checkpoints/"}
    for name, key in groups.items():
        names = [k for k in old.keys() | new.keys() if key in k]
        bad = [k for k in names if k in differ]
        print(f"{name:12s} {len(names):3d} files: " + ("identical" if not bad else f"{len(bad)} differ: {bad[:4]}"))
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
