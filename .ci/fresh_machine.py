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

Passes only when the demo exits 0 and prints "run demo: finished", and every check of `demo_checks` holds
on the clone (a host folder mounted into the container, so the demo's outputs are there afterwards): the
lock lists the checkpoints, the re-run's outputs section equals the lock's, the Japanese target's eval loss
falls while no English domain rises by 0.1 or more, lm-eval's eval.json shows the target's perplexity falling
with a positive gain, report.html shows the lm-eval section, and the HF export and the plots exist. These were
tests/test_demo.py's end-to-end assertions (the suite no longer runs the demo a second time). Each check is
printed PASS or FAIL by name. Prints each phase's wall time.

Usage: python3 .ci/fresh_machine.py [--keep] [--workdir DIR]
       python3 .ci/fresh_machine.py --check-only DIR   (the checks alone, on a checkout where the demo ran)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- setup:begin -->", "<!-- setup:end -->"
IMAGE = "localhost/midtrain-kit-fresh-base:latest"
DEMO = Path("training") / "demo"  # the demo folder, relative to the clone
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


def demo_checks(clone: Path) -> list[tuple[str, bool, str]]:
    """Every check of a finished demo's outputs in ``clone`` as (name, held, detail), in order. A missing
    or malformed file fails the checks that read it (the detail names it) and never stops the others."""
    demo = clone / DEMO
    results: list[tuple[str, bool, str]] = []
    cache: dict[str, object] = {}

    def read(rel: str):
        """JSON (``.json``) or JSON lines (``.jsonl``) under the clone, read once."""
        if rel not in cache:
            text = (clone / rel).read_text()
            cache[rel] = [json.loads(line) for line in text.splitlines() if line.strip()] \
                if rel.endswith(".jsonl") else json.loads(text)
        return cache[rel]

    def check(name: str, fn) -> None:
        try:
            held, detail = fn()
        except Exception as err:  # a missing file or key: this check fails, naming it; the others still run
            held, detail = False, f"{type(err).__name__}: {err}"
        results.append((name, bool(held), detail))

    lock_rel, rerun_rel = f"{DEMO}/run.lock.json", f"{DEMO}/.reproduce/{DEMO}/run.lock.json"

    def checkpoints():
        names = sorted(read(lock_rel)["outputs"]["checkpoints"] or {})
        return bool(names), f"{lock_rel}: {', '.join(names) or 'none'}"

    def reproduced():
        a, b = read(lock_rel)["outputs"], read(rerun_rel)["outputs"]
        n = len(a.get("checkpoints") or {})
        return a == b, f"{rerun_rel} {'equals' if a == b else 'DIFFERS from'} {lock_rel} " \
                       f"(per-step losses and {n} checkpoint(s): files and tensor hashes)"

    def losses():
        evals = read(f"{DEMO}/logs/eval.jsonl")
        loss = {(e["domain"], e["iteration"]): float.fromhex(e["loss"]) for e in evals}
        return loss, max(e["iteration"] for e in evals)

    def target_improves():
        loss, last = losses()
        first, end = loss[("ja/manual", 0)], loss[("ja/manual", last)]
        return end < first, f"eval loss of ja/manual {first:.4f} at iteration 0 -> {end:.4f} at {last}"

    def replay_holds():
        loss, last = losses()
        english = sorted({d for d, _ in loss if d.startswith("en/")})
        rises = {d: loss[(d, last)] - loss[(d, 0)] for d in english}
        bad = [d for d, r in rises.items() if not r < 0.1]
        return english and not bad, ("no en/ domain in eval.jsonl" if not english else
                                     ", ".join(f"{d} {r:+.4f}{' (>= +0.1)' if d in bad else ''}"
                                               for d, r in rises.items()))

    def readme_output():
        """README.md's "What it printed ..." block shows the demo's held-out losses: the demo is
        deterministic, so a reader comparing must find the same numbers (4 decimals, as printed)."""
        block = (clone / "README.md").read_text().split("What it printed", 1)[1].split("```")[1]
        shown = {d: (a, b) for d, a, b in re.findall(r"valid loss (\S+)\s+(\d+\.\d+) -> (\d+\.\d+)", block)}
        loss, last = losses()
        ran = {d: (f"{loss[(d, 0)]:.4f}", f"{loss[(d, last)]:.4f}") for d, it in sorted(loss) if it == 0}
        differ = [f"{d}: README {shown.get(d, ('-', '-'))[0]} -> {shown.get(d, ('-', '-'))[1]}, "
                  f"the run {a} -> {b}" for d, (a, b) in ran.items() if shown.get(d) != (a, b)]
        differ += [f"{d}: in README, not in the run" for d in shown if d not in ran]
        return bool(shown) and not differ, "; ".join(differ) or f"{len(shown)} domains as the run printed them"

    def lm_eval_rows():
        ev, (_, last) = read(f"{DEMO}/logs/eval/eval.json"), losses()
        base, trained = ev["rows"][0], ev["rows"][-1]
        held = base["label"] == "base" and trained["iteration"] == last and ev["targets"] == ["ja/manual"]
        return held, f"rows {base['label']} .. {trained['label']} (iteration {trained['iteration']}, " \
                     f"last eval {last}); targets {ev['targets']}"

    def lm_eval_gain():
        ev = read(f"{DEMO}/logs/eval/eval.json")
        base, trained = ev["rows"][0], ev["rows"][-1]
        a, b, gain = base["ppl"]["ja/manual"], trained["ppl"]["ja/manual"], trained["gain"]
        return b < a and gain is not None and gain > 0, f"ppl ja/manual {a:.3f} -> {b:.3f}, gain {gain}"

    def report():
        held = "<h2>lm-eval on the checkpoints</h2>" in (demo / "report.html").read_text()
        return held, f"{DEMO}/report.html"

    def files(*rels: str):
        def fn():
            missing = [r for r in rels if not (clone / r).is_file()]
            return not missing, "missing: " + ", ".join(missing) if missing else ", ".join(rels)
        return fn

    check("the lockfile lists the run's checkpoints", checkpoints)
    check("the re-run's outputs equal the lock's", reproduced)
    check("eval loss: ja/manual (the new language) improves", target_improves)
    check("eval loss: no English domain rises by 0.1 or more", replay_holds)
    check("README.md's demo output is what the demo printed", readme_output)
    check("lm-eval: base and the last checkpoint, target ja/manual", lm_eval_rows)
    check("lm-eval: ja/manual perplexity falls, gain > 0", lm_eval_gain)
    check("report.html shows the lm-eval section", report)
    check("the Hugging Face export", files("work/demo/hf-out/config.json"))
    check("the plots", files(f"{DEMO}/logs/loss.png", f"{DEMO}/mixture/mixture.png"))
    return results


def verdict(results: list[tuple[str, bool, str]]) -> bool:
    """Print every check as PASS/FAIL with its detail; True only when all hold."""
    for name, held, detail in results:
        print(f"  {'PASS' if held else 'FAIL'}  {name}: {detail}")
    failed = [name for name, held, _ in results if not held]
    print(f"fresh-machine test: {'PASS' if not failed else 'FAIL'}: {len(results) - len(failed)} of "
          f"{len(results)} checks hold" + (f"; failed: {'; '.join(failed)}" if failed else ""), flush=True)
    return not failed


def _stop_on_sigterm(signum, frame):
    """`timeout` (.ci/run) ends this with SIGTERM: leave through ``finally`` (the container and the scratch
    folder go) instead of dying on the spot."""
    raise SystemExit(f"fresh-machine test: FAIL: stopped by signal {signum} (.ci/run's time limit for it)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new one under /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (clone, log, store)")
    parser.add_argument("--commit", default="HEAD", help="the commit to test (default: HEAD)")
    parser.add_argument("--check-only", type=Path, metavar="DIR",
                        help="only check the demo's outputs in DIR (a checkout where `nox -s demo` ran)")
    args = parser.parse_args(argv)
    if args.check_only:
        print(f"fresh-machine test: checks of the demo's outputs in {args.check_only}")
        return 0 if verdict(demo_checks(args.check_only)) else 1
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
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
    proc: subprocess.Popen | None = None
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
        times["total"] = time.perf_counter() - t_all
        print("\nfresh-machine test: wall times")
        for name, seconds in times.items():
            print(f"  {name:45} {seconds:8.1f} s")
        if stages:
            print(f"  {'demo stages (its own table, set-up excluded)':45} {float(stages.group(1)):8.1f} s")
        # the demo's outputs are in the clone (mounted from this machine): checked here, after the container
        print(f"fresh-machine test: checks (outputs in {clone})")
        ran = [("the demo exits 0", rc == 0, f"exit {rc}"),
               ("the demo printed 'run demo: finished'", "run demo: finished" in text, str(log))]
        return 0 if verdict(ran + demo_checks(clone)) else 1
    finally:
        if proc is not None and proc.poll() is None:  # stopped early (SIGTERM): the container goes first
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not args.keep:
            try:
                subprocess.run([*podman.args, "rmi", "-f", IMAGE], env=podman.env, capture_output=True,
                               timeout=300)
            except subprocess.TimeoutExpired:
                print(f"fresh-machine test: podman rmi of {IMAGE} took over 300 s; removing {work} anyway")
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
