"""MLflow (SQLite store) and W&B (offline) mirror the TensorBoard scalars of a real run, tag for tag and step
for step; config and lockfile are their artifacts; no credential reaches any file; a tracker that cannot start
is named once and the run goes on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.tracking.conftest import SECRETS
from tests.tracking.wandb_offline import scalars

pytestmark = pytest.mark.slow


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "logs" / "tensorboard"))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _same(tb: dict[str, dict[int, float]], other: dict[str, dict[int, float]]) -> None:
    assert set(tb) == set(other), set(tb) ^ set(other)
    for tag, points in tb.items():
        assert set(points) == set(other[tag]), tag
        for step, value in points.items():  # TensorBoard stores float32
            assert np.float32(other[tag][step]) == np.float32(value), (tag, step, value, other[tag][step])


def test_mlflow_sqlite_run_equals_tensorboard(three_runs):
    import mlflow
    from mlflow.tracking import MlflowClient

    folder = three_runs["b"]
    uri = f"sqlite:///{folder / 'logs' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny-lock"])
    assert len(runs) == 1 and runs.loc[0, "status"] == "FINISHED"
    assert runs.loc[0, "params.training.lr"] == "0.002" and runs.loc[0, "params.tracking.mlflow"] == "true"
    client = MlflowClient(uri)
    run_id = runs.loc[0, "run_id"]
    tb = tensorboard_scalars(folder)
    assert {"train/loss", "train/lr", "train/grad_norm", "throughput/tokens_per_s"} <= set(tb)
    assert any(t.startswith("valid/") and t.endswith("/loss") for t in tb)  # per-domain eval
    logged = {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in client.get_run(run_id).data.metrics}
    _same(tb, logged)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"experiment.toml", "config.json", "run.lock.json", "loss.png"} <= artifacts


def test_wandb_offline_files_equal_tensorboard(three_runs):
    folder = three_runs["b"]
    runs = sorted((folder / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2  # the training run, then the lockfile attached to the same run id
    assert len({r.name.rsplit("-", 1)[1] for r in runs}) == 1
    _same(tensorboard_scalars(folder), scalars(next(runs[0].glob("run-*.wandb"))))
    assert (runs[0] / "files" / "experiment.toml").is_file() and (runs[1] / "files" / "run.lock.json").is_file()


def test_no_credential_reaches_a_log_a_config_or_the_lock(three_runs):
    folder = three_runs["b"]
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any(p.suffix == ".wandb" for p in files)
    assert any(p.name == "run.lock.json" for p in files) and any(p.name == "run.out" for p in files)
    for p in files:
        data = p.read_bytes()
        for secret in SECRETS.values():
            assert secret.encode() not in data, f"{secret} written to {p}"


def _start(folder: Path, sets: tuple[str, ...], block: str = "") -> subprocess.CompletedProcess:
    code = (f"{block}\nfrom pathlib import Path\nfrom experiment.folder import load_schema\nfrom experiment.train import trackers\n"
            f"f = load_schema(Path({str(folder)!r}), require_artifacts=False, overrides={sets!r})\n"
            "s = trackers.start(f, Path(f.path) / 'logs-probe', resume=False)\nprint('SINKS', [x.name for x in s])\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_tracker_that_cannot_start_is_named_once_and_the_run_goes_on(three_runs):
    folder = three_runs["a"]
    res = _start(folder, ("tracking.mlflow=true", "tracking.mlflow_tracking_uri='http://127.0.0.1:9'"))
    assert "SINKS []" in res.stdout, res.stderr[-3000:]
    assert res.stderr.count("tracking.mlflow: MLflow could not start") == 1 and "TensorBoard only" in res.stderr
    # wandb absent from the environment (a None entry in sys.modules is how Python marks a module unimportable)
    res = _start(folder, ("tracking.wandb=true",), "import sys; sys.modules['wandb'] = None")
    assert "SINKS []" in res.stdout, res.stderr[-3000:]
    assert res.stderr.count("wandb is not installed") == 1 and "pip install" in res.stderr


def test_credentials_in_the_uri_are_refused(three_runs):
    from experiment.folder import FolderError, load_schema

    with pytest.raises(FolderError, match="carries credentials.*MLFLOW_TRACKING_TOKEN"):
        load_schema(three_runs["a"], require_artifacts=False,
             overrides=("tracking.mlflow_tracking_uri='https://me:pw@mlflow.example/'",))


def test_two_ranks_log_once_through_rank_zero(_project_template, tmp_path):
    """Data parallel over 2 torchrun ranks: one MLflow run and one W&B run, each step logged once (the other
    rank logs nothing), equal to TensorBoard."""
    import mlflow

    from tests.tracking.conftest import run_cli

    shutil.copytree(_project_template, tmp_path / "p", symlinks=True)
    folder = tmp_path / "p" / "training" / "tiny"
    sets = ("launch.nproc_per_node=2", "tracking.mlflow=true", "tracking.wandb=true")
    r = run_cli("run", str(folder), *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    lock = json.loads((folder / "run.lock.json").read_text())
    assert lock["launch"]["world_size"] == 2 and lock["launch"]["data_parallel"] == 2
    uri = f"sqlite:///{folder / 'logs' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny-lock"])
    assert len(runs) == 1 and runs.loc[0, "status"] == "FINISHED"
    client = mlflow.tracking.MlflowClient(uri)
    losses = [m.step for m in client.get_metric_history(runs.loc[0, "run_id"], "train/loss")]
    assert sorted(losses) == [1, 2, 3, 4]  # once per step, not once per rank
    wandb_runs = sorted((folder / "logs" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and len({w.name.rsplit("-", 1)[1] for w in wandb_runs}) == 1  # training + lock
    _same(tensorboard_scalars(folder), scalars(next(wandb_runs[0].glob("run-*.wandb"))))
