"""Experiment trackers as metric sinks beside TensorBoard: MLflow (a local SQLite store by default, which
``mlflow ui --backend-store-uri sqlite:///logs/mlflow.db`` opens) and Weights & Biases (offline by default:
compute nodes often have no network; ``wandb sync logs/wandb/offline-run-*`` later from a login node).

Each sink receives exactly the scalars TensorBoard gets (same tags, same steps) and the run's config and
lockfile as artifacts. Only the rank that owns the logs creates sinks. A tracker that cannot start (not
installed, URI unreachable) is named once on stderr and the run goes on with TensorBoard; one that fails
mid-run is named once and dropped. No credential is ever passed through or written by the kit: MLflow and
W&B read their own environment variables, and the kit records none of them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Protocol

STATE_NAME = "tracking.json"  # logs/tracking.json: run ids, so a resumed run and the lockfile go to the same run
INSTALL = "pip install 'midtrain-kit[tracking]' (or: pip install mlflow wandb)"


class Sink(Protocol):
    name: str

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def artifact(self, path: Path) -> None: ...

    def close(self, status: str) -> None: ...


def _say(message: str) -> None:
    print(f"[experiment.train] {message}", file=sys.stderr, flush=True)


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= _flat(v, key + ".")
        else:
            out[key] = json.dumps(v) if not isinstance(v, str) else v
    return out


def mlflow_uri(folder) -> str:
    """The configured URI, a relative ``sqlite:///`` path taken relative to the folder; default:
    ``sqlite:///<folder>/logs/mlflow.db``."""
    uri = folder.config.tracking.mlflow_tracking_uri
    if uri is None:
        return f"sqlite:///{(folder.path / 'logs' / 'mlflow.db').as_posix()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(folder.path / uri.removeprefix('sqlite:///')).resolve().as_posix()}"
    return uri


class MLflowSink:
    name = "MLflow"

    def __init__(self, folder, log_dir: Path, state: dict, resume: bool):
        from mlflow.tracking import MlflowClient

        self.uri = mlflow_uri(folder)
        self.client = MlflowClient(tracking_uri=self.uri)
        tr = folder.config.tracking
        exp_name = tr.mlflow_experiment or folder.config.name
        # a short probe: an unreachable server must not hold the run for MLflow's minutes of retries
        probe = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
        saved = {k: os.environ.get(k) for k in probe}
        os.environ.update(probe)
        try:
            exp = self.client.get_experiment_by_name(exp_name)
            if exp is None:
                location = None
                if self.uri.startswith("sqlite:"):  # artifacts beside the database, not in the cwd's ./mlruns
                    location = (log_dir / "mlartifacts").resolve().as_uri()
                exp_id = self.client.create_experiment(exp_name, artifact_location=location)
            else:
                exp_id = exp.experiment_id
            run_id = state.get("mlflow_run_id") if resume else None
            if run_id is None:
                run = self.client.create_run(exp_id, run_name=folder.config.name,
                                             tags={"midtrain-kit.folder": folder.config.name})
                run_id = run.info.run_id
            else:
                self.client.update_run(run_id, status="RUNNING")
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        self.run_id = state["mlflow_run_id"] = run_id
        if not resume:
            from mlflow.entities import Param

            params = [Param(k[:250], v[:6000]) for k, v in sorted(_flat(folder.config.model_dump(mode="json")).items())]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status in ("finished", "stopped") else "KILLED")


class WandbSink:
    name = "W&B"

    def __init__(self, folder, log_dir: Path, state: dict, resume: bool):
        import wandb

        tr = folder.config.tracking
        run_id = state.get("wandb_run_id") if resume else None
        self.run = wandb.init(project=tr.wandb_project or folder.config.name, entity=tr.wandb_entity,
                              name=folder.config.name, dir=str(log_dir), mode=tr.wandb_mode, id=run_id,
                              resume="allow" if run_id else None, config=folder.config.model_dump(mode="json"),
                              settings=wandb.Settings(console="off", save_code=False, x_disable_meta=True,
                                                      x_disable_stats=True, quiet=True))
        state["wandb_run_id"] = self.run.id
        self.dir = Path(self.run.dir)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def artifact(self, path: Path) -> None:
        import shutil

        shutil.copy2(path, self.dir / path.name)  # files/ of the run: synced with it
        self.run.save(str(self.dir / path.name), base_path=str(self.dir), policy="now")

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status in ("finished", "stopped") else 1)


SINKS = {"mlflow": MLflowSink, "wandb": WandbSink}


def _read_state(log_dir: Path) -> dict:
    p = log_dir / STATE_NAME
    return json.loads(p.read_text()) if p.is_file() else {}


def _write_state(log_dir: Path, state: dict) -> None:
    from experiment.atomic import write_atomic

    write_atomic(log_dir / STATE_NAME, json.dumps(state, indent=1, sort_keys=True) + "\n")


def start(folder, log_dir: Path, resume: bool) -> list[Sink]:
    """The sinks the folder's ``[tracking]`` asks for that could start (each failure named once)."""
    if folder is None:
        return []
    tr = folder.config.tracking
    wanted = [n for n in SINKS if getattr(tr, n)]
    if not wanted:
        return []
    state = _read_state(log_dir)
    sinks: list[Sink] = []
    for name in wanted:
        try:
            sinks.append(SINKS[name](folder, log_dir, state, resume))
        except ModuleNotFoundError as err:
            _say(f"WARNING: tracking.{name} = true but {err.name} is not installed; going on with TensorBoard "
                 f"only. fix: {INSTALL}")
        except Exception as err:  # noqa: BLE001 -- any tracker failure must leave the run going
            _say(f"WARNING: tracking.{name}: {SINKS[name].name} could not start ({type(err).__name__}: "
                 f"{str(err).splitlines()[0][:300] if str(err) else ''}); going on with TensorBoard only. fix: check "
                 f"tracking.{name}_* in experiment.toml (see docs/tracking.md)")
    if sinks:
        _write_state(log_dir, state)
        config = log_dir / "config.json"
        from experiment.atomic import write_atomic

        write_atomic(config, json.dumps({"overrides": list(folder.overrides),
                                         **folder.config.model_dump(mode="json")}, indent=1, sort_keys=True) + "\n")
        toml = folder.path / "experiment.toml"
        for sink in list(sinks):
            for path in (toml, config):
                guard(sinks, sink, "artifact", path)
    return sinks


def guard(sinks: list[Sink], sink: Sink, method: str, *args) -> None:
    """Call a sink; on failure name it once and drop it (the run goes on)."""
    if sink not in sinks:
        return
    try:
        getattr(sink, method)(*args)
    except Exception as err:  # noqa: BLE001
        sinks.remove(sink)
        _say(f"WARNING: {sink.name} failed ({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''})"
             "; no more metrics go to it, TensorBoard goes on")


def emit(sinks: list[Sink], step: int, values: dict[str, float]) -> None:
    for sink in list(sinks):
        guard(sinks, sink, "scalars", step, values)


def finish(sinks: list[Sink], status: str) -> None:
    for sink in list(sinks):
        guard(sinks, sink, "close", status)


def log_lockfile(folder, lock_path: Path) -> None:
    """After the run (the lockfile is written once torchrun has exited): attach ``run.lock.json`` to the
    same tracker runs, found through ``logs/tracking.json``."""
    log_dir = folder.path / "logs"
    state = _read_state(log_dir)
    tr = folder.config.tracking
    if tr.mlflow and state.get("mlflow_run_id"):
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=mlflow_uri(folder)).log_artifact(state["mlflow_run_id"], str(lock_path))
        except Exception as err:  # noqa: BLE001
            _say(f"WARNING: MLflow: the lockfile was not attached ({type(err).__name__})")
    if tr.wandb and state.get("wandb_run_id"):
        try:
            sink = WandbSink(folder, log_dir, state, resume=True)
            sink.artifact(lock_path)
            sink.close("finished")
        except Exception as err:  # noqa: BLE001
            _say(f"WARNING: W&B: the lockfile was not attached ({type(err).__name__})")
