"""Run metrics under ``<folder>/logs/``: TensorBoard scalars, exact per-step JSONL, a PNG loss curve.

``losses.jsonl`` and ``eval.jsonl`` hold only values that a repeated run must reproduce (iteration,
consumed samples, loss, lr, grad norm), floats written as ``float.hex`` so two runs compare byte for
byte; timings (tokens/s) go to TensorBoard only. On resume both files are cut back to the resumed
iteration, so a killed-and-restarted run ends with the same files as an uninterrupted one; the cut lines
are kept in ``logs/aside/`` and listed in ``logs/aside.jsonl``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from experiment.atomic import write_atomic
from experiment.runlog import EVALS, LOSSES, keep_aside, read_evals, read_losses

PLOT = "loss.png"


def _hex(x: float | None) -> str | None:
    return None if x is None else float(x).hex()


def unhex(x: str | None) -> float | None:
    return None if x is None else float.fromhex(x)


def _truncate_jsonl(path: Path, keep_through: int) -> None:
    """Drop the records of iterations after ``keep_through`` (work a killed run did past its checkpoint);
    the dropped lines are kept in ``logs/aside/`` (``runlog.keep_aside``), never lost."""
    if not path.is_file():
        return
    kept, dropped = [], []
    for line in path.read_text().splitlines(keepends=True):
        if line.strip():  # a start at 0 logs its iteration-0 evaluation again: it keeps none
            keep = keep_through > 0 and json.loads(line)["iteration"] <= keep_through
            (kept if keep else dropped).append(line)
    if not dropped:
        return
    keep_aside(path, dropped, f"the run resumed from iteration {keep_through}", keep_through)
    write_atomic(path, "".join(kept))


class _Mirrored:
    """TensorBoard's writer, each ``add_scalar`` also sent to the trackers (``experiment.train.trackers``):
    same tag, same step, so every scalar anyone adds to TensorBoard reaches MLflow and W&B too. Values are
    sent once per step, as one batch."""

    def __init__(self, writer, sinks: list):
        self._writer, self.sinks = writer, sinks
        self._step: int | None = None
        self._pending: dict[str, float] = {}

    def add_scalar(self, tag: str, value, step: int, *args, **kwargs) -> None:
        self._writer.add_scalar(tag, value, step, *args, **kwargs)
        if self.sinks:
            if self._step is not None and step != self._step:
                self.flush_trackers()
            self._step = step
            self._pending[tag] = float(value)

    def flush_trackers(self) -> None:
        from experiment.train import trackers

        if self._pending and self._step is not None:
            trackers.emit(self.sinks, self._step, self._pending)
        self._pending = {}

    def __getattr__(self, name):
        return getattr(self._writer, name)


class MetricsLogger:
    """Writes the run's metrics; only the rank that owns the logs creates one (others use ``NullLogger``).
    ``folder``: the training folder, whose ``[tracking]`` section adds MLflow/W&B beside TensorBoard."""

    def __init__(self, log_dir: Path, start_iteration: int, folder=None):
        from torch.utils.tensorboard import SummaryWriter

        from experiment.train import trackers

        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in (LOSSES, EVALS):  # a run starting at 0 keeps what an earlier start logged, aside
            _truncate_jsonl(self.dir / name, start_iteration)
        self.tb = _Mirrored(SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_iteration + 1),
                            trackers.start(folder, self.dir, resume=start_iteration > 0))
        self._losses = open(self.dir / LOSSES, "a")
        self._evals = open(self.dir / EVALS, "a")

    def step(self, iteration: int, *, loss: float, lr: float, grad_norm: float | None, consumed_samples: int,
             tokens: int, tokens_per_s: float, tokens_per_s_per_gpu: float,
             domain_samples: dict[str, int] | None = None) -> None:
        record = {"iteration": iteration, "consumed_samples": consumed_samples, "loss": _hex(loss),
                  "lr": _hex(lr), "grad_norm": _hex(grad_norm)}
        self._losses.write(json.dumps(record, sort_keys=True) + "\n")
        self._losses.flush()
        tb = self.tb
        tb.add_scalar("train/loss", loss, iteration)
        tb.add_scalar("train/lr", lr, iteration)
        if grad_norm is not None:
            tb.add_scalar("train/grad_norm", grad_norm, iteration)
        tb.add_scalar("train/tokens_seen", tokens, iteration)
        tb.add_scalar("throughput/tokens_per_s", tokens_per_s, iteration)
        tb.add_scalar("throughput/tokens_per_s_per_gpu", tokens_per_s_per_gpu, iteration)
        for domain, count in (domain_samples or {}).items():
            tb.add_scalar(f"data/samples/{domain}", count, iteration)
        tb.flush_trackers()

    def scalars(self, iteration: int, values: dict[str, float | None]) -> None:
        """Extra TensorBoard scalars (throughput/mfu, throughput/eta_s); timings, so never in losses.jsonl."""
        for name, value in values.items():
            if value is not None:
                self.tb.add_scalar(name, value, iteration)

    def evaluation(self, iteration: int, losses: dict[str, float]) -> None:
        for domain, loss in sorted(losses.items()):
            ppl = math.exp(min(loss, 50.0))
            self._evals.write(json.dumps({"iteration": iteration, "domain": domain, "loss": _hex(loss),
                                          "ppl": _hex(ppl)}, sort_keys=True) + "\n")
            self.tb.add_scalar(f"valid/{domain}/loss", loss, iteration)
            self.tb.add_scalar(f"valid/{domain}/ppl", ppl, iteration)
        self._evals.flush()
        self.tb.flush_trackers()

    def close(self, *, plot: bool = True, status: str = "finished") -> Path | None:
        from experiment.train import trackers

        self._losses.close()
        self._evals.close()
        self.tb.flush_trackers()
        self.tb.flush()
        self.tb.close()
        png = plot_losses(self.dir) if plot else None
        for sink in list(self.tb.sinks):
            if png is not None:
                trackers.guard(self.tb.sinks, sink, "artifact", png)
        trackers.finish(self.tb.sinks, status)
        return png


class NullLogger:
    """What the ranks that do not own the logs use."""

    def step(self, *a, **k) -> None:
        pass

    def evaluation(self, *a, **k) -> None:
        pass

    def scalars(self, *a, **k) -> None:
        pass

    def close(self, **k) -> None:
        return None


def plot_losses(log_dir: Path) -> Path | None:
    """``loss.png``: training loss per iteration and validation loss per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_dir = Path(log_dir)
    train = read_losses(log_dir)
    if not train:
        return None
    evals: dict[str, list[tuple[int, float]]] = {}
    for r in read_evals(log_dir):
        evals.setdefault(r["domain"], []).append((r["iteration"], unhex(r["loss"])))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot([r["iteration"] for r in train], [unhex(r["loss"]) for r in train], label="train", lw=1)
    for domain, points in sorted(evals.items()):
        ax.plot(*zip(*points), marker="o", lw=1, label=f"valid: {domain}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = log_dir / PLOT
    fig.savefig(out)
    plt.close(fig)
    return out
