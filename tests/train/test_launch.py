"""Launchers: the torchrun command, Slurm/PBS job scripts (bash -n, the exact torchrun line), refusal."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from experiment.cli import app
from tests.train.corpus import make_folder

TORCHRUN = ('{python} -m torch.distributed.run --nnodes=2 --nproc-per-node=4 --rdzv-id="{id}" --rdzv-backend=c10d '
            '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" -m experiment.train.runner {folder}')


def _cluster_folder(tmp_path, corpus, launcher):
    folder = make_folder(tmp_path / "run", corpus, nproc=4, gbs=16)
    toml = folder / "experiment.toml"
    toml.write_text(toml.read_text().replace("[launch]\nnproc_per_node = 4", (
        f'[launch]\nlauncher = "{launcher}"\nnnodes = 2\nnproc_per_node = 4\npartition = "gpu"\n'
        'account = "abc"\nwalltime = "02:00:00"\n[image]\nflavor = "gpu"')))
    return folder


def test_slurm_script(tmp_path, corpus):
    folder = _cluster_folder(tmp_path, corpus, "slurm")
    res = CliRunner().invoke(app, ["run", str(folder), "--dry-run"])
    assert res.exit_code == 0, res.output
    script = folder / "launch" / "slurm.sh"
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], timeout=60).returncode == 0
    assert TORCHRUN.format(python=sys.executable, id="$SLURM_JOB_ID", folder=folder.resolve()) in text
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=8", "--cpus-per-task=8 \\", "-m experiment.launch.chain begin",
                 "-m experiment.launch.chain end", "#SBATCH --output=",
                 "#SBATCH --partition=gpu", "#SBATCH --account=abc", "#SBATCH --time=02:00:00",
                 "#SBATCH --signal=TERM@120", "export CUBLAS_WORKSPACE_CONFIG=:4096:8", "srun "):
        assert line in text, line
    assert text in res.output  # --dry-run prints what it wrote


def test_pbs_script(tmp_path, corpus):
    folder = _cluster_folder(tmp_path, corpus, "pbs")
    res = CliRunner().invoke(app, ["run", str(folder), "--dry-run"])
    assert res.exit_code == 0, res.output
    script = folder / "launch" / "pbs.sh"
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], timeout=60).returncode == 0
    assert TORCHRUN.format(python=sys.executable, id="$PBS_JOBID", folder=folder.resolve()) in text
    for line in ("#PBS -l select=2:ncpus=8:ngpus=4", "MIDTRAIN_JOB_END_TIME=$(( $(date +%s) + 7200 ))",
                 "-m experiment.launch.chain end", "#PBS -l walltime=02:00:00", "#PBS -q gpu", "#PBS -A abc",
                 "mpirun -np 2", "-x NCCL_ALGO", 'MASTER_ADDR="$(head -n 1 "$PBS_NODEFILE")"'):
        assert line in text, line


def test_slurm_script_in_the_image(tmp_path, corpus):
    folder = _cluster_folder(tmp_path, corpus, "slurm")
    res = CliRunner().invoke(app, ["run", str(folder), "--dry-run", "--container", "--image", "/sif/kit.sif"])
    assert res.exit_code == 0, res.output
    text = (folder / "launch" / "slurm.sh").read_text()
    assert "apptainer exec --nv" in text and f"{folder.resolve()}:{folder.resolve()}:rw" in text
    assert "/sif/kit.sif torchrun --nnodes=2" in text
    assert subprocess.run(["bash", "-n", str(folder / "launch" / "slurm.sh")], timeout=60).returncode == 0


def test_a_missing_sif_is_refused_at_submission_and_a_relative_one_made_absolute(tmp_path, corpus, monkeypatch):
    """A job whose image file is not there would fail on its node after queueing: submission refuses it,
    naming the option and the fix, and writes no job script. A relative .sif path is made absolute."""
    folder = _cluster_folder(tmp_path, corpus, "pbs")
    res = CliRunner().invoke(app, ["run", str(folder), "--container", "--image", str(tmp_path / "no" / "kit.sif")])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert f"--image: {tmp_path / 'no' / 'kit.sif'} is not a file here" in out and "docs/cluster.md" in out
    assert "Traceback" not in res.output and not (folder / "launch" / "pbs.sh").exists()
    (tmp_path / "kit.sif").write_bytes(b"not really an image")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", str(folder), "--dry-run", "--container", "--image", "kit.sif"])
    assert res.exit_code == 0, res.output
    assert f"{tmp_path / 'kit.sif'} torchrun --nnodes=2" in (folder / "launch" / "pbs.sh").read_text()
    # a URI is apptainer's to pull: passed as given
    res = CliRunner().invoke(app, ["run", str(folder), "--dry-run", "--container", "--image", "docker://r/kit:gpu"])
    assert res.exit_code == 0 and "docker://r/kit:gpu torchrun" in (folder / "launch" / "pbs.sh").read_text()


def test_local_dry_run_prints_the_exact_command(tmp_path, corpus):
    folder = make_folder(tmp_path / "run", corpus, nproc=2)
    res = CliRunner().invoke(app, ["run", str(folder), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert (f"{sys.executable} -m torch.distributed.run --nnodes=1 --nproc-per-node=2 --rdzv-backend=c10d "
            f"--rdzv-endpoint=localhost:0 -m experiment.train.runner {folder.resolve()}") in res.output
    bad = CliRunner().invoke(app, ["run", str(folder), "--dry-run", "--nproc", "3"])
    assert bad.exit_code == 2 and "global_batch_size" in bad.output


def test_a_folder_without_base_checkpoint_is_refused(tmp_path, corpus):
    folder = make_folder(tmp_path / "run", corpus, checkpoint='base = "no_such_checkpoint"')
    res = CliRunner().invoke(app, ["run", str(folder)])
    assert res.exit_code == 2
    assert "checkpoint.base" in res.output and "no_such_checkpoint" in res.output
    assert not (folder / "logs").exists() and not (folder / "checkpoints").exists()
    # the runner itself refuses too (what a job script starts), before any process group exists
    direct = subprocess.run([sys.executable, "-m", "experiment.train.runner", str(folder)],
                            capture_output=True, text=True, timeout=120)
    assert direct.returncode == 2 and "refusing to start" in direct.stderr and "checkpoint.base" in direct.stderr
    # neither base nor from_scratch: the schema says how to fix it
    neither = make_folder(tmp_path / "neither", corpus, checkpoint="")
    res = CliRunner().invoke(app, ["run", str(neither)])
    assert res.exit_code == 2 and "from_scratch" in res.output
