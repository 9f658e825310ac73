"""The hang watchdog: its decision on a fake clock, its thread with a fake exit, and a real 2-rank torchrun run
with one rank SIGSTOPped (the others notice, write their stacks, name it, and the job ends non-zero)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from experiment.train import watchdog
from experiment.train.watchdog import HangRule, Watchdog, judge

# ------------------------------------------------------------------------------------------ the decision

def test_rule_leaves_out_the_first_step_and_waits_factor_times_the_median_step():
    rule = HangRule(factor=4, min_step=0.5)
    assert rule.overdue(100.0) is None  # nothing measured: never a hang
    rule.step(0.0)  # the first step (warm-up) only starts the clock
    assert rule.limit() is None and rule.overdue(1000.0) is None
    for t in (1.0, 2.0, 3.0, 4.5):  # steps of 1, 1, 1, 1.5 s: median 1 s, limit 4 s
        rule.step(t)
    assert rule.step_seconds() == 1.0 and rule.limit() == 4.0
    assert rule.overdue(4.5 + 4.0) is None
    assert rule.overdue(4.5 + 4.1) == pytest.approx(4.1)


def test_rule_floor_pause_and_off():
    rule = HangRule(factor=4, min_step=3.0)
    for t in (0.0, 0.1, 0.2, 0.3):  # 0.1 s steps count as 3 s: the limit is 12 s, not 0.4 s
        rule.step(t)
    assert rule.limit() == pytest.approx(12.0)
    assert rule.overdue(0.3 + 11.0) is None and rule.overdue(0.3 + 12.5) is not None
    rule.pause("save")  # a save of any length is no hang
    assert rule.overdue(1000.0) is None
    rule.unpause(1000.0)  # and its time is not a step's: the wait starts again
    assert rule.overdue(1011.0) is None and rule.overdue(1013.0) == pytest.approx(13.0)
    rule.step(1001.0)
    assert rule.step_seconds() == pytest.approx(0.1)  # the step after the save is 1 s: median of 0.1, 0.1, 0.1, 1
    off = HangRule(factor=0)
    for t in range(10):
        off.step(float(t))
    assert off.limit() is None and off.overdue(1e9) is None


def _beat(rank, iteration, time_, phase="train"):
    return {"rank": rank, "iteration": iteration, "phase": phase, "time": time_, "progress": time_,
            "pid": 100 + rank, "host": "node"}


def test_judge_names_the_stopped_rank_the_rank_behind_and_the_reporter():
    now = 1000.0
    beats = {0: _beat(0, 7, now), 1: _beat(1, 7, now - 20), 2: _beat(2, 6, now - 0.5), 3: None}
    v = judge(beats, me=2, now=now, stale_after=3.0)
    assert (v.stopped, v.behind, v.reporter) == ([1, 3], [2], 0)
    line = watchdog.describe(v, beats, now)
    assert "rank 1's heartbeat stopped at iteration 7 (train, 20 s ago, pid 101 on node)" in line
    assert "rank 3 wrote no heartbeat" in line and "rank 2 is alive but behind at iteration 6" in line
    # rank 0 stopped: the lowest live rank reports; the reporting rank itself always counts as live
    v = judge({0: _beat(0, 7, now - 30), 1: _beat(1, 7, now - 30)}, me=1, now=now, stale_after=3.0)
    assert (v.stopped, v.reporter) == ([0], 1)
    v = judge({0: _beat(0, 7, now), 1: _beat(1, 7, now)}, me=0, now=now, stale_after=3.0)
    assert (v.stopped, v.behind) == ([], [])
    assert "every rank is alive at iteration 7" in watchdog.describe(v, {0: _beat(0, 7, now)}, now)


def test_thread_writes_heartbeats_then_stacks_status_and_leaves_on_a_hang(tmp_path, capsys):
    """The thread on its own (no torch, no processes): rank 0 of 2 steps, then stops making progress while
    rank 1's heartbeat is old; the exit is a fake that records the status."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "run_status.json").write_text(json.dumps({"state": "running", "iteration": 3, "train_iters": 10}))
    old = time.time() - 60
    (logs / "heartbeat").mkdir()
    (logs / "heartbeat" / "rank-1.json").write_text(json.dumps(_beat(1, 3, old)))
    exited = threading.Event()
    codes = []

    def fake_exit(code):
        codes.append(code)
        exited.set()

    dog = Watchdog(logs, 0, 2, factor=3, min_step=0.05, tick=0.05, exit=fake_exit).start()
    for it in (1, 2, 3):
        dog.step(it)
        time.sleep(0.02)
    mine = logs / "heartbeat" / "rank-0.json"
    deadline = time.time() + 5
    while time.time() < deadline and not (mine.is_file() and json.loads(mine.read_text())["iteration"] == 3):
        time.sleep(0.01)
    beat = json.loads(mine.read_text())
    assert (beat["rank"], beat["iteration"], beat["pid"]) == (0, 3, os.getpid())
    assert exited.wait(10), "the watchdog did not trip"
    assert codes == [watchdog.HANG_EXIT]
    stacks = (logs / "hang" / "rank-0.txt").read_text()
    assert "no progress for" in stacks and "test_thread_writes_heartbeats" in stacks  # the main thread's frame
    err = capsys.readouterr().err
    assert "hang: no progress for" in err and "rank 1's heartbeat stopped at iteration 3" in err
    status = json.loads((logs / "run_status.json").read_text())
    assert status["state"] == "hung" and status["train_iters"] == 10 and status["hang"]["stopped_ranks"] == [1]


def test_paused_and_stopped_watchdog_does_not_trip(tmp_path):
    codes = []
    dog = Watchdog(tmp_path, 0, 1, factor=2, min_step=0.2, tick=0.02, exit=codes.append).start()
    for it in (1, 2, 3):
        dog.step(it)
    dog.pause("save")
    time.sleep(1.2)  # 3 x the limit (0.4 s), paused
    dog.unpause()
    dog.step(4)
    dog.stop()
    time.sleep(0.2)
    assert codes == []
    assert json.loads((tmp_path / "heartbeat" / "rank-0.json").read_text())["phase"] == "done"
    off = Watchdog(tmp_path / "off", 0, 1, factor=0).start()
    off.step(1)
    off.stop()
    assert not (tmp_path / "off").exists()  # off: no thread, no files


# ------------------------------------------------------------------------------------------ a real run

def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_sigstop_one_rank_ends_the_run_naming_it(corpus, tmp_path):
    from experiment.runlog import read_losses
    from tests.train.conftest import start_torchrun
    from tests.train.corpus import make_folder

    folder = make_folder(tmp_path / "run", corpus, iters=1000, save_interval=1000, eval_interval=1000, eval_iters=0)
    toml = folder / "experiment.toml"
    toml.write_text(toml.read_text().replace("deterministic = true\n", "deterministic = true\nhang_factor = 2\n"))
    proc = start_torchrun(folder)
    stopped, seen = None, set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # a few steps, so the watchdog knows the step time
            losses = read_losses(folder / "logs") if (folder / "logs" / "losses.jsonl").is_file() else []
            if losses and losses[-1]["iteration"] >= 5:
                break
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.1)
        else:
            pytest.fail("no training steps within 120 s")
        seen = set(_descendants(proc.pid))
        rank1 = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        assert len(rank1) == 1, [(p, _rank_of(p)) for p in _children(proc.pid)]
        stopped = rank1[0]
        os.kill(stopped, signal.SIGSTOP)
        t_stop = time.monotonic()
        out, _ = proc.communicate(timeout=90)
        took = time.monotonic() - t_stop
    finally:
        if stopped is not None:
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session (start_torchrun): torchrun and every rank
            proc.wait(timeout=30)
    print(f"SIGSTOP to torchrun's exit: {took:.1f} s")
    print("\n".join(line for line in out.splitlines() if "watchdog" in line or "hang" in line or "exitcode" in line))
    assert proc.returncode != 0, out[-3000:]
    # the limit (2 x the step time counted as at least 3 s: 6 s) + torchrun's teardown (SIGTERM, 30 s, SIGKILL
    # for the stopped rank) + slack for 2 shared cores
    assert took < 60, (took, out[-3000:])
    assert "hang: no progress for" in out and "rank 1's heartbeat stopped at iteration" in out, out[-3000:]
    stacks = (folder / "logs" / "hang" / "rank-0.txt").read_text()
    assert "Thread 0x" in stacks and 'File "' in stacks and "experiment/train/runner.py" in stacks, stacks
    assert not (folder / "logs" / "hang" / "rank-1.txt").exists()  # a stopped rank writes nothing
    status = json.loads((folder / "logs" / "run_status.json").read_text())
    assert status["state"] == "hung" and status["hang"]["stopped_ranks"] == [1], status
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in seen):
        time.sleep(0.2)
    left = [p for p in seen if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"
    from tests import fault_matrix

    fault_matrix.record("local", "hung rank (SIGSTOP)", survived="every checkpoint and log; rank 0's Python stacks in "
                        "logs/hang/rank-0.txt; run_status.json says hung", resumed="not re-run here: torchrun exits "
                        f"non-zero after {took:.0f} s, and a chain resumes from the last checkpoint as after kill -9",
                        reproduced="no lock: the run did not finish", message=next(
                            line for line in out.splitlines() if "hang: no progress for" in line).split("] ", 1)[-1],
                        test="tests/train/test_watchdog.py::test_sigstop_one_rank_ends_the_run_naming_it")
