"""Real training runs under torchrun (2 processes, gloo, the tiny preset on real tokenized text)."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import time

import pytest

from experiment.train.metrics import read_losses, unhex
from tests import fault_matrix
from tests.train.conftest import start_torchrun, torchrun, tree_bytes
from tests.train.corpus import make_folder

pytestmark = pytest.mark.slow

ITERS = 8


def _ok(res) -> str:
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


def test_dp2_loss_falls_and_outputs_are_written(reference):
    losses = [unhex(r["loss"]) for r in read_losses(reference / "logs")]
    assert len(losses) == ITERS and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3, losses  # real learning, not noise
    ckpt = reference / "checkpoints"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(ITERS)
    assert {p.name for p in ckpt.glob("iter_*")} == {"iter_0000004", "iter_0000008"}
    assert (ckpt / "kit_checkpoint.json").is_file()
    # the layout `experiment ckpt export` reads: model weights under the top-level "model" key
    from megatron.core import dist_checkpointing

    keys = dist_checkpointing.load_tensors_metadata(str(ckpt / "iter_0000008"))
    assert any(k.startswith("model.") or k.startswith("embedding") for k in keys), sorted(keys)[:5]
    evals = [json.loads(line) for line in (reference / "logs" / "eval.jsonl").read_text().splitlines()]
    assert {e["domain"] for e in evals} == {"pydoc", "debref"}
    assert {e["iteration"] for e in evals} == {0, 4, ITERS}  # the base model, then every eval_interval
    assert (reference / "logs" / "loss.png").stat().st_size > 1000
    assert list((reference / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    status = json.loads((reference / "logs" / "run_status.json").read_text())
    assert status["state"] == "finished" and status["iteration"] == ITERS
    assert (status["layer_spec"], status["recompute"]) == ("local-sdpa", "none")  # the spec built on a CPU
    assert json.loads((reference / "logs" / "determinism.json").read_text())["CUBLAS_WORKSPACE_CONFIG"]
    import importlib.util

    if importlib.util.find_spec("experiment.lock.lockfile"):  # `experiment run` wrote the lockfile
        from experiment.lock import lockfile

        launch = lockfile.read_lock(reference / "run.lock.json").launch
        assert (launch.layer_spec, launch.recompute) == ("local-sdpa", "none")  # recorded from run_status.json


def test_two_identical_runs_give_identical_bytes(reference, corpus, tmp_path):
    again = make_folder(tmp_path / "run", corpus, iters=ITERS)
    _ok(torchrun(again))
    assert tree_bytes(again / "checkpoints") == tree_bytes(reference / "checkpoints")
    for name in ("losses.jsonl", "eval.jsonl"):
        assert (again / "logs" / name).read_bytes() == (reference / "logs" / name).read_bytes()


def test_sigkill_of_one_rank_then_restart_ends_byte_identical(reference, corpus, tmp_path):
    """kill -9 of rank 1 alone, mid-step, once a checkpoint exists and training went on past it: torchrun tears
    the other rank down and exits non-zero; the same command resumes from the last checkpoint (the log lines
    past it kept in logs/aside/) and ends on the uninterrupted run's bytes."""
    import psutil

    folder = make_folder(tmp_path / "run", corpus, iters=ITERS)
    proc = start_torchrun(folder)
    latest = folder / "checkpoints" / "latest_checkpointed_iteration.txt"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # kill once a checkpoint exists and training went on past it
            done = read_losses(folder / "logs") if latest.is_file() else []
            if done and done[-1]["iteration"] > int(latest.read_text()):
                break
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.05)
        rank1 = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                     if p.environ().get("RANK") == "1")
        rank1.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
            proc.wait(timeout=60)
    assert proc.returncode != 0, out[-3000:]
    status = folder / "logs" / "run_status.json"  # live ("running") while training, "finished" at the end
    assert not status.exists() or json.loads(status.read_text())["state"] == "running", "the run finished before it was killed"
    killed_at = read_losses(folder / "logs")[-1]["iteration"]
    assert killed_at < ITERS
    failure = next((line for line in out.splitlines() if "exitcode" in line), "torchrun: a worker failed")
    out = _ok(torchrun(folder))
    assert "resumed from" in out, out[-3000:]
    resumed = next(line for line in out.splitlines() if "resumed from" in line)
    at = int(resumed.split("(iteration ")[1].split(",")[0])
    kept = (folder / "logs" / "aside" / f"losses.jsonl.after-{at}").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in kept] == list(range(at + 1, killed_at + 1))  # kept, not lost
    assert tree_bytes(folder / "checkpoints") == tree_bytes(reference / "checkpoints")
    for name in ("losses.jsonl", "eval.jsonl"):
        assert (folder / "logs" / name).read_bytes() == (reference / "logs" / name).read_bytes()
    fault_matrix.record("local", "kill -9 of one rank mid-step", survived="every complete checkpoint; the log lines "
                        "past it under logs/aside/", resumed="iteration " + resumed.split("(iteration ")[1].split(",")[0],
                        reproduced="yes: every checkpoint and losses.jsonl equal the reference's bytes",
                        message=failure.split("]")[-1].strip(),
                        test="tests/train/test_training.py::test_sigkill_of_one_rank_then_restart_ends_byte_identical")


def test_disk_full_mid_save_stops_with_one_message_then_resumes_byte_identical(reference, corpus, tmp_path):
    """The disk fills while iteration 8's checkpoint is written (a real tmpfs with room for one checkpoint and a
    half): every rank stops with one message naming the place and the fix, no traceback; iteration 4 stays the
    newest checkpoint, and once space is freed (the tmpfs grown) the same command resumes and ends on the
    reference's bytes."""
    folder = make_folder(tmp_path / "run", corpus, iters=ITERS)
    one = sum(p.stat().st_size for p in (reference / "checkpoints" / "iter_0000004").rglob("*") if p.is_file())
    ckpt = folder / "checkpoints"
    ckpt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={one * 3 // 2}", "tmpfs", str(ckpt)], check=True,
                   timeout=60)
    try:
        full = torchrun(folder)
        out = full.stdout + full.stderr
        assert full.returncode != 0, out[-3000:]
        assert "the disk is full" in out and f"df -h {ckpt}" in out and "resumes from" in out, out[-3000:]
        assert "[rank" not in out, out[-3000:]  # no worker traceback (torchrun's own report of the exit remains)
        assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "4\n"
        assert not (ckpt / "iter_0000008").exists()
        subprocess.run(["mount", "-o", f"remount,size={one * 4}", str(ckpt)], check=True,
                       timeout=60)  # space freed
        out2 = _ok(torchrun(folder))
        assert "resumed from" in out2 and "did not finish" in out2, out2[-3000:]
        assert tree_bytes(ckpt) == tree_bytes(reference / "checkpoints")
        for name in ("losses.jsonl", "eval.jsonl"):
            assert (folder / "logs" / name).read_bytes() == (reference / "logs" / name).read_bytes()
        fault_matrix.record("local", "disk full during a save", survived="iteration 4's checkpoint and the logs; the "
                            "half-written iteration 8 was removed as unfinished", resumed="iteration 4, once space "
                            "was freed", reproduced="yes: every checkpoint and losses.jsonl equal the reference's bytes",
                            message=next(line for line in out.splitlines() if "the disk is full" in line),
                            test="tests/train/test_training.py::test_disk_full_mid_save_stops_with_one_message_then_"
                            "resumes_byte_identical")
    finally:
        subprocess.run(["umount", "--lazy", str(ckpt)], check=False, timeout=60)


def _kill_tree(pid: int) -> None:
    """SIGKILL torchrun and every worker (torchrun starts each worker in its own session, so killing
    its process group alone would leave the workers running): what a node failure looks like."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(reference, corpus, tmp_path):
    """A truncated shard in the newest checkpoint (a known kind of damage): the previous one is used, the
    damaged one is moved aside whole (not deleted, not overwritten), the log lines past iteration 4 are kept
    aside, and the run still ends on the same bytes."""
    folder = make_folder(tmp_path / "run", corpus, iters=ITERS)
    shutil.copytree(reference / "checkpoints", folder / "checkpoints")
    (folder / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("8\n")
    damaged = tree_bytes(folder / "checkpoints" / "iter_0000008")
    victim = sorted((folder / "checkpoints" / "iter_0000008").glob("*.distcp"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    damaged[victim.name] = victim.read_bytes()
    shutil.copytree(reference / "logs", folder / "logs")
    out = _ok(torchrun(folder))
    assert "checkpoint iteration 8 is damaged" in out and victim.name in out, out[-3000:]
    assert "resumed from" in out and "iter_0000004" in out
    aside = folder / "checkpoints" / "damaged"
    assert tree_bytes(aside / "iter_0000008") == damaged  # moved as it was
    assert {k: v for k, v in tree_bytes(folder / "checkpoints").items() if not k.startswith("damaged/")} == \
        tree_bytes(reference / "checkpoints")
    assert (folder / "logs" / "losses.jsonl").read_bytes() == (reference / "logs" / "losses.jsonl").read_bytes()
    kept = (folder / "logs" / "aside" / "losses.jsonl.after-4").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in kept] == [5, 6, 7, 8]
    moved = [json.loads(line)["what"] for line in (folder / "logs" / "aside.jsonl").read_text().splitlines()]
    assert sorted(moved) == ["checkpoint", "log", "log"], moved  # iteration 8's folder, losses and eval lines


def test_resume_with_a_changed_mixture_is_refused_unless_allowed(reference, corpus, tmp_path):
    """The run recorded its mixture (logs/mixture.json); resuming after data_ratio.json changed would read a
    different blended index past the consumed samples, so it is refused, naming the setting and the change."""
    folder = make_folder(tmp_path / "run", corpus, iters=ITERS)
    recorded = json.loads((reference / "logs" / "mixture.json").read_text())
    assert {s["name"] for s in recorded["shards"]} and recorded["fingerprint"]
    shutil.copytree(reference / "checkpoints", folder / "checkpoints")
    (folder / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("4\n")
    shutil.copytree(reference / "logs", folder / "logs")
    (folder / "data_ratio.json").write_text(json.dumps({"pydoc": 1.0, "debref": 3.0}))
    res = torchrun(folder)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "data.allow_mixture_change" in out and "weight of" in out, out[-3000:]
    assert json.loads((folder / "logs" / "mixture.json").read_text()) == recorded  # the record is kept
    toml = folder / "experiment.toml"  # meant: the run goes on with the new weights, says so, records them
    toml.write_text(toml.read_text().replace("[data]\n", "[data]\nallow_mixture_change = true\n", 1))
    out = _ok(torchrun(folder))
    assert "mixture changed on resume" in out and "resumed from" in out, out[-3000:]
    assert json.loads((folder / "logs" / "mixture.json").read_text())["fingerprint"] != recorded["fingerprint"]


def test_tp2_continues_from_a_base_checkpoint(reference, corpus, tmp_path):
    """TP=2 run whose base is the DP run's checkpoint (saved at TP=1: dist_checkpointing reshards);
    the log names the base and its hash, and training starts from the trained loss, not from scratch."""
    folder = make_folder(tmp_path / "run", corpus, tp=2, iters=2, save_interval=2, eval_interval=2,
                         warmup=0, checkpoint=f'base = "{reference / "checkpoints"}"')
    out = _ok(torchrun(folder))
    assert "base checkpoint loaded" in out and "blake3:" in out, out[-3000:]
    assert "TP=2" in out and "DP=1" in out
    first = unhex(read_losses(folder / "logs")[0]["loss"])
    scratch_first = unhex(read_losses(reference / "logs")[0]["loss"])
    assert first < scratch_first - 0.3, (first, scratch_first)
    base = json.loads((folder / "logs" / "base_checkpoint.json").read_text())
    assert base["hash"].startswith("blake3:") and base["iteration"] == ITERS


def test_sigterm_saves_and_exits_cleanly_then_resumes_identically(reference, corpus, tmp_path):
    """Slurm preemption: SIGTERM to every rank -> checkpoint at the current iteration, exit 0; the
    re-run resumes from it and ends on the uninterrupted run's bytes."""
    import psutil

    folder = make_folder(tmp_path / "run", corpus, iters=ITERS)
    proc = start_torchrun(folder)
    deadline = time.time() + 240
    while time.time() < deadline and not (read_losses(folder / "logs") and
                                          read_losses(folder / "logs")[-1]["iteration"] >= 2):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    for child in psutil.Process(proc.pid).children(recursive=True):  # the workers, as srun signals them
        child.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    status = json.loads((folder / "logs" / "run_status.json").read_text())
    assert status["state"] == "interrupted" and 2 <= status["iteration"] < ITERS, status
    latest = int((folder / "checkpoints" / "latest_checkpointed_iteration.txt").read_text())
    assert latest == status["iteration"] and "saving a checkpoint" in out
    _ok(torchrun(folder))
    ref = tree_bytes(reference / "checkpoints")
    got = tree_bytes(folder / "checkpoints")
    # the preemption checkpoint is extra; every checkpoint both runs wrote is byte-identical
    assert {k: v for k, v in got.items() if k in ref} == ref
    assert (folder / "logs" / "losses.jsonl").read_bytes() == (reference / "logs" / "losses.jsonl").read_bytes()


def test_pp2_trains_and_its_checkpoint_continues_at_pp1(reference, corpus, tmp_path):
    """Pipeline parallelism: 2 stages of the tiny model (2 layers each) learn, the last stage's loss reaches
    every rank's log, and the checkpoint (saved per stage) is a base for a PP=1 run (dist_checkpointing
    reshards)."""
    folder = make_folder(tmp_path / "pp", corpus, pp=2, iters=4, save_interval=4, eval_interval=4)
    out = _ok(torchrun(folder))
    assert "PP=2" in out and "DP=1" in out, out[-3000:]
    losses = [unhex(r["loss"]) for r in read_losses(folder / "logs")]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.15, losses  # 10.358 -> 10.163 in 4 steps with the locked environment
    evals = [json.loads(line) for line in (folder / "logs" / "eval.jsonl").read_text().splitlines()]
    assert {e["iteration"] for e in evals} == {0, 4} and all(math.isfinite(unhex(e["loss"])) for e in evals)
    again = make_folder(tmp_path / "pp1", corpus, iters=1, save_interval=1, eval_interval=1, warmup=0,
                        checkpoint=f'base = "{folder / "checkpoints"}"')
    out = _ok(torchrun(again))
    assert "base checkpoint loaded" in out, out[-3000:]
    first = unhex(read_losses(again / "logs")[0]["loss"])
    assert first < losses[0] - 0.2, (first, losses)
