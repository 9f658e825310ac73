"""What the second node costs on this machine: 1 node x 2 ranks against 2 nodes x 1 rank, both under the
same Slurm (the virtual cluster of ``experiment/launch/slurm_local.py``), the same probe, the same threads.

Each run is one ``srun`` of torchrun (``--rdzv-backend c10d``) per node, running ``bench/multinode_probe.py``:
it times the rendezvous (torchrun's c10d start to its workers started, and to the process group ready),
gloo all-reduces of 1 KiB to 16 MiB, and training steps of the kit's tiny megatron.core GPT (2.1M parameters,
data parallel over the ranks: Megatron DDP + distributed optimizer, as ``bench/train_step.py``'s bare loop).
Three layouts, alternating order each round:

- ``host 1x2``: partition ``debug`` (this host, CPUs=2), one torchrun with 2 ranks: the kit's usual
  single-node case, loopback TCP;
- ``node1 1x2``: partition ``nodes``, one virtual node (its own network namespace), one torchrun with 2
  ranks: the same Slurm and namespace set-up as the 2-node case, only without the second node. Slurm gives
  the task 1 CPU (a virtual node has CPUs=1), but the local cluster binds nothing (``TaskPlugin=task/none``),
  so its 2 ranks use the machine's 2 cores as in the other layouts;
- ``nodes 2x1``: partition ``nodes``, node1 + node2, one torchrun with 1 rank on each, the rendezvous at
  ``node1:PORT`` and gloo over the veth pairs and the bridge.

Every rank runs with ``OMP_NUM_THREADS=1``: 2 ranks = 2 threads = the 2 cores in every layout. The ratio to
read is ``2 nodes / 1 node`` in the same round: above 1, the second node costs time.

    python bench/multinode.py                       # starts its own 2-node cluster (root), stops it at the end
    python bench/multinode.py --rounds 5 --save bench/results/multinode-DATE.json
    python bench/multinode.py --slurm-dir /tmp/my-slurm     # reuse (or start) the cluster of that folder
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/ holds scripts named like stdlib modules (tokenize.py): never import from it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

PROBE = Path(__file__).resolve().parent / "multinode_probe.py"

# name -> (partition, nodes, ranks per node, CPUs asked per task, node list)
LAYOUTS = {
    "host 1x2": ("debug", 1, 2, 2, None),
    "node1 1x2": ("nodes", 1, 2, 1, "node1"),
    "nodes 2x1": ("nodes", 2, 1, 1, None),
}
TWO_NODES, ONE_NODE, HOST = "nodes 2x1", "node1 1x2", "host 1x2"

# (key, label, unit) of the timing rows; each value is seconds (ms for the all-reduce and step rows)
ROWS = [
    ("srun_to_agents", "srun -> every torchrun started", "s"),
    ("agent_import", "torchrun's own import (slowest)", "s"),
    ("agent_skew", "first torchrun ready -> last torchrun ready (waits for the other node)", "s"),
    ("rdzv", "c10d rendezvous + worker spawn: last torchrun ready -> last worker started", "s"),
    ("worker_import", "worker: import torch (slowest)", "s"),
    ("pg_init", "init_process_group(gloo) + barrier: last rank imported -> all ranks ready", "s"),
    ("c10d_to_pg", "c10d start -> process group ready (all ranks)", "s"),
    ("srun_to_pg", "srun -> process group ready (all ranks)", "s"),
]


def _host() -> str:
    return socket.gethostname().split(".")[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def run_layout(name: str, out: Path, args, env: dict) -> dict:
    """One srun of the probe in ``name``'s layout; the ranks' records and what the bench saw."""
    partition, nnodes, nproc, cpus, nodelist = LAYOUTS[name]
    # the rendezvous host: the first node (node1 is in both `nodes` layouts; a namespace has its own ports)
    endpoint = f"{_host() if partition == 'debug' else 'node1'}:{_free_port() if partition == 'debug' else random.randint(29600, 29900)}"
    if out.exists():
        shutil.rmtree(out)
    argv = ["srun", "-p", partition, "-N", str(nnodes), "--ntasks-per-node=1", f"--cpus-per-task={cpus}",
            "--kill-on-bad-exit=1", f"--time={args.time_limit}", *(["-w", nodelist] if nodelist else []),
            sys.executable, os.fspath(PROBE), "agent", "--",
            "--nnodes", str(nnodes), "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", endpoint, "--rdzv-id", f"bench{random.randint(0, 10**9)}", "--max-restarts", "0",
            os.fspath(PROBE), "--out", os.fspath(out), "--repeat", str(args.repeat), "--steps", str(args.steps),
            "--seq", str(args.seq), "--mbs", str(args.mbs)]
    load_before = os.getloadavg()[0]
    t_srun = time.time()
    res = subprocess.run(argv, env={**env, "BENCH_T_SRUN": repr(t_srun)}, capture_output=True, text=True,
                         timeout=args.timeout)
    wall = time.time() - t_srun
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    if res.returncode or len(ranks) != nnodes * nproc:
        tail = "\n".join((res.stderr or res.stdout).splitlines()[-25:])
        raise SystemExit(f"{name}: srun exited {res.returncode} with {len(ranks)} rank records; {' '.join(argv)}\n{tail}")
    return {"layout": name, "partition": partition, "nnodes": nnodes, "nproc_per_node": nproc, "cpus_per_task": cpus,
            "endpoint": endpoint, "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "wall_s": round(wall, 3), "ranks": ranks, "metrics": metrics(ranks)}


def metrics(ranks: list[dict]) -> dict:
    first_ready = min(r["t_agent_ready"] for r in ranks)
    m = {
        "srun_to_agents": max(r["t_agent"] for r in ranks) - ranks[0]["t_srun"],
        "agent_import": max(r["t_agent_ready"] - r["t_agent"] for r in ranks),
        "agent_skew": max(r["t_agent_ready"] for r in ranks) - first_ready,
        "rdzv": max(r["t_worker"] for r in ranks) - max(r["t_agent_ready"] for r in ranks),
        "worker_import": max(r["t_imported"] - r["t_worker"] for r in ranks),
        "pg_init": max(r["t_pg"] for r in ranks) - max(r["t_imported"] for r in ranks),
        "c10d_to_pg": max(r["t_pg"] for r in ranks) - first_ready,
        "srun_to_pg": max(r["t_pg"] for r in ranks) - ranks[0]["t_srun"],
    }
    m = {k: round(v, 4) for k, v in m.items()}
    rank0 = next(r for r in ranks if r["rank"] == 0)
    for key, ar in rank0["allreduce"].items():
        # the slowest rank's median: an all-reduce ends for everyone when the last rank has its result
        m[f"allreduce_{key}"] = max(r["allreduce"][key]["median_ms"] for r in ranks)
    if rank0.get("train"):
        m["step"] = max(r["train"]["median_ms"] for r in ranks)
    m["hosts"] = sorted({(r["node_rank"], r["hostname"]) for r in ranks})
    return m


def _size(b: int) -> str:
    return f"{b >> 20} MiB" if b >= 1 << 20 else f"{b >> 10} KiB"


def _fmt(v: float, unit: str) -> str:
    return f"{v:.3f}" if unit == "s" else f"{v:.2f}"


def table(runs: list[dict], args) -> str:
    by = {name: [r["metrics"] for r in runs if r["layout"] == name] for name in LAYOUTS}
    rounds = max(len(v) for v in by.values())
    sizes = [k for k in by[TWO_NODES][0] if k.startswith("allreduce_")]
    rows = list(ROWS) + [(k, f"all-reduce {_size(int(k.split('_')[1]))} fp32, gloo (median, slowest rank)", "ms")
                         for k in sizes]
    if "step" in by[TWO_NODES][0]:
        rows.append(("step", f"train step, tiny GPT, seq {args.seq} x mbs {args.mbs} per rank (median)", "ms"))
    head = ["what", "unit", *(f"{n} median (range)" for n in LAYOUTS),
            f"R2 (= {TWO_NODES} / {ONE_NODE})", "R2 per round", f"Rh (= {TWO_NODES} / {HOST})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, unit in rows:
        cells = [label, unit]
        med = {}
        for n in LAYOUTS:
            vals = [m[key] for m in by[n]]
            med[n] = statistics.median(vals)
            cells.append(f"{_fmt(med[n], unit)} ({_fmt(min(vals), unit)}-{_fmt(max(vals), unit)})")
        per_round = [a[key] / b[key] for a, b in zip(by[TWO_NODES], by[ONE_NODE]) if b[key] > 0]
        cells.append(f"**{med[TWO_NODES] / med[ONE_NODE]:.2f}** (= {_fmt(med[TWO_NODES], unit)} / "
                     f"{_fmt(med[ONE_NODE], unit)})" if med[ONE_NODE] > 0 else "-")
        cells.append(f"{statistics.median(per_round):.2f} ({min(per_round):.2f}-{max(per_round):.2f})"
                     if per_round else "-")
        cells.append(f"{med[TWO_NODES] / med[HOST]:.2f} (= {_fmt(med[TWO_NODES], unit)} / {_fmt(med[HOST], unit)})"
                     if med[HOST] > 0 else "-")
        lines.append("| " + " | ".join(cells) + " |")
    loads = [r["load_before"] for r in runs] + [r["load_after"] for r in runs]
    placement = {n: by[n][0]["hosts"] for n in LAYOUTS}
    lines.append("")
    lines.append(f"{rounds} rounds per layout, order alternating; load average (1 min) over the runs: median "
                 f"{statistics.median(loads):.2f}, range {min(loads):.2f}-{max(loads):.2f}")
    lines.append("placement (node rank, hostname): " + "; ".join(f"{n}: {placement[n]}" for n in LAYOUTS))
    return "\n".join(lines)


def machine(env: dict) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch

    slurm = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, env=env).stdout.strip()
    commit = subprocess.run(["git", "-C", os.fspath(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"node": platform.node(), "machine": platform.machine(), "cpu": cpu, "nproc": os.cpu_count(),
            "gpu": None, "kernel": platform.release(), "python": platform.python_version(), "torch": torch.__version__,
            "slurm": slurm, "commit": commit}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=20, help="all-reduces per size per run")
    p.add_argument("--steps", type=int, default=10, help="training steps per run (the first is warm-up); 0: none")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--mbs", type=int, default=2)
    p.add_argument("--slurm-dir", type=Path, default=None,
                   help="the local Slurm's state folder (default: a fresh temporary one, stopped at the end)")
    p.add_argument("--instance", type=int, default=int(os.environ.get("MIDTRAIN_SLURM_INSTANCE", "7")),
                   help="MIDTRAIN_SLURM_INSTANCE of the cluster it starts (own ports, subnet, namespaces)")
    p.add_argument("--timeout", type=float, default=600, help="seconds one srun may take")
    p.add_argument("--time-limit", default="15", help="srun --time of each run")
    p.add_argument("--save", type=Path, default=None, help="the JSON record (default: bench/results/multinode-DATE.json)")
    args = p.parse_args()

    from experiment.launch.slurm_local import LocalSlurm, configured

    tmp = Path(tempfile.mkdtemp(prefix="bench-multinode-"))
    root = (args.slurm_dir or tmp / "slurm").resolve()
    slurm = configured(root) if (root / "slurm.conf").is_file() else LocalSlurm(root, nodes=2, instance=args.instance)
    if slurm.nodes < 2:
        slurm = LocalSlurm(root, nodes=2, instance=args.instance)
    owned = not slurm.running()
    print(f"{'starting' if owned else 'using'} the local Slurm in {root} (instance {slurm.instance}, "
          f"{slurm.nodes} virtual nodes)", file=sys.stderr, flush=True)
    slurm.start()
    env = {**slurm.environ(), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    now = dt.datetime.now(dt.timezone.utc)
    runs: list[dict] = []
    try:
        info = machine(env)
        names = list(LAYOUTS)
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                run = run_layout(name, tmp / "out", args, env)
                runs.append({"round": r + 1, **run})
                m = run["metrics"]
                print(f"round {r + 1}/{args.rounds} {name}: c10d -> pg {m['c10d_to_pg']:.2f} s, step "
                      f"{m.get('step', float('nan')):.1f} ms, all-reduce 16 MiB {m['allreduce_16777216']:.1f} ms, "
                      f"load {run['load_before']:.2f}", file=sys.stderr, flush=True)
    finally:
        if owned:
            print("stopped: " + ", ".join(slurm.stop()), file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nmultinode: {info['node']}, {info['nproc']} x {info['cpu']}, no GPU; {info['slurm']}, torch "
          f"{info['torch']}, commit {info['commit']}; {now:%Y-%m-%d %H:%M} UTC")
    print("layouts: host 1x2 = partition debug (this host, 2 CPUs), 1 torchrun x 2 ranks; node1 1x2 = partition "
          "nodes, one virtual node, 1 torchrun x 2 ranks (Slurm's CPUs=1 there is not enforced: no task binding, "
          "so both ranks use the 2 cores); nodes 2x1 = partition nodes, node1 + node2, 1 rank each, gloo over the "
          "bridge. OMP_NUM_THREADS=1 per rank everywhere.\n")
    print(table(runs, args))
    out = args.save or REPO / "bench" / "results" / f"multinode-{now:%Y-%m-%d-%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "bench": "bench/multinode.py", "date": now.isoformat(), "machine": info,
        "args": {k: (os.fspath(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "layouts": {n: dict(zip(("partition", "nnodes", "nproc_per_node", "cpus_per_task", "nodelist"), v))
                    for n, v in LAYOUTS.items()},
        "runs": runs, "table": table(runs, args),
    }, indent=1) + "\n")
    print(f"\nrecord: {out}")


if __name__ == "__main__":
    main()
