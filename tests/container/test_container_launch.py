"""The container launcher's argv (mounts at the same paths, --init, the image ref file) and the
no-engine paths of `experiment run --container` and `nox -s build_image` (no engine needed here)."""

from __future__ import annotations

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
    assert line.startswith("apptainer exec --nv --cleanenv --env A=1 --bind ") and "kit.sif experiment run" in line
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
