"""A Slurm partition as the scheduler sees it, compared with what a job asks, before it is submitted.

Slurm may accept a job its partition can never run and leave it pending for ever (``Reason=PartitionConfig``
for more CPUs than a node has, ``PartitionTimeLimit`` for a walltime over ``MaxTime``), or refuse it in
words that name no field of the folder (GPUs, nodes). ``query`` reads the
partition and its nodes from ``scontrol show partition -o`` and ``scontrol show node -o`` (one
``key=value`` line each, the same on every Slurm version); ``problems`` compares them with the job's
``#SBATCH`` request and names, for each mismatch, the ``experiment.toml`` field, both numbers and the fix.

When the scheduler cannot be asked (no ``scontrol``, no controller, an unknown partition) ``query`` returns
None and the submission goes ahead: ``sbatch``'s own error, mapped to a fix in ``launchers._SBATCH_FIXES``,
then speaks. The job script requests no memory, so memory is not compared.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from experiment.duration import parse_duration

TOML = "experiment.toml"
NO_LIMIT = ("UNLIMITED", "INFINITE", "NONE", "N/A", "")
_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w./:-]*)=")


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    gpus: int  # gres gpu count; 0 for a node without gres


@dataclass(frozen=True)
class Partition:
    name: str
    max_time_s: int | None  # None: no limit (INFINITE/UNLIMITED)
    max_time: str
    total_nodes: int
    max_nodes: int | None
    max_cpus_per_node: int | None
    nodes: tuple[Node, ...]


@dataclass(frozen=True)
class Ask:
    """What the job script asks of each node (one task per node) and of the partition."""

    cpus_per_node: int
    gpus_per_node: int
    nnodes: int
    walltime: str
    cpus_note: str = ""  # where a default came from, e.g. " (default: 2 per rank x launch.nproc_per_node 2)"
    gpus_note: str = ""


def fields(line: str) -> dict[str, str]:
    """``Key=value`` pairs of one ``scontrol -o`` line; a value may hold spaces (``OS=Linux 6.1 #1 SMP``)."""
    keys = list(_KEY.finditer(line))
    out = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


def gres_gpus(gres: str) -> int:
    """GPUs of a node's ``Gres=`` (``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:a100:2,gpu:v100:2``); 0 for ``(null)``."""
    total, depth, part, parts = 0, 0, "", []
    for ch in gres or "":
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(part)
            part = ""
        else:
            part += ch
    parts.append(part)
    for entry in parts:
        bits = entry.split("(")[0].strip().split(":")
        if bits[0] != "gpu":
            continue
        count = re.match(r"\d+", bits[-1]) if len(bits) > 1 else None
        total += int(count.group()) if count else 1
    return total


def limit_seconds(text: str) -> int | None:
    """Seconds of a Slurm time limit (``1-00:00:00``, ``02:00:00``); None for no limit."""
    if text.strip().upper() in NO_LIMIT:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _scontrol(*args: str) -> str | None:
    try:
        res = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def parse(partitions: str, nodes: str | None, name: str | None) -> Partition | None:
    """The partition ``name`` (None: the default one) out of ``scontrol show partition -o`` and
    ``scontrol show node -o`` output; None when it is not there."""
    found = None
    for line in partitions.splitlines():
        f = fields(line)
        if "PartitionName" in f and (f["PartitionName"] == name if name else f.get("Default") == "YES"):
            found = f
            break
    if found is None:
        return None
    pname = found["PartitionName"]
    members = []
    for line in (nodes or "").splitlines():
        f = fields(line)
        if "NodeName" not in f or pname not in f.get("Partitions", "").split(","):
            continue
        cpus = _int(f.get("CPUEfctv")) or _int(f.get("CPUTot"))  # CPUEfctv: without specialized cores (23.02+)
        if cpus is not None:
            members.append(Node(f["NodeName"], cpus, gres_gpus(f.get("Gres", ""))))
    max_nodes = found.get("MaxNodes", "UNLIMITED")
    return Partition(pname, limit_seconds(found.get("MaxTime", "UNLIMITED")), found.get("MaxTime", "UNLIMITED"),
                     _int(found.get("TotalNodes")) or len(members),
                     None if max_nodes.upper() in NO_LIMIT else _int(max_nodes),
                     _int(found.get("MaxCPUsPerNode")), tuple(members))


def query(name: str | None) -> Partition | None:
    """The partition from the scheduler itself; None when it cannot be asked or does not know it."""
    if shutil.which("scontrol") is None:
        return None
    partitions = _scontrol("show", "partition", "-o", *([name] if name else []))
    if partitions is None:
        return None
    return parse(partitions, _scontrol("show", "node", "-o"), name)


def problems(ask: Ask, part: Partition) -> list[str]:
    """One line per request the partition can never run: field, asked vs. the partition's, fix."""
    out = []
    where = f"partition {part.name}"
    cap = part.max_cpus_per_node

    def cpus(n: Node) -> int:
        return min(n.cpus, cap) if cap is not None else n.cpus

    fits_one = True
    if part.nodes:
        most_cpus, most_gpus = max(cpus(n) for n in part.nodes), max(n.gpus for n in part.nodes)
        if ask.cpus_per_node > most_cpus:
            fits_one = False
            out.append(f"{TOML}: launch.cpus_per_task{ask.cpus_note} asks {ask.cpus_per_node} CPUs per node, "
                       f"but the nodes of {where} have at most {most_cpus} (`scontrol show node`): the job "
                       f"could never start (Reason=PartitionConfig); fix: set launch.cpus_per_task = "
                       f"{most_cpus} or less" + (" (or lower launch.nproc_per_node)" if ask.cpus_note else ""))
        if ask.gpus_per_node > most_gpus:
            fits_one = False
            fix = (f"set launch.gpus_per_node = {most_gpus} or less" if most_gpus else
                   "set launch.gpus_per_node = 0 (no GPUs there)")
            out.append(f"{TOML}: launch.gpus_per_node{ask.gpus_note} asks {ask.gpus_per_node} GPUs per node, "
                       f"but the nodes of {where} have at most {most_gpus} (gres gpu, `scontrol show node`): "
                       f"the job could never start; fix: {fix}, or launch.partition to a partition with GPU "
                       "nodes (`sinfo -o '%P %G'`)")
    limit = part.total_nodes if part.max_nodes is None else min(part.total_nodes, part.max_nodes)
    if ask.nnodes > limit:
        what = f"has {part.total_nodes} node(s)" + (f" and MaxNodes={part.max_nodes}" if limit < part.total_nodes
                                                      else "")
        out.append(f"{TOML}: launch.nnodes asks {ask.nnodes} nodes, but {where} {what}; fix: set "
                   f"launch.nnodes = {limit} or less, or launch.partition to a larger partition (`sinfo -s`)")
    elif fits_one and part.nodes:  # each alone fits some node: are there nnodes nodes that have both?
        fit = [n for n in part.nodes if cpus(n) >= ask.cpus_per_node and n.gpus >= ask.gpus_per_node]
        if len(fit) < ask.nnodes:
            out.append(f"{TOML}: launch.nnodes asks {ask.nnodes} nodes with {ask.cpus_per_node} CPUs and "
                       f"{ask.gpus_per_node} GPUs each, but only {len(fit)} node(s) of {where} have that; fix: "
                       f"set launch.nnodes = {len(fit)} or less, or lower launch.cpus_per_task/gpus_per_node")
    wall = parse_duration(ask.walltime)
    if part.max_time_s is not None and wall > part.max_time_s:
        out.append(f"{TOML}: launch.walltime {ask.walltime} ({wall} s) exceeds the MaxTime {part.max_time} "
                   f"({part.max_time_s} s) of {where}: the job could never start (Reason=PartitionTimeLimit); "
                   f"fix: set launch.walltime to {part.max_time} or less (the chain continues in more segments)")
    return out
