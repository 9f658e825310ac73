"""The container launcher's argv (mounts at the same paths, --init, the image ref file) and the
no-engine paths of `experiment run --container` and `nox -s build_image` (no engine needed here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from experiment.launch import container
from experiment.lock import image
from experiment.lock.reproduce import mirror_folder
from experiment.lock.verify import load_folder


def test_mounts_cover_the_folder_and_what_it_reads(project, tmp_path):
    folder = load_folder(project / "training" / "tiny")
    specs = [m.spec() for m in container.folder_mounts(folder)]
    assert specs == [f"{project}:{project}:ro", f"{folder.path}:{folder.path}:rw"]
    # a reproduce mirror links to the real signatures: the links' folder and their targets are mounted
    mirror = load_folder(mirror_folder(folder, tmp_path / "work"))
    paths = {m.path: m.read_only for m in container.folder_mounts(mirror)}
    assert paths[mirror.path] is False and paths[tmp_path / "work"] is True
    assert paths[project / "data_signatures"] is True and paths[project / "data" / "tiny"] is True


def test_engine_argv_podman_and_cluster_lines(project):
    folder = load_folder(project / "training" / "tiny")
    run = container.ContainerRun("podman", "localhost/midtrain-kit:cpu",
                                 container.folder_mounts(folder) + (container.Mount(Path("/tmp/ref.json"), True,
                                                                                    Path("/run/midtrain-kit/image-ref.json")),),
                                 container.inner_run_command(folder, 2), {"A": "1"}, folder.path)
    argv = container.engine_argv(run)
    assert argv[:4] == ["podman", "run", "--rm", "--init"]
    assert f"{folder.path}:{folder.path}:rw" in argv and "/tmp/ref.json:/run/midtrain-kit/image-ref.json:ro" in argv
    assert argv[-6:] == ["localhost/midtrain-kit:cpu", "experiment", "run", str(folder.path), "--nproc", "2"]
    line = container.apptainer_line(run, "kit.sif")
    assert line.startswith("apptainer exec --nv --cleanenv --env A=1 ") and "kit.sif experiment run" in line
    # --cleanenv: the job variables the kit reads pass by value, each node's own, expanded by the job script
    assert '--env "SLURM_JOB_ID=${SLURM_JOB_ID:-}"' in line and '--env "MIDTRAIN_JOB_END_TIME=${MIDTRAIN_JOB_END_TIME:-}"' in line
    srun = container.srun_line(run, "kit.sqsh")
    assert "--container-image=kit.sqsh" in srun and f"--container-workdir={folder.path}" in srun


def test_no_engine_says_so(project, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    folder = load_folder(project / "training" / "tiny")
    with pytest.raises(container.ContainerError, match="no container engine"):
        container.plan(folder)
    assert image.main(["--flavor", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "no container engine found" in err and "apt-get install podman buildah runc mmdebstrap" in err
    assert "buildah bud" in err and "--timestamp 0" in err and "env/make_base.sh" in err


def test_podman_line_for_cluster_jobs(project):
    """launch.container_runtime = "podman": the node's network and host name, the job's variables by name, the
    kit's engine settings in front, and the file naming the image and its digest where detect_image reads it."""
    folder = load_folder(project / "training" / "tiny")
    digest = "sha256:" + "ab" * 32
    line = container.cluster_prefix(folder, "podman", "localhost/midtrain-kit:cpu", digest, {"PYTHONHASHSEED": "0"})
    assert "podman run --rm --init --network host --ipc host --uts host -e 'SLURM_*' -e 'PBS_*'" in line
    assert line.startswith("env CONTAINERS_CONF=") and line.endswith(" localhost/midtrain-kit:cpu")
    ref = folder.path / "launch" / "image-ref.json"
    assert f"-v {ref}:/run/midtrain-kit/image-ref.json:ro" in line and f"-w {folder.path}" in line
    assert json.loads(ref.read_text()) == {"ref": "localhost/midtrain-kit:cpu", "digest": digest}
    assert f"-e MIDTRAIN_IMAGE_DIGEST={digest}" in line and "-e PYTHONHASHSEED=0" in line
    bare = container.podman_line(container.ContainerRun("podman", "img", (), (), {}, None), engine_vars={})
    assert bare.startswith("podman run ") and bare.endswith(" img")
    # the default stays apptainer (the line the job scripts always had)
    assert container.cluster_prefix(folder, "apptainer", "/x/kit.sif", None, {}).startswith("apptainer exec --nv")
    with pytest.raises(container.ContainerError, match="container_runtime"):
        container.cluster_prefix(folder, "docker", "img", None, {})


def test_slurm_dry_run_with_podman(project, monkeypatch):
    from typer.testing import CliRunner

    from experiment.cli import app

    folder = project / "training" / "tiny"
    toml = folder / "experiment.toml"
    toml.write_text(toml.read_text().replace("[launch]\n", '[launch]\nnnodes = 2\ncontainer_runtime = "podman"\n'))
    res = CliRunner().invoke(app, ["run", str(folder), "--launcher", "slurm", "--container", "--image",
                                   "localhost/kit:x", "--dry-run"])
    assert res.exit_code == 0, res.output
    script = (folder / "launch" / "slurm.sh").read_text()
    steps = [line for line in script.splitlines() if "podman run --rm --init --network host" in line]
    # chain begin, torchrun, chain end and (a next segment due) chain submitted, each in the image
    assert len(steps) == 4 and all("localhost/kit:x" in s for s in steps)
    assert "localhost/kit:x torchrun --nnodes=2" in script and "localhost/kit:x python -m experiment.launch.chain end" in script
    # the image has no sbatch: the next segment is submitted by the script on the node, then recorded
    assert "--submit-on-host" in script and 'sbatch --parsable --dependency=afterany:"$SLURM_JOB_ID"' in script


def test_podman_job_without_the_image_or_a_digest_is_refused(project, monkeypatch):
    from experiment.launch import launchers
    from experiment.launch.local import Launch

    folder = project / "training" / "tiny"
    toml = folder / "experiment.toml"
    toml.write_text(toml.read_text().replace("[launch]\n", '[launch]\ncontainer_runtime = "podman"\n'))
    loaded = load_folder(folder)
    request = launchers.Request(loaded, Launch(folder), container=True, image="localhost/nosuch:x")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    (problem,) = launchers.image_problems(request)
    assert "--image: localhost/nosuch:x is not looked up: podman is not on this machine" in problem
    assert "pin image.digest" in problem
    toml.write_text(toml.read_text() + f'[image]\ndigest = "sha256:{"cd" * 32}"\n')  # a pin: nothing to look up
    assert launchers.image_problems(launchers.Request(load_folder(folder), Launch(folder), container=True,
                                                      image="localhost/nosuch:x")) == []
