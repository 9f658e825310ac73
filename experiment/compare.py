"""``experiment compare A B``: what differs between two runs and how far their losses drift apart.

A and B are training folders (their ``run.lock.json`` when present, else their config, data and logs) or
lockfiles. Named: config keys (``--set`` overrides included), blend weight per shard, data signatures,
environment versions, the kit's code, and whether they train the same model at all. Then the per-step
losses: the first step that differs, the largest absolute and relative difference, a PNG of both curves
and their difference. ``reproduce`` asks "are these the same bytes"; ``compare`` also answers "are these
the same within ``--rtol``", which is what a non-deterministic run (bf16 on GPUs, atomics) can promise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiment import runlog
from experiment.errors import KitError
from experiment.lock import lockfile
from experiment.lock.verify import NUMERIC_ENV, dict_diff


class CompareError(KitError):
    """An input that is neither a training folder nor a lockfile, with the fix."""


@dataclass
class RunRecord:
    """One side of a comparison, in the lockfile's shapes whatever it was read from."""

    label: str
    config: dict
    model: dict
    base: str | None
    blend: dict[str, float]
    signatures: dict[str, str]
    environment: dict | None
    kit: dict | None
    losses: list[tuple[int, float]]


@dataclass(frozen=True)
class Difference:
    area: str  # model | config | blend | signature | environment | code
    key: str
    a: str
    b: str


@dataclass
class LossComparison:
    steps: int  # steps both runs logged
    only_a: int
    only_b: int
    first_step: int | None = None  # first common step whose losses are not bit-identical
    first_a: float | None = None
    first_b: float | None = None
    max_abs: float = 0.0
    max_rel: float = 0.0
    max_step: int | None = None


@dataclass
class Comparison:
    a: RunRecord
    b: RunRecord
    differences: list[Difference] = field(default_factory=list)
    losses: LossComparison | None = None
    rtol: float | None = None
    plot: Path | None = None

    @property
    def different_models(self) -> list[Difference]:
        return [d for d in self.differences if d.area == "model"]

    @property
    def identical(self) -> bool:
        lc = self.losses
        return lc is not None and lc.steps > 0 and lc.first_step is None and not lc.only_a and not lc.only_b

    @property
    def agree(self) -> bool:
        """Same model, the same steps, and the losses bit-identical or within ``rtol`` everywhere."""
        lc = self.losses
        if self.different_models or lc is None or not lc.steps or lc.only_a or lc.only_b:
            return False
        return lc.first_step is None or (self.rtol is not None and lc.max_rel <= self.rtol)


def _unhex(v: Any) -> float:
    return float.fromhex(v) if isinstance(v, str) else float(v)


def _plain(lock) -> dict:
    """The lock as plain JSON data (``lockfile.read`` gives a typed ``RunLock``)."""
    return lock.model_dump(mode="json") if hasattr(lock, "model_dump") else dict(lock)


def _from_lock(lock, label: str, losses: list[tuple[int, float]] | None = None) -> RunRecord:
    lock = _plain(lock)
    cfg = lock["config"]
    base = lock.get("base_checkpoint")
    steps = losses if losses is not None else [(int(r[0]), _unhex(r[1])) for r in lock["outputs"]["losses"]["steps"]
                                                if r[1] is not None]
    return RunRecord(
        label=label, config={"overrides": cfg.get("overrides", []), **cfg["experiment"]}, model=cfg["model_shape"],
        base=base["hash"] if base else None,
        blend={n: w for n, w in lock["data"]["blend"].get("entries", [])},
        signatures={k: v["canonical_hash"] for k, v in lock["signatures"].items()},
        environment=lock["environment"], kit=lock["kit"], losses=steps)


def _folder_losses(folder: Path) -> list[tuple[int, float]]:
    rows = runlog.read_losses(folder / runlog.LOGS)
    return [(r["iteration"], _unhex(r["loss"])) for r in rows if r.get("loss") is not None]


def load_run(path: str | Path) -> RunRecord:
    """A training folder (its lockfile when the run wrote one) or a ``run.lock.json``."""
    from experiment.folder import CONFIG_NAME, FolderError, load_schema

    path = Path(path)
    if path.is_file():
        try:
            return _from_lock(lockfile.read_lock(path), str(path))
        except lockfile.LockError as err:
            raise CompareError(f"{err}; fix: give a training folder or its run.lock.json") from err
    if not (path / CONFIG_NAME).is_file():
        raise CompareError(f"{path}: neither a training folder ({CONFIG_NAME}) nor a lockfile; "
                           "fix: give training/<name> or training/<name>/run.lock.json")
    lock_path = path / lockfile.LOCK_NAME
    if lock_path.is_file():  # the lock's config and data, the folder's logs (a stopped run has no final lock)
        losses = _folder_losses(path)
        return _from_lock(lockfile.read_lock(lock_path), str(path), losses or None)
    try:
        folder = load_schema(path, require_artifacts=False)
    except FolderError as err:
        raise CompareError(str(err)) from err
    blend = lockfile.blend_section(folder)
    cfg = lockfile.config_section(folder, None)
    base = lockfile.base_checkpoint_section(folder) if folder.resolve(
        folder.config.checkpoint.base or ".").is_dir() else None
    return RunRecord(
        label=str(path), config={"overrides": cfg["overrides"], **cfg["experiment"]}, model=cfg["model_shape"],
        base=base["hash"] if base else None, blend={n: w for n, w in blend.get("entries", [])},
        signatures={k: v["canonical_hash"] for k, v in lockfile.signatures_section(folder).items()},
        environment=None, kit=None, losses=_folder_losses(path))


def differences(a: RunRecord, b: RunRecord) -> list[Difference]:
    """Everything that differs between the two runs' inputs, most fundamental first."""
    out: list[Difference] = []
    for line in dict_diff(a.model, b.model):
        key, _, change = line.partition(": ")
        out.append(Difference("model", f"shape.{key}", *_sides(change)))
    if a.base != b.base:
        out.append(Difference("model", "base checkpoint weights", str(a.base), str(b.base)))
    for line in dict_diff(a.config, b.config):
        key, _, change = line.partition(": ")
        out.append(Difference("config", key, *_sides(change)))
    for shard in sorted(set(a.blend) | set(b.blend)):
        wa, wb = a.blend.get(shard), b.blend.get(shard)
        if wa != wb:
            out.append(Difference("blend", shard, "absent" if wa is None else f"{wa:.6g}",
                                  "absent" if wb is None else f"{wb:.6g}"))
    for sig in sorted(set(a.signatures) | set(b.signatures)):
        if a.signatures.get(sig) != b.signatures.get(sig):
            out.append(Difference("signature", sig, str(a.signatures.get(sig, "absent")),
                                  str(b.signatures.get(sig, "absent"))))
    if a.environment is not None and b.environment is not None:
        ea, eb = a.environment, b.environment
        for key in (*NUMERIC_ENV, "python", "containerized"):
            if ea.get(key) != eb.get(key):
                out.append(Difference("environment", key, str(ea.get(key)), str(eb.get(key))))
        da, db = ea.get("distributions", {}), eb.get("distributions", {})
        for name in sorted(set(da) | set(db)):
            if da.get(name) != db.get(name) and name not in NUMERIC_ENV:
                out.append(Difference("environment", f"distribution {name}", str(da.get(name)), str(db.get(name))))
    if a.kit is not None and b.kit is not None:
        for key in ("source_hash", "commit", "dirty_diff_hash"):
            if a.kit.get(key) != b.kit.get(key):
                out.append(Difference("code", key, str(a.kit.get(key)), str(b.kit.get(key))))
    return out


def _sides(change: str) -> tuple[str, str]:
    if " -> " in change:
        left, right = change.split(" -> ", 1)
        return left, right
    return (change, "absent") if change.startswith("removed") else ("absent", change)


def compare_losses(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> LossComparison:
    """Step-aligned: the first step whose losses differ in any bit, the largest |a-b| and |a-b|/|a|."""
    da, db = dict(a), dict(b)
    common = sorted(set(da) & set(db))
    lc = LossComparison(len(common), len(set(da) - set(db)), len(set(db) - set(da)))
    for step in common:
        x, y = da[step], db[step]
        if x == y:
            continue
        if lc.first_step is None:
            lc.first_step, lc.first_a, lc.first_b = step, x, y
        diff = abs(x - y)
        rel = diff / abs(x) if x else float("inf")
        if rel > lc.max_rel or (rel == lc.max_rel and diff > lc.max_abs):
            lc.max_step = step
        lc.max_abs, lc.max_rel = max(lc.max_abs, diff), max(lc.max_rel, rel)
    return lc


def plot(a: RunRecord, b: RunRecord, out: Path) -> Path | None:
    """Both loss curves and their difference per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not a.losses and not b.losses:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), dpi=100, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    for run, style, name in ((a, "-", "A"), (b, "--", "B")):
        if run.losses:
            top.plot(*zip(*run.losses), style, lw=1.2, label=f"{name}: {run.label[-60:]}")
    top.set_ylabel("train loss")
    top.grid(alpha=0.3)
    top.legend()
    db = dict(b.losses)
    diff = [(s, db[s] - x) for s, x in a.losses if s in db]
    if diff:
        bottom.plot(*zip(*diff), lw=1, color="tab:red")
    bottom.axhline(0, color="black", lw=0.5)
    bottom.set_ylabel("B - A")
    bottom.set_xlabel("iteration")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def compare(a_path: str | Path, b_path: str | Path, *, rtol: float | None = None,
            plot_path: Path | None = None) -> Comparison:
    a, b = load_run(a_path), load_run(b_path)
    result = Comparison(a, b, differences(a, b), compare_losses(a.losses, b.losses), rtol)
    if plot_path is not None:
        result.plot = plot(a, b, plot_path)
    return result


def verdict(c: Comparison) -> str:
    lc = c.losses
    if c.different_models:
        return "different models: " + "; ".join(f"{d.key} {d.a} vs {d.b}" for d in c.different_models[:4])
    if lc is None or not lc.steps:
        return "no common steps to compare (did both runs log losses?)"
    if c.identical:
        return f"identical: {lc.steps} step(s) of losses bit for bit"
    extra = f" ({lc.only_a} step(s) only in A, {lc.only_b} only in B)" if lc.only_a or lc.only_b else ""
    if lc.first_step is None:
        return f"the {lc.steps} common step(s) are identical{extra}"
    head = (f"first differing step {lc.first_step} ({lc.first_a!r} vs {lc.first_b!r}); max abs diff "
            f"{lc.max_abs:.3g}, max rel diff {lc.max_rel:.3g} (step {lc.max_step}){extra}")
    if c.rtol is not None:
        return ("within" if c.agree else "NOT within") + f" rtol {c.rtol:g}: " + head
    return head


def print_comparison(c: Comparison, console) -> None:
    from rich.table import Table

    if c.differences:
        table = Table(title=f"{len(c.differences)} difference(s): A = {c.a.label}, B = {c.b.label}")
        for col in ("area", "what", "A", "B"):
            table.add_column(col, overflow="fold")
        for d in c.differences:
            table.add_row(d.area, d.key, d.a, d.b)
        console.print(table)
    else:
        console.print(f"same config, blend, data signatures{', environment and code' if c.a.kit else ''}")
    style = "green" if c.agree else "red"
    console.print(f"[{style}]{verdict(c)}[/{style}]", soft_wrap=True)
    if c.plot:
        console.print(f"loss curves: {c.plot}")


def register(app) -> None:
    import typer
    from rich.console import Console

    @app.command("compare")
    def compare_cmd(
        a: Path = typer.Argument(..., help="training folder or run.lock.json (A)"),
        b: Path = typer.Argument(..., help="training folder or run.lock.json (B)"),
        rtol: float | None = typer.Option(None, "--rtol", min=0.0,
                                          help="accept losses within this relative difference (non-deterministic runs)"),
        plot_path: Path = typer.Option(Path("compare.png"), "--plot", help="PNG of both loss curves"),
    ) -> None:
        """What differs between two runs (config, blend, data, environment, code) and their per-step losses.
        Exit 0 when the losses are identical (or within --rtol), 1 otherwise."""
        console = Console(stderr=True)
        try:
            result = compare(a, b, rtol=rtol, plot_path=plot_path)
        except CompareError as err:
            console.print(f"[red]error[/red] {err}", soft_wrap=True)
            raise typer.Exit(2)
        print_comparison(result, console)
        raise typer.Exit(0 if result.agree else 1)
