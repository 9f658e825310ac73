"""Fast checks of the pure parts: sampler, token budget, checkpoint bookkeeping, metrics files, determinism."""

from __future__ import annotations

import json

import pytest

from experiment import determinism
from experiment.mixture.outputs import split_string
from experiment.train import checkpointing as ckpt
from experiment.train import integrity, metrics
from experiment.train.data import BatchPlan
from experiment.train.runner import train_iterations


def test_batch_plan_covers_each_global_batch_once():
    plans = [BatchPlan(global_batch_size=12, micro_batch_size=2, dp_rank=r, dp_size=3) for r in range(3)]
    assert plans[0].num_microbatches == 2
    seen = sorted(i for p in plans for mb in p.indices(24) for i in mb)
    assert seen == list(range(24, 36))  # global batch 2 = samples 24..35, each read once
    assert plans[1].indices(24) == [[28, 29], [30, 31]]


def test_train_length_from_a_token_budget():
    from experiment.folder import TrainingSection

    t = TrainingSection(train_tokens="1M", global_batch_size=8)
    assert train_iterations(t, 256) == 489  # ceil(1e6 / 2048)
    assert train_iterations(TrainingSection(train_iters=7), 256) == 7


def test_split_string_holds_out_the_fraction():
    assert split_string(0.0002) == "0.9998,0.0002,0"


def _fake_checkpoint(save_dir, it, files):
    d = ckpt.iteration_dir(save_dir, it)
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / integrity.MANIFEST_NAME).write_text(json.dumps({"iteration": it, "files": integrity.listing(d)}))
    return d


def test_incomplete_or_truncated_checkpoints_are_skipped(tmp_path):
    _fake_checkpoint(tmp_path, 4, {"a.distcp": b"x" * 10, "common.pt": b"y"})
    newest = _fake_checkpoint(tmp_path, 8, {"a.distcp": b"x" * 10, "common.pt": b"y"})
    (tmp_path / ckpt.LATEST_NAME).write_text("8\n")
    assert ckpt.usable_iterations(tmp_path) == ([8, 4], [])
    (newest / "a.distcp").write_bytes(b"x" * 3)  # truncated by a crash
    good, warnings = ckpt.usable_iterations(tmp_path)
    assert good == [4] and "iteration 8" in warnings[0] and "3 bytes" in warnings[0]
    (newest / integrity.MANIFEST_NAME).unlink()  # killed before the manifest
    assert "did not finish" in ckpt.usable_iterations(tmp_path)[1][0]
    (tmp_path / "iter_0000012.partial").mkdir()
    assert ckpt.remove_stale_partials(tmp_path) == [tmp_path / "iter_0000012.partial"]


def test_jsonl_is_cut_back_to_the_resumed_iteration(tmp_path):
    log = metrics.MetricsLogger(tmp_path, 0)
    for it in range(1, 6):
        log.step(it, loss=10.0 / it, lr=1e-3, grad_norm=1.0, consumed_samples=it * 8, tokens=it * 512,
                 tokens_per_s=1.0, tokens_per_s_per_gpu=1.0)
    log.evaluation(4, {"web": 2.5})
    assert log.close() == tmp_path / metrics.PLOT
    metrics.MetricsLogger(tmp_path, 3).close(plot=False)  # a resume from iteration 3
    rows = metrics.read_losses(tmp_path)
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert metrics.unhex(rows[2]["loss"]) == 10.0 / 3  # hex floats round-trip exactly
    assert (tmp_path / metrics.EVALS).read_text() == ""


def test_determinism_environment_is_megatrons_recipe():
    env = determinism.environment(True)
    assert env["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] == "0" and env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "NCCL_ALGO" in env and determinism.environment(False) == {}


@pytest.mark.parametrize("style", ["cosine", "linear", "WSD", "constant"])
def test_schedule_warmup_then_decay(style):
    import torch

    from experiment.folder import TrainingSection
    from experiment.train.optim import build_scheduler

    t = TrainingSection(train_iters=100, lr=1e-3, min_lr=1e-4, lr_warmup_iters=10, lr_decay_style=style,
                        global_batch_size=4)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    sched = build_scheduler(opt, t, 100)
    lrs = []
    for _ in range(100):
        sched.step(increment=4)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[4] == pytest.approx(5e-4)  # halfway through warmup
    assert lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-3 if style == "constant" else 1e-4)
    if style == "WSD":
        assert lrs[80] == pytest.approx(1e-3)  # stable until the last 10%


def test_checkpoint_writer_manager_ignores_sigterm_and_exits_with_its_rank(tmp_path):
    """The Manager behind megatron's checkpoint-writer queue survives the scheduler's SIGTERM (a save in flight
    must finish) but not its rank: a rank killed with SIGKILL leaves no orphaned server process."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    def state(pid: int) -> str:  # "" once gone; a zombie (Z) is dead too
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return ""

    code = ("import time\nfrom experiment.train import signals\nsignals.protect_checkpoint_writers()\n"
            "print(signals._writer_manager._process.pid, flush=True)\ntime.sleep(600)\n")
    root = Path(__file__).resolve().parents[2]
    rank = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)})
    server = int(rank.stdout.readline())
    os.kill(server, signal.SIGTERM)
    time.sleep(0.5)
    assert state(server) not in ("", "Z"), "the scheduler's SIGTERM stopped the writer queue's server"
    rank.kill()
    rank.wait(timeout=60)
    deadline = time.monotonic() + 10
    while state(server) not in ("", "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state(server) in ("", "Z"), f"server {server} outlived its rank killed with SIGKILL"


def test_inspect_names_the_damage_and_unresumable_refuses_only_when_none_is_complete(tmp_path):
    """The resume's file checks without a process group: a flipped bit is a hash mismatch naming the file, a
    record that names a file the folder lacks is a missing file, and the before-launch refusal comes only when
    no checkpoint is complete."""
    import json

    folder = _fake_checkpoint(tmp_path, 4, {"a.distcp": b"x" * 1000, "common.pt": b"y"})
    files = integrity.listing(folder)
    recorded = integrity.file_hashes(folder, files)
    (folder / integrity.MANIFEST_NAME).write_text(json.dumps({"iteration": 4, "files": files, "hashes": recorded}))
    assert integrity.inspect(folder, recorded).ok
    data = bytearray((folder / "a.distcp").read_bytes())
    data[5] ^= 1
    (folder / "a.distcp").write_bytes(bytes(data))
    flipped = integrity.inspect(folder, recorded)
    assert flipped.damage == "hash" and flipped.known_damage and "a.distcp has blake3" in flipped.why
    assert integrity.inspect(folder, {**recorded, "a.distcp": "0" * 64}).damage == "record"
    assert ckpt.unresumable(tmp_path) is None  # sizes still match: the run itself checks the hashes
    (folder / "common.pt").unlink()
    refusal = ckpt.unresumable(tmp_path)
    assert "none resumable" in refusal and "iter_0000004: missing" in refusal and "--restart" in refusal
