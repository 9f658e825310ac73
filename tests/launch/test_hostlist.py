"""A job's host names as the chain records them per segment: Slurm's compressed node list expanded the way
`scontrol show hostnames` does, also where there is no scontrol (inside the kit's image)."""

from __future__ import annotations

from experiment.launcher_names import expand_hostlist, job_hosts


def test_compressed_node_lists_expand_like_scontrol():
    assert expand_hostlist("node[1-2]") == ["node1", "node2"]
    assert expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_hostlist("a1,b[2-3]") == ["a1", "b2", "b3"]


def test_hosts_of_a_job_without_scontrol(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol on PATH, as inside the image
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node[1-2]"}
    assert job_hosts(env) == ["node1", "node2"]
    assert job_hosts({}) == []  # outside a job
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\n")  # PBS: one line per slot
    assert job_hosts({"PBS_JOBID": "9.pbs", "PBS_NODEFILE": str(nodefile)}) == ["n1", "n2"]
