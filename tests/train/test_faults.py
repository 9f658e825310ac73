"""Faults a long run meets, as a user would hit them through `experiment run` (local launcher, real torchrun,
2 ranks, the tiny preset): checkpoints that no longer load, a bit flip in the newest one, a shard changed
between two segments, a --set override. Each ends with nothing lost and a run whose outputs equal the
session's uninterrupted reference run (tests/train/conftest.py `reference`), or whose lock `experiment
reproduce` re-runs to the byte when its config differs. Each records its cell of docs/reliability.md."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiment.lock import environment, lockfile
from tests import fault_matrix
from tests.train.conftest import torchrun, tree_bytes
from tests.train.corpus import make_folder

pytestmark = pytest.mark.slow


def _cli(*args: str, timeout: int = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "experiment.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def _copy_run(reference: Path, folder: Path) -> None:
    """The reference's outputs (checkpoints, logs) into a fresh folder of the same config."""
    shutil.copytree(reference / "checkpoints", folder / "checkpoints")
    shutil.copytree(reference / "logs", folder / "logs", ignore=shutil.ignore_patterns("tensorboard", "dataset_index"))


def _without(tree: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    return {k: v for k, v in tree.items() if not k.startswith(prefix)}


def _outputs_equal(folder: Path, reference: Path) -> bool:
    """Equal output hashes (per-step losses, the last checkpoint's files and tensors) in the two locks."""
    return lockfile.read_lock(folder / "run.lock.json").dump()["outputs"] == \
        lockfile.read_lock(reference / "run.lock.json").dump()["outputs"]


def test_unloadable_checkpoints_stop_the_run_then_restart_with_a_set_override_reproduces(reference, corpus, tmp_path):
    """One .distcp file removed from each checkpoint (what a megatron-core upgrade, a changed model field or a bad
    disk look like to a resume): `experiment run` stops with one message naming each checkpoint and why, and
    every byte of the old checkpoints and logs is unchanged (today's main started again from scratch and
    overwrote them). `--restart` is the explicit way to start over: the old run goes aside whole, the new one
    trains with a `--set` override, and its lock reproduces (a full `experiment reproduce`: its config differs
    from the reference) and `experiment compare` names the override."""
    folder = make_folder(tmp_path / "run", corpus, iters=8)
    _copy_run(reference, folder)
    for it in (4, 8):
        sorted((folder / "checkpoints" / f"iter_{it:07d}").glob("*.distcp"))[0].unlink()
    before = tree_bytes(folder)

    res = _cli("run", str(folder), "--set", "training.train_iters=12")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "none resumable" in out and "iter_0000008: missing" in out and "iter_0000004: missing" in out, out[-3000:]
    assert "--restart" in out and "Traceback" not in out, out[-3000:]
    assert tree_bytes(folder) == before  # refused before torchrun started: not one byte written
    refusal = next(line for line in out.splitlines() if "none resumable" in line)

    res = _cli("run", str(folder), "--restart", "--set", "training.lr=0.002")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    aside = folder / "checkpoints" / "aside" / "restart-1"
    assert tree_bytes(aside) == {k[len("checkpoints/"):]: v for k, v in before.items() if k.startswith("checkpoints/")
                                 and (k.startswith("checkpoints/iter_") or k.endswith("latest_checkpointed_iteration.txt"))}
    old_logs = folder / "logs" / "aside" / "restart-1"
    assert (old_logs / "losses.jsonl").read_bytes() == before["logs/losses.jsonl"]
    lock = lockfile.read_lock(folder / "run.lock.json")
    assert lock.config.overrides == ["training.lr=0.002"]
    assert lock.config.resolved["runner_args"] == ["--set", "training.lr=0.002"]
    assert {e["what"] for e in lock.checkpoint_record.aside} == {"checkpoints", "logs"}

    ignore = ["--ignore"] if environment.source_hash() != lock.kit.source_hash else []
    rep = _cli("reproduce", str(folder / "run.lock.json"), "--out", str(tmp_path / "rerun"), *ignore)
    rout = rep.stdout + rep.stderr
    assert rep.returncode == 0 and "identical" in rout, rout[-4000:]
    cmp = _cli("compare", str(reference), str(folder), cwd=tmp_path)  # it writes compare.png here
    assert cmp.returncode == 1 and "training.lr" in cmp.stdout + cmp.stderr, cmp.stdout + cmp.stderr  # 1: they differ

    name = "tests/train/test_faults.py::test_unloadable_checkpoints_stop_the_run_then_restart_with_a_set_override_reproduces"
    fault_matrix.record("local", "every checkpoint unloadable", survived="both checkpoints and all logs, byte for byte; "
                        "after --restart under checkpoints/aside/restart-1 and logs/aside/restart-1",
                        resumed="refused (exit 2); --restart: from scratch, by choice", reproduced="yes: `experiment "
                        "reproduce` exit 0 (--restart run)", message=refusal, test=name)
    fault_matrix.record("local", "--set override", survived="everything (a new run)", resumed="from scratch",
                        reproduced="yes: `experiment reproduce` exit 0, the lock's overrides re-applied; `compare` "
                        "names training.lr", message="overrides recorded in the lock, applied again: --set "
                        "training.lr=0.002", test=name)


def test_a_bit_flip_in_the_latest_checkpoint_is_refused_by_name(reference, corpus, tmp_path):
    """One bit of iteration 8's first shard flipped, its size and mtime unchanged (a bad disk): resume checks the
    checkpoint's files against the hashes its save recorded, names the file, moves iteration 8 aside whole, resumes
    from 4 and ends on the reference's bytes."""
    folder = make_folder(tmp_path / "run", corpus, iters=8)
    _copy_run(reference, folder)
    victim = sorted((folder / "checkpoints" / "iter_0000008").glob("*.distcp"))[0]
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x04
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    flipped = tree_bytes(folder / "checkpoints" / "iter_0000008")

    res = torchrun(folder)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    line = next(text for text in out.splitlines() if "is damaged" in text)
    assert f"{victim.name} has blake3" in line and "resuming from iteration 4" in line, line
    assert tree_bytes(folder / "checkpoints" / "damaged" / "iter_0000008") == flipped
    assert _without(tree_bytes(folder / "checkpoints"), "damaged/") == tree_bytes(reference / "checkpoints")
    assert (folder / "logs" / "losses.jsonl").read_bytes() == (reference / "logs" / "losses.jsonl").read_bytes()
    fault_matrix.record("local", "bit flip in the latest checkpoint", survived="the flipped checkpoint, whole, under "
                        "checkpoints/damaged/; the cut log lines under logs/aside/", resumed="iteration 4 (the older "
                        "checkpoint)", reproduced="yes: every checkpoint and losses.jsonl equal the reference's bytes",
                        message=line.strip(), test="tests/train/test_faults.py::test_a_bit_flip_in_the_latest_"
                        "checkpoint_is_refused_by_name")


def test_a_shard_changed_between_segments_is_refused_by_name(reference, corpus, tmp_path):
    """A first segment stops at iteration 5 (checkpoint at 4); then one byte of a shard changes (a re-tokenize,
    a bad copy): the next `experiment run` refuses before starting, naming the shard, with nothing written; with
    the shard restored it resumes and ends on the reference's bytes, and its lock's outputs equal the
    reference's."""
    data = tmp_path / "data"
    shutil.copytree(corpus.parent, data)  # a private copy: the session's corpus stays untouched
    folder = make_folder(tmp_path / "run", data / corpus.name, iters=8)
    first = _cli("run", str(folder), "--max-iterations", "5")
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert (folder / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == "4\n"
    shard = sorted(data.glob("*.bin"))[0]
    original = shard.read_bytes()
    changed = bytearray(original)
    changed[100] ^= 0x01
    shard.write_bytes(bytes(changed))
    before = tree_bytes(folder)
    res = _cli("run", str(folder))
    out = res.stdout + res.stderr
    assert res.returncode == 2 and f"{shard.stem}.bin: differs from the hash its signature" in out, out[-3000:]
    assert tree_bytes(folder) == before
    line = next(text for text in out.splitlines() if "differs from the hash" in text)
    shard.write_bytes(original)
    res = _cli("run", str(folder))
    assert res.returncode == 0 and "resumed from" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]
    assert tree_bytes(folder / "checkpoints") == tree_bytes(reference / "checkpoints")
    assert _outputs_equal(folder, reference)
    fault_matrix.record("local", "shard changed between segments", survived="everything: refused before any "
                        "process started", resumed="iteration 4, once the shard was restored", reproduced="yes: "
                        "the lock's outputs equal the reference's", message=line.strip(),
                        test="tests/train/test_faults.py::test_a_shard_changed_between_segments_is_refused_by_name")
