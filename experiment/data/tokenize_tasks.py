"""``experiment data tokenize --tasks N``: the inputs shared out over N datatrove tasks, run as local
processes or as a Slurm job array.

Why: one process encodes on all cores, but its line check and shard writers are Python threads, so past a
few dozen cores they, not the encoders, set the pace (seed 002: "even with 128 core cpu nodes, the
tokenization becomes slower"), and one process never uses a second node. datatrove's executors already
run a step as N tasks on local processes (``LocalPipelineExecutor``) or as a Slurm array
(``SlurmPipelineExecutor``), with per-task logs; the kit adds no scheduler of its own. Each task runs the
ordinary tokenizer on its share of the inputs with the split ids of the whole run, so the shards are
byte-for-byte those of one process, and a re-run (or a requeued task) redoes only unfinished shards.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from experiment.atomic import write_atomic
from experiment.data import tokenize
from experiment.data.errors import DataError
from experiment.data.tokenize_config import TokenizeConfig, input_names
from experiment.data.tokenize_output import OutputIndex
from experiment.data.tokenize_report import ShardResult, TokenizeReport
from experiment.data.tokenizer_spec import resolve_tokenizer

LOGS = ".tokenize-tasks"  # under the output folder: datatrove's logs and each task's report


def assign(inputs: list[Path], sizes: list[int], tasks: int) -> list[list[Path]]:
    """Each task's inputs: largest first onto the task with the fewest bytes so far (lowest rank on a tie),
    each share in input order. Deterministic, so every task computes the same split."""
    loads = [0] * tasks
    shares: list[list[int]] = [[] for _ in range(tasks)]
    for i in sorted(range(len(inputs)), key=lambda i: (-sizes[i], i)):
        rank = min(range(tasks), key=lambda r: (loads[r], r))
        loads[rank] += sizes[i]
        shares[rank].append(i)
    return [[inputs[i] for i in sorted(share)] for share in shares]


@dataclass(frozen=True)
class SlurmOptions:
    """What ``SlurmPipelineExecutor`` needs beyond the step (see ``experiment data tokenize --help``)."""

    partition: str | None = None
    time: str = "04:00:00"
    cpus_per_task: int = 16
    mem_per_cpu_gb: float = 2.0
    env_command: str | None = None  # e.g. "source /opt/kit/.venv/bin/activate" (datatrove runs launch_pickled_pipeline)
    job_name: str = "tokenize"


class TokenizeShards(PipelineStep):
    """One task: ``tokenize.run`` on this rank's share of the inputs; its report kept for the summary."""

    name = "tokenize shards"
    type = "TOKENIZE"

    def __init__(self, cfg: TokenizeConfig, threads: int | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.threads = threads

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        import socket

        from datatrove.utils.logging import logger

        inputs, _ = input_names(self.cfg)
        share = assign(inputs, [p.stat().st_size for p in inputs], world_size)[rank]
        host = socket.gethostname()
        logger.info(f"task {rank}/{world_size} on host {host}: {len(share)} input file(s)")  # the task's log
        report = tokenize.run(replace(self.cfg, share=tuple(share), progress=False, threads=self.threads))
        _write_report(self.cfg.output, rank, report, host)
        yield from ()


def _reports_dir(output: Path) -> Path:
    return output / LOGS / "reports"


def _write_report(output: Path, rank: int, report: TokenizeReport, host: str = "") -> None:
    data = {"host": host, "backend_note": report.backend_note, "seconds": report.seconds, "cpu_seconds": report.cpu_seconds,
            "shards": [{k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()} for s in report.shards]}
    write_atomic(_reports_dir(output) / f"{rank:05d}.json", json.dumps(data, indent=1) + "\n")


def _read_reports(output: Path, tasks: int, seconds: float) -> TokenizeReport:
    shards, notes, cpu = [], set(), 0.0
    for rank in range(tasks):
        path = _reports_dir(output) / f"{rank:05d}.json"
        if not path.is_file():
            raise DataError(path, f"task {rank} left no report (it failed)", f"read its log under {output / LOGS / 'logs'} and re-run")
        data = json.loads(path.read_text())
        if data["shards"]:
            notes.add(data["backend_note"])
        cpu += data["cpu_seconds"]
        for s in data["shards"]:
            shards.append(ShardResult(**{k: Path(v) if k in ("input", "prefix") else v for k, v in s.items()}))
    shards.sort(key=lambda s: s.input)
    return TokenizeReport(" / ".join(sorted(notes)) or "nothing to do", shards, seconds, cpu)


class _FolderProgress:
    """A progress bar over the shards the tasks have finished: the output folder, listed twice a second
    (the tasks are other processes; their finished shards are what they share)."""

    def __init__(self, cfg: TokenizeConfig, inputs: list[Path], names: list, console) -> None:
        import threading

        self._sizes = {name.stem: path.stat().st_size for path, name in zip(inputs, names)}
        self._output = cfg.output
        self._stop = threading.Event()
        self._progress = tokenize.progress_bar(console)
        self._task = self._progress.add_task(f"tokenize ({len(inputs)} inputs)", total=sum(self._sizes.values()))
        self._thread = threading.Thread(target=self._poll, daemon=True, name="tasks-progress")

    def _done(self) -> int:
        index = OutputIndex(self._output)
        return sum(size for stem, size in self._sizes.items() if index.finished(stem) is not None)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self._progress.update(self._task, completed=self._done())

    def __enter__(self):
        self._progress.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._progress.__exit__(*exc)
        return False


def slurm_executor(cfg: TokenizeConfig, tasks: int, slurm: SlurmOptions):
    """datatrove's Slurm array for ``cfg``: ``tasks`` tasks, each with ``cpus_per_task`` threads."""
    from datatrove.executor import SlurmPipelineExecutor

    return SlurmPipelineExecutor(
        [TokenizeShards(cfg, slurm.cpus_per_task)], tasks=tasks, time=slurm.time, partition=slurm.partition,
        # datatrove writes f"{gb}G" and sbatch refuses "2.0G" (seen on a real Slurm): whole GB, rounded up
        cpus_per_task=slurm.cpus_per_task, mem_per_cpu_gb=math.ceil(slurm.mem_per_cpu_gb), job_name=slurm.job_name,
        env_command=slurm.env_command, logging_dir=str(cfg.output / LOGS), skip_completed=False,
    )


def run_tasks(cfg: TokenizeConfig, tasks: int, workers: int | None = None, executor: str = "local",
              slurm: SlurmOptions | None = None, console=None) -> TokenizeReport | None:
    """Tokenize ``cfg`` as ``tasks`` datatrove tasks. Local: ``workers`` processes at a time (default: one
    per core, up to ``tasks``), each with an equal part of the cores; returns the merged report. Slurm:
    submits the array (``slurm``: its options) and returns None; each task gets ``cpus_per_task`` threads."""
    import time

    if tasks < 1:
        raise DataError("--tasks", f"must be at least 1, not {tasks}", "pass --tasks 1 or more")
    if executor not in ("local", "slurm"):
        raise DataError("--executor", f"unknown executor {executor!r}", "use local or slurm")
    # Checked once, before any task starts: the inputs and their names, the tokenizer path.
    inputs, names = input_names(cfg)
    spec = resolve_tokenizer(cfg.tokenizer, cfg.eod_token)
    # The tasks get this list of files, not the folders: a file added before a (Slurm) task starts must not
    # change the split or the split ids the other tasks already used.
    cfg = replace(cfg, inputs=list(inputs))
    cfg.output.mkdir(parents=True, exist_ok=True)
    for stale in _reports_dir(cfg.output).glob("*.json"):
        stale.unlink()
    started = time.monotonic()
    if executor == "slurm":
        slurm_executor(cfg, tasks, slurm or SlurmOptions()).run()
        if console is not None:
            console.print(f"submitted {tasks} Slurm tasks for {len(inputs)} inputs ({spec.name}); logs in {cfg.output / LOGS}. "
                          "When they are done, the same command without --tasks prints the summary (every shard skipped).")
        return None
    from datatrove.executor import LocalPipelineExecutor

    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, tasks))
    threads = cfg.threads or max(1, cores // workers)
    # skip_completed=False: a rank's inputs follow from this run's inputs, not from a marker of the last run;
    # the tokenizer itself skips every shard already finished.
    local = LocalPipelineExecutor([TokenizeShards(cfg, threads)], tasks=tasks, workers=workers,
                                  logging_dir=str(cfg.output / LOGS), skip_completed=False)
    if cfg.progress and console is not None:
        with _FolderProgress(cfg, inputs, names, console):
            local.run()
    else:
        local.run()
    from experiment.summary import command_seconds

    return _read_reports(cfg.output, tasks, command_seconds(started))
