"""Run metrics under ``<folder>/logs/``: TensorBoard scalars, exact per-step JSONL, a PNG loss curve.

``losses.jsonl`` and ``eval.jsonl`` hold only values that a repeated run must reproduce (iteration,
consumed samples, loss, lr, grad norm), floats written as ``float.hex`` so two runs compare byte for
byte; timings (tokens/s) go to TensorBoard only. On resume both files are cut back to the resumed
iteration, so a killed-and-restarted run ends with the same files as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

LOSSES = "losses.jsonl"
EVALS = "eval.jsonl"
PLOT = "loss.png"


def _hex(x: float | None) -> str | None:
    return None if x is None else float(x).hex()


def unhex(x: str | None) -> float | None:
    return None if x is None else float.fromhex(x)


def _truncate_jsonl(path: Path, keep_through: int) -> None:
    """Drop the records of iterations after ``keep_through`` (work a killed run did past its checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True)
            if line.strip() and json.loads(line)["iteration"] <= keep_through]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)


class MetricsLogger:
    """Writes the run's metrics; only the rank that owns the logs creates one (others use ``NullLogger``)."""

    def __init__(self, log_dir: Path, start_iteration: int):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in (LOSSES, EVALS):
            if start_iteration == 0:
                (self.dir / name).unlink(missing_ok=True)
            else:
                _truncate_jsonl(self.dir / name, start_iteration)
        self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_iteration + 1)
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

    def close(self, *, plot: bool = True) -> Path | None:
        self._losses.close()
        self._evals.close()
        self.tb.flush()
        self.tb.close()
        return plot_losses(self.dir) if plot else None


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


def read_losses(log_dir: Path) -> list[dict]:
    path = Path(log_dir) / LOSSES
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


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
    if (log_dir / EVALS).is_file():
        for line in (log_dir / EVALS).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
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
