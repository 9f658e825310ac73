"""A real single-node Slurm on this machine, for the tests and for trying the cluster path.

Writes ``slurm.conf`` for this host under a state folder (nothing under /etc changes), starts munged
(its own socket), slurmctld and slurmd, waits until ``sinfo`` shows the node idle, and stops them by the
PIDs it started. Commands reach it through ``SLURM_CONF`` (``environ()``). Needs root and the declared
``slurm`` system packages (slurm-wlm, munge); measured start-up: about 3 s.

    python -m experiment.launch.slurm_local start [--dir DIR]   # prints `export SLURM_CONF=...`
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
from dataclasses import dataclass
from pathlib import Path

from experiment.errors import KitError

DEFAULT_DIR = Path(os.environ.get("MIDTRAIN_SLURM_DIR", "/tmp/midtrain-kit-slurm"))
PARTITION = "debug"
MAX_TIME = "1-00:00:00"  # the partition's limit; the default launch.walltime (24:00:00) fits
DAEMONS = ("munged", "slurmctld", "slurmd")


class LocalSlurmError(KitError, RuntimeError):
    """The local Slurm could not start; the message names the missing piece and the fix."""


@dataclass(frozen=True)
class LocalSlurm:
    """The state folder of one local Slurm: config, state, spool, logs and the daemons' PID files."""

    root: Path = DEFAULT_DIR

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

    def pid_file(self, daemon: str) -> Path:
        return (self.munge_dir if daemon == "munged" else self.root) / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return (self.munge_dir if daemon == "munged" else self.root / "log") / f"{daemon}.log"

    def environ(self, base: dict | None = None) -> dict[str, str]:
        """The environment the Slurm commands (sbatch, squeue, ...) need to reach this Slurm."""
        return {**(os.environ if base is None else base), "SLURM_CONF": os.fspath(self.conf)}

    # ------------------------------------------------------------------ config

    def config_text(self, host: str, cpus: int, memory_mb: int) -> str:
        r = self.root
        return "\n".join([
            "ClusterName=kitlocal",
            f"SlurmctldHost={host}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={self.pid_file('slurmctld')}",
            f"SlurmdPidFile={self.pid_file('slurmd')}",
            f"SlurmctldLogFile={self.log_file('slurmctld')}",
            f"SlurmdLogFile={self.log_file('slurmd')}",
            "SlurmctldPort=6817",
            "SlurmdPort=6818",
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
            "",
        ])

    # ------------------------------------------------------------------ start / stop

    def running(self) -> bool:
        return all(_alive(self.pid_file(d)) for d in DAEMONS)

    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        """Start the three daemons (a no-op when this folder's are already up); returns when the node is idle."""
        if os.geteuid() != 0:
            raise LocalSlurmError("a local Slurm runs its daemons as root; run as root (CI and the tests do)")
        for tool in ("munged", "slurmctld", "slurmd", "sinfo"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                raise LocalSlurmError(f"{tool} is not installed; fix: apt-get install slurm-wlm munge "
                                      "(the `slurm` group of experiment/system_packages.py)")
        if self.running():
            self.wait_idle(timeout)
            return self
        self.stop()
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.munge_dir.mkdir(exist_ok=True)
        self.munge_dir.chmod(0o755)  # munged wants its socket folder searchable by all
        host = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        memory_mb = max(1, _memory_mb() - 1024)
        self.conf.write_text(self.config_text(host, cpus, memory_mb))
        self._start_munged()
        env = self.environ()
        for daemon in ("slurmctld", "slurmd"):
            res = subprocess.run([_sbin(daemon)], env=env, capture_output=True, text=True)
            if res.returncode:
                raise LocalSlurmError(f"{daemon} did not start: {res.stderr.strip() or res.stdout.strip()}; "
                                      f"see {self.log_file(daemon)}")
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

    def wait_idle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            res = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.environ(), capture_output=True, text=True)
            last = (res.stdout + res.stderr).strip()
            if res.returncode == 0 and last in ("idle", "mix", "alloc"):
                return
            time.sleep(0.5)
        raise LocalSlurmError(f"the node did not become idle within {timeout:.0f} s (sinfo: {last!r}); "
                              f"see {self.root / 'log'}")

    def stop(self) -> list[str]:
        """Stop the daemons this folder's PID files name (SIGTERM, then SIGKILL); returns what was stopped."""
        stopped = []
        for daemon in reversed(DAEMONS):
            pid = _read_pid(self.pid_file(daemon))
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
        return stopped


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiment.launch.slurm_local")
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state folder (default %(default)s)")
    args = parser.parse_args(argv)
    slurm = LocalSlurm(args.dir.resolve())
    try:
        if args.action == "start":
            slurm.start()
            print(f"local Slurm up (partition {PARTITION}); to use it:\n  export SLURM_CONF={slurm.conf}")
        elif args.action == "stop":
            print("stopped: " + (", ".join(slurm.stop()) or "nothing was running"))
        else:
            print("running" if slurm.running() else "stopped")
            return 0 if slurm.running() else 1
    except LocalSlurmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
