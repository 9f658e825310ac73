"""``experiment report FOLDER``: one self-contained ``report.html`` of a run, to mail or attach to a ticket.

Mixture chart and table, training and held-out loss curves, throughput, the lm-eval table and gain plot of
``experiment eval`` where it ran, the lockfile's summary and the verdict of the last ``experiment reproduce``
where there is one. Every image is a PNG inlined as base64
and the page has no script and no external reference, so it opens anywhere, offline, as one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from experiment import runlog
from experiment.atomic import write_atomic
from experiment.folder import TrainingFolder, load_schema

REPORT_NAME = "report.html"
REPRODUCE_NAME = "reproduce.json"  # logs/reproduce.json, written by `experiment reproduce`

CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;display:block;margin:.6em 0}
.ok{color:#176f2c;font-weight:bold}.bad{color:#b00020;font-weight:bold}code{background:#f4f4f4;padding:0 .2em}"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(head: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{html.escape(str(v))}</td>'
                                    for i, v in enumerate(r)) + "</tr>")
    return "".join(out) + "</table>"


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _mixture(folder: TrainingFolder) -> str:
    from experiment.mixture import report as mreport
    from experiment.mixture.plan import plan_folder

    try:
        plan = plan_folder(folder)
    except Exception as err:  # noqa: BLE001 -- the report shows what it can
        return f"<p>The mixture cannot be planned here: {html.escape(str(err).splitlines()[0])}</p>"
    parts = [_img(mreport.chart_png(plan, folder.config.name), "mixture chart")]
    for title, key in (("domain", mreport.domain_of), ("language", mreport.language_of)):
        rows = mreport.group(plan, key)
        parts.append(_table([title, "shards", "tokens available", "tokens seen", "source %", "mix %", "epochs"],
                            [[r.key, r.shards, f"{r.available:,}", f"{r.seen:,}", f"{r.source_pct:.1f}",
                              f"{100 * r.weight:.2f}", f"{r.epochs:.2f}"] for r in rows], {1, 2, 3, 4, 5, 6}))
    return "".join(parts)


def _curves(folder: TrainingFolder) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiment.train.metrics import unhex

    logs = folder.path / runlog.LOGS
    train = runlog.read_losses(logs)
    if not train:
        return f"<p>No losses logged yet ({runlog.LOGS}/{runlog.LOSSES}).</p>"
    parts = []
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.plot([r["iteration"] for r in train], [unhex(r["loss"]) for r in train], lw=1)
    ax.set(xlabel="iteration", ylabel="train loss", title="training loss")
    ax.grid(alpha=0.3)
    parts.append(_img(_png(fig), "training loss"))
    evals: dict[str, list[tuple[int, float]]] = {}
    for r in runlog.read_evals(logs):
        evals.setdefault(r["domain"], []).append((r["iteration"], unhex(r["loss"])))
    if evals:
        fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
        for domain, points in sorted(evals.items()):
            ax.plot(*zip(*points), marker="o", lw=1, label=domain)
        ax.set(xlabel="iteration", ylabel="held-out loss", title="held-out loss per domain")
        ax.grid(alpha=0.3)
        ax.legend()
        parts.append(_img(_png(fig), "held-out loss per domain"))
        rows = [[d, pts[0][0], f"{pts[0][1]:.4f}", pts[-1][0], f"{pts[-1][1]:.4f}", f"{pts[-1][1] - pts[0][1]:+.4f}"]
                for d, pts in sorted(evals.items())]
        parts.append(_table(["domain", "first eval at", "loss", "last eval at", "loss", "change"], rows, {1, 2, 3, 4, 5}))
    return "".join(parts)


def _throughput(folder: TrainingFolder) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = folder.path / "logs" / "tensorboard"
    if not tb.is_dir():
        return "<p>No TensorBoard events.</p>"
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t.startswith("throughput/")]
    if not tags:
        return "<p>No throughput scalars logged.</p>"
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    rows = []
    for tag in sorted(tags):
        events = acc.Scalars(tag)
        ax.plot([e.step for e in events], [e.value for e in events], lw=1, label=tag.split("/", 1)[1])
        steady = [e.value for e in events[1:]] or [e.value for e in events]
        rows.append([tag, f"{sum(steady) / len(steady):,.1f}", f"{max(steady):,.1f}"])
    ax.set(xlabel="iteration", title="throughput (first step includes warm-up)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _img(_png(fig), "throughput") + _table(["scalar", "mean (after step 1)", "max"], rows, {1, 2})


def _lm_eval(folder: TrainingFolder) -> str | None:
    """``experiment eval``'s table and target-gain plot (None when it has not run on this folder)."""
    from experiment.evaluate.results import JSON_NAME, PNG_NAME

    out = folder.path / "logs" / "eval"
    if not (out / JSON_NAME).is_file():
        return None
    payload = json.loads((out / JSON_NAME).read_text())
    rows, targets = payload["rows"], set(payload.get("targets", []))
    domains = sorted({d for r in rows for d in r["ppl"]})
    langs = sorted({lang for r in rows for lang in r["mc"]})
    tasks = sorted({t for r in rows for t in r.get("tasks", {})})
    fmt = lambda v: "" if v is None else f"{v:+.4f}"  # noqa: E731
    table = [[r["label"], *[f"{r['ppl'][d]:.3f}" if d in r["ppl"] else "" for d in domains],
              *[f"{r['mc'][lang]:.3f}" if lang in r["mc"] else "" for lang in langs],
              *[f"{next(iter(r['tasks'][t].values())):.4g}" if r.get("tasks", {}).get(t) else "" for t in tasks],
              fmt(r.get("gain")), fmt(r.get("replay_loss"))] for r in rows]
    head = ["checkpoint", *[f"ppl {d}{' *' if d in targets else ''}" for d in domains],
            *[f"mc acc {lang}" for lang in langs], *tasks, "target gain", "replay loss"]
    png = out / PNG_NAME
    note = (f"<p>Held-out perplexity per domain (* target), multiple-choice accuracy per language; gain and loss "
            f"in nats/token against {html.escape(payload.get('reference', rows[0]['label']))}.</p>")
    return note + _table(head, table, set(range(1, len(head)))) + \
        (_img(png.read_bytes(), "target gain vs replay loss") if png.is_file() else "")


def _lock(folder: TrainingFolder) -> str:
    from experiment.lock import lockfile
    from experiment.lock.hashing import hash_file

    path = folder.path / lockfile.LOCK_NAME
    if not path.is_file():
        return "<p>No run.lock.json: the run has not finished, or ran without the lock module.</p>"
    lock = lockfile.read_lock(path)
    lock = lock.model_dump(mode="json") if hasattr(lock, "model_dump") else lock
    env, kit = lock["environment"], lock["kit"]
    base = lock.get("base_checkpoint")
    rows = [
        ["lockfile", f"run.lock.json (blake3 {hash_file(path, 'blake3')})"],
        ["kit", f"{kit.get('version')} commit {kit.get('commit')}{' (dirty)' if kit.get('dirty') else ''}"],
        ["environment", ("image " + str((env.get('image') or {}).get('ref')) if env.get("containerized") else "host")
         + f"; python {env.get('python')}, torch {env.get('torch')}, megatron-core {env.get('megatron_core')}"],
        ["data", f"{len(lock['data']['shards'])} shard(s) from " + ", ".join(
            f"{v['name']} ({v['shards']})" for v in lock["signatures"].values())],
        ["base checkpoint", f"{base['path']} ({base['hash'][:16]}...)" if base else "none (from scratch)"],
        ["overrides", " ".join(f"--set {o}" for o in lock["config"].get("overrides", [])) or "none"],
        ["steps locked", str(len(lock["outputs"]["losses"]["steps"]))],
        ["checkpoints", ", ".join(sorted(lock["outputs"]["checkpoints"])) or "none"],
    ]
    return _table(["what", "value"], rows)


def _reproduce(folder: TrainingFolder) -> str:
    path = folder.path / "logs" / REPRODUCE_NAME
    if not path.is_file():
        return "<p>Not reproduced yet: <code>experiment reproduce run.lock.json</code>.</p>"
    v = json.loads(path.read_text())
    cls = "ok" if v.get("reproduced") else "bad"
    return f'<p class="{cls}">{html.escape(v.get("verdict", ""))}</p>' + _table(
        ["compared", "result"], [[k, v[k]] for k in ("losses", "checkpoints", "lockfile") if k in v])


def build(folder: TrainingFolder) -> str:
    cfg = folder.config
    status = runlog.read_status(folder.path / runlog.LOGS)
    head = [["state", status.get("state", "not run")],
            ["iterations", f"{status.get('iteration', 0)}/{status.get('train_iters', '?')}"],
            ["final train loss", f"{float.fromhex(status['final_loss']):.4f}" if status.get("final_loss") else "-"],
            ["model", f"{cfg.model.preset}, sequence {cfg.model.seq_length}"],
            ["batch", f"{cfg.training.global_batch_size} x {cfg.model.seq_length} tokens, lr {cfg.training.lr:g}"]]
    sections = [("Run", _table(["what", "value"], head)), ("Mixture", _mixture(folder)),
                ("Loss and held-out evaluation", _curves(folder)), ("Throughput", _throughput(folder)),
                ("Lockfile", _lock(folder)), ("Reproduction", _reproduce(folder))]
    evaluated = _lm_eval(folder)
    if evaluated is not None:
        sections.insert(3, ("lm-eval on the checkpoints", evaluated))
    body = "".join(f"<h2>{html.escape(t)}</h2>{s}" for t, s in sections)
    title = f"midtrain-kit run report: {cfg.name}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>'
            f"<p>{html.escape(cfg.description)}</p>{body}</body></html>\n")


def write_report(folder: TrainingFolder, out: Path | None = None) -> Path:
    path = out or folder.path / REPORT_NAME
    write_atomic(path, build(folder))
    return path


def register(app) -> None:
    import typer
    from rich.console import Console

    @app.command("report")
    def report_cmd(folder: Path = typer.Argument(..., help="training folder, e.g. training/demo"),
                   out: Path | None = typer.Option(None, "--out", help="default: FOLDER/report.html")) -> None:
        """One self-contained report.html: mixture, loss and eval curves, throughput, lockfile, reproduce verdict."""
        from experiment.folder import FolderError

        console = Console(stderr=True)
        try:
            loaded = load_schema(folder, require_artifacts=False)
        except FolderError as err:
            console.print(f"error: {err}", soft_wrap=True, markup=False)
            raise typer.Exit(2)
        console.print(f"report: {write_report(loaded, out)}")
