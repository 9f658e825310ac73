"""A real Slurm on this machine, for the tests and for trying the cluster path: this host as one node, and
optionally a virtual cluster of N more nodes (``experiment/launch/virtual_nodes.py``).

Writes ``slurm.conf`` under a state folder (nothing under /etc changes), starts munged (its own socket),
slurmctld and one slurmd per node, waits until ``sinfo`` shows every node idle, and stops them by the PIDs
it started. This host is partition ``debug`` (the default); the virtual nodes node1..nodeN, each its own
network namespace, hostname and ``/etc/hosts`` with this machine's cores split between them, are partition
``nodes``. Commands reach it through ``SLURM_CONF`` (``environ()``). Needs root and the declared ``slurm``
system packages (slurm-wlm, munge, iproute2); measured start-up: about 3 s.

    python -m experiment.launch.slurm_local start [--dir DIR] [--nodes N]   # prints `export SLURM_CONF=...`
    python -m experiment.launch.slurm_local status [--dir DIR]              # one line per node
    python -m experiment.launch.slurm_local stop  [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiment.errors import KitError
from experiment.launch import virtual_nodes

DEFAULT_DIR = Path(os.environ.get("MIDTRAIN_SLURM_DIR", "/tmp/midtrain-kit-slurm"))
PARTITION = "debug"  # this host
NODES_PARTITION = "nodes"  # the virtual nodes
MAX_TIME = "1-00:00:00"  # the partition's limit; the default launch.walltime (24:00:00) fits
DAEMONS = ("munged", "slurmctld", "slurmd")


class LocalSlurmError(KitError, RuntimeError):
    """The local Slurm could not start; the message names the missing piece and the fix."""


@dataclass(frozen=True)
class LocalSlurm:
    """The state folder of one local Slurm: config, state, spool, logs and the daemons' PID files."""

    root: Path = DEFAULT_DIR
    nodes: int = 0  # virtual nodes besides this host (0: this host only)
    # several Slurms side by side (a developer's and the tests'): each its own ports, subnet and namespaces
    instance: int = field(default_factory=lambda: int(os.environ.get("MIDTRAIN_SLURM_INSTANCE", "0")))

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_dir(self) -> Path:
        """munged runs as the ``munge`` user, which cannot enter a root-only folder (pytest's tmp is 0700):
        its socket, pid, log and seed live in a /tmp folder of its own, named after the state folder."""
        import hashlib

        return Path("/tmp") / f"midtrain-kit-munge-{hashlib.sha1(os.fsencode(self.root)).hexdigest()[:12]}"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket"

    @property
    def hosts_file(self) -> Path:
        """The ``/etc/hosts`` each virtual node sees."""
        return self.root / "hosts"

    def node_names(self) -> list[str]:
        return [_host(), *(n.name for n in virtual_nodes.nodes(self.nodes, self.instance))]

    def pid_file(self, daemon: str, node: str | None = None) -> Path:
        if daemon == "slurmd":
            return self.root / f"slurmd-{node or _host()}.pid"
        return (self.munge_dir if daemon == "munged" else self.root) / f"{daemon}.pid"

    def log_file(self, daemon: str, node: str | None = None) -> Path:
        if daemon == "slurmd":
            return self.root / "log" / f"slurmd-{node or _host()}.log"
        return (self.munge_dir if daemon == "munged" else self.root / "log") / f"{daemon}.log"

    def environ(self, base: dict | None = None) -> dict[str, str]:
        """The environment the Slurm commands (sbatch, squeue, ...) need to reach this Slurm."""
        return {**(os.environ if base is None else base), "SLURM_CONF": os.fspath(self.conf)}

    # ------------------------------------------------------------------ config

    def config_text(self, host: str, cpus: int, memory_mb: int) -> str:
        r = self.root
        each_cpus, each_mb = max(1, cpus // max(1, self.nodes)), max(1, memory_mb // max(1, self.nodes))
        virtual = virtual_nodes.nodes(self.nodes, self.instance)
        return "\n".join([
            "ClusterName=kitlocal",
            # the virtual nodes reach the controller over the bridge
            f"SlurmctldHost={host}({virtual_nodes.host_address(self.instance)})" if self.nodes else f"SlurmctldHost={host}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool-%n",
            f"SlurmctldPidFile={self.pid_file('slurmctld')}",
            f"SlurmdPidFile={self.root}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.log_file('slurmctld')}",
            f"SlurmdLogFile={self.root}/log/slurmd-%n.log",
            f"SlurmctldPort={6817 + 10 * self.instance}",
            f"SlurmdPort={6818 + 10 * self.instance}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "JobCompType=jobcomp/none",
            "KillWait=30",
            "MinJobAge=300",  # finished jobs stay visible to squeue/scontrol for 5 minutes
            f"NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            # a finite MaxTime, as on real clusters: `experiment run` refuses a longer launch.walltime
            f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime={MAX_TIME} State=UP",
            *(f"NodeName={n.name} NodeAddr={n.address} CPUs={each_cpus} RealMemory={each_mb} State=UNKNOWN"
              for n in virtual),
            *([f"PartitionName={NODES_PARTITION} Nodes={','.join(n.name for n in virtual)} MaxTime={MAX_TIME} "
               "State=UP"] if virtual else []),
            "",
        ])

    # ------------------------------------------------------------------ start / stop

    def running(self) -> bool:
        return all(_alive(self.pid_file(d)) for d in DAEMONS[:2]) and all(
            _alive(self.pid_file("slurmd", n)) for n in self.node_names())

    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        """Start the three daemons (a no-op when this folder's are already up); returns when the node is idle."""
        if os.geteuid() != 0:
            raise LocalSlurmError("a local Slurm runs its daemons as root; run as root (CI and the tests do)")
        for tool in ("munged", "slurmctld", "slurmd", "sinfo", *(("ip", "nsenter", "unshare") if self.nodes else ())):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                raise LocalSlurmError(f"{tool} is not installed; fix: apt-get install slurm-wlm munge iproute2 "
                                      "(the `slurm` group of experiment/system_packages.py)")
        if not 0 <= self.instance < virtual_nodes.MAX_INSTANCES:
            raise LocalSlurmError(f"MIDTRAIN_SLURM_INSTANCE={self.instance}: use 0 to {virtual_nodes.MAX_INSTANCES - 1}")
        if not 0 <= self.nodes <= virtual_nodes.MAX_NODES:
            raise LocalSlurmError(f"--nodes {self.nodes}: use 0 to {virtual_nodes.MAX_NODES}")
        if self.running():
            self.wait_idle(timeout)
            return self
        self.stop()
        for sub in ("state", "log", *(f"spool-{n}" for n in self.node_names())):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.munge_dir.mkdir(exist_ok=True)
        self.munge_dir.chmod(0o755)  # munged wants its socket folder searchable by all
        host = _host()
        cpus = os.cpu_count() or 1
        memory_mb = max(1, _memory_mb() - 1024)
        self.conf.write_text(self.config_text(host, cpus, memory_mb))
        try:
            virtual = virtual_nodes.create(self.nodes, self.hosts_file, host, self.instance) if self.nodes else []
        except OSError as err:
            raise LocalSlurmError(f"the virtual nodes could not be made: {err}") from err
        self._start_munged()
        env = self.environ()
        starts = [("slurmctld", None, [_sbin("slurmctld")]), ("slurmd", host, [_sbin("slurmd")])]
        starts += [("slurmd", n.name, virtual_nodes.node_argv(n, self.hosts_file, [_sbin("slurmd"), "-N", n.name]))
                   for n in virtual]
        for daemon, node, argv in starts:
            res = subprocess.run(argv, env=env, capture_output=True, text=True)
            if res.returncode:
                raise LocalSlurmError(f"{daemon}{f' of {node}' if node else ''} did not start: "
                                      f"{res.stderr.strip() or res.stdout.strip()}; see {self.log_file(daemon, node)}")
        self.wait_idle(timeout)
        return self

    def _start_munged(self) -> None:
        key = Path("/etc/munge/munge.key")
        if not key.is_file():
            raise LocalSlurmError(f"{key} is missing; fix: reinstall munge (its package creates the key)")
        user = pwd.getpwnam("munge")
        d = self.munge_dir
        os.chown(d, user.pw_uid, user.pw_gid)
        argv = [_sbin("munged"), f"--socket={self.munge_socket}", f"--pid-file={self.pid_file('munged')}",
                f"--log-file={self.log_file('munged')}", f"--seed-file={d / 'munged.seed'}"]
        res = subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", " ".join(argv)], capture_output=True, text=True)
        if res.returncode:
            raise LocalSlurmError(f"munged did not start: {res.stderr.strip()}; see {self.log_file('munged')}")

    def node_states(self) -> dict[str, str]:
        """{node: sinfo's state} (``idle``, ``alloc``, ``down*``, ...); {} when the controller does not answer."""
        res = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.environ(), capture_output=True,
                             text=True)
        if res.returncode:
            return {}
        return dict(line.split(None, 1) for line in res.stdout.splitlines() if len(line.split()) == 2)

    def wait_idle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.node_states()
            if set(states) >= set(self.node_names()) and all(
                    s in ("idle", "mix", "alloc") for s in states.values()):
                return
            time.sleep(0.5)
        raise LocalSlurmError(f"the nodes did not become idle within {timeout:.0f} s (sinfo: {states or 'no answer'}); "
                              f"see {self.root / 'log'}")

    def stop(self) -> list[str]:
        """Stop the daemons this folder's PID files name (SIGTERM, then SIGKILL), then every process left in the
        virtual nodes and their namespaces and bridge; returns what was stopped."""
        stopped = []
        slurmds = sorted(self.root.glob("slurmd-*.pid"))
        for daemon, pid_file in [*(("slurmd", p) for p in slurmds), ("slurmctld", self.pid_file("slurmctld")),
                                 ("munged", self.pid_file("munged"))]:
            pid = _read_pid(pid_file)
            if pid is None or not _pid_alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not _pid_alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
            stopped.append(f"{daemon} ({pid})")
        return stopped + virtual_nodes.remove(instance=self.instance)


def _host() -> str:
    return socket.gethostname().split(".")[0]


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 2048


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _alive(pid_file: Path) -> bool:
    pid = _read_pid(pid_file)
    return pid is not None and _pid_alive(pid)


def configured(root: Path) -> LocalSlurm:
    """The Slurm a state folder's ``slurm.conf`` declares (its virtual nodes and instance), to reuse or stop it;
    the defaults when there is no config."""
    try:
        lines = (root / "slurm.conf").read_text().splitlines()
    except OSError:
        return LocalSlurm(root)
    port = next((int(line.split("=", 1)[1]) for line in lines if line.startswith("SlurmctldPort=")), 6817)
    return LocalSlurm(root, sum(1 for line in lines if line.startswith("NodeName=node")), (port - 6817) // 10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiment.launch.slurm_local")
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state folder (default %(default)s)")
    parser.add_argument("--nodes", type=int, default=None,
                        help="virtual nodes besides this host, partition `nodes` (start: default 2; 0: this host only)")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    slurm = configured(root) if args.action != "start" else LocalSlurm(root, 2 if args.nodes is None else args.nodes)
    nodes = slurm.nodes
    try:
        if args.action == "start":
            slurm.start()
            print(f"local Slurm up: partition {PARTITION} (this host)"
                  + (f", partition {NODES_PARTITION} ({', '.join(slurm.node_names()[1:])})" if nodes else "")
                  + f"; to use it:\n  export SLURM_CONF={slurm.conf}")
        elif args.action == "stop":
            print("stopped: " + (", ".join(slurm.stop()) or "nothing was running"))
        else:
            states = slurm.node_states() if slurm.running() else {}
            print("running" if slurm.running() else "stopped")
            for node in slurm.node_names():
                print(f"  {node:<12} {states.get(node, '-')}")
            return 0 if slurm.running() else 1
    except LocalSlurmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
