"""A training folder run in the kit's image on several nodes: `experiment run --launcher slurm --container` with
``launch.container_runtime = "podman"`` on the virtual cluster (tests/conftest.py's `cluster`: node1 and node2,
each its own network namespace, host name and /etc/hosts, one shared filesystem).

The image is the one tests/container/conftest.py's session fixture `builds` made (no build of its own); every node's
podman reads that build's store through ``CONTAINERS_STORAGE_CONF``, which the job script's podman line carries."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from experiment.lock import lockfile
from tests.container.conftest import TAG, storage_conf

pytestmark = [pytest.mark.slow, pytest.mark.container]

# a 2-minute walltime of which 110 s are margin: a segment's budget ends some 10 s after the job starts, about
# when its first steps are done (measured: the first step 10 s after submission), so it saves and stops on its
# time budget after a step or two, the 4 iterations take 2 jobs or more, and the chain goes on from inside the image
LAUNCH = """[launch]
nnodes = 2
partition = "nodes"
cpus_per_task = 1
walltime = "2"
exit_margin_seconds = 110
signal_seconds = 5
container_runtime = "podman"
"""


def test_two_node_slurm_job_runs_in_the_image_with_podman(builds, cluster, project, tmp_path):
    roots, (entry, _) = builds
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(storage_conf(roots[0], entry["storage_driver"],
                                                                        tmp_path / "storage.conf"))}
    folder = project / "training" / "tiny"
    toml = folder / "experiment.toml"
    # steps of about a second (seq 256, batch 16 on 2 ranks): tiny steps let one segment finish all 4 in its budget
    toml.write_text(toml.read_text().replace("[launch]\n", LAUNCH).replace("seq_length = 32", "seq_length = 256")
                    .replace("global_batch_size = 4", "global_batch_size = 16"))
    res = subprocess.run([sys.executable, "-m", "experiment.cli", "run", str(folder), "--launcher", "slurm",
                          "--container", "--image", TAG, "--wait"], capture_output=True, text=True, env=env,
                         timeout=600)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted((folder / "logs").glob("slurm-*.out")))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + logs

    # the job script: every step (chain begin, torchrun on each node, chain end, chain submitted) is a podman run
    # of the image, on the node's own network and host name, with the store the image was built into; sbatch runs
    # on the node itself (the image has none)
    script = (folder / "launch" / "slurm.sh").read_text()
    podman = [line for line in script.splitlines() if "podman run --rm --init --network host" in line]
    assert len(podman) == 4 and all(TAG in line and "CONTAINERS_STORAGE_CONF=" in line for line in podman)
    assert any("torchrun --nnodes=2" in line for line in podman)

    # both ranks ran, on node1 and node2, inside a container (PID namespace of its own: catatonit is PID 1)
    beats = [json.loads((folder / "logs" / "heartbeat" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert sorted(b["host"] for b in beats) == ["node1", "node2"], beats
    assert all(b["pid"] < 1000 and b["phase"] == "done" for b in beats), beats

    # the lock, written by `chain end` inside the image, records the image and its digest (the build's image id)
    lock = lockfile.read_lock(folder / "run.lock.json").dump()
    image = lock["environment"]["image"]
    assert lock["environment"]["containerized"] is True, lock["environment"]
    assert image["ref"] == TAG and image["digest"] == entry["image_id"]
    segments = lock["launch"]["launcher"]["segments"]
    assert len(segments) >= 2 and segments[-1]["state"] == "finished", segments
    assert {s["state"] for s in segments[:-1]} == {"walltime"}, segments
    assert all((s["nodes"], s["hosts"], s["image_digest"]) == (2, ["node1", "node2"], entry["image_id"])
               for s in segments), segments
    chain = [json.loads(line) for line in (folder / "logs" / "chain.jsonl").read_text().splitlines()]
    by = [e["by"] for e in chain if e["event"] == "submitted"]
    assert by == ["cli"] + ["chain"] * (len(segments) - 1), chain  # the later ones: from the job, on the node
    assert lock["launch"]["world_size"] == 2
    assert lock["config"]["experiment"]["launch"]["container_runtime"] == "podman"
