"""Several "nodes" on one machine: one network namespace per node, joined by a bridge, each with its own
hostname, address and ``/etc/hosts`` (through a mount namespace), for the multi-node Slurm tests.

A node is what a real cluster's node is to the kit: a host name that resolves to an address the other nodes
reach (gloo's rendezvous and all-reduce go over the veth pair and the bridge), a ``hostname`` of its own,
and the shared file system at the same path (the mount namespace is a private copy of this machine's
mounts with only ``/etc/hosts`` replaced). Processes started in a node (``run_in``) see all of that; they
share this machine's PID namespace, so the tests can kill one node's processes by PID.

Everything is named with one prefix (``mtk``) and lives in 10.231.0.0/24, addresses the tests made
themselves; ``remove`` kills every process left in the namespaces, then deletes them and the bridge. Needs
root and iproute2 (``ip``), util-linux (``nsenter``, ``unshare``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "mtk"
BRIDGE = f"{PREFIX}br0"
SUBNET = "10.231.0"
HOST_ADDRESS = f"{SUBNET}.1"  # this machine's side of the bridge: the controller's address
NETNS_DIR = Path("/run/netns")
MAX_NODES = 8


@dataclass(frozen=True)
class Node:
    index: int  # 1-based

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{10 + self.index}"

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.name}"

    @property
    def veth(self) -> str:  # this machine's end; the node's end is renamed eth0 inside its namespace
        return f"{PREFIX}v{self.index}"


def nodes(count: int) -> list[Node]:
    return [Node(i) for i in range(1, count + 1)]


def hosts_text(count: int, controller: str) -> str:
    """The ``/etc/hosts`` every node sees: localhost, the controller, and each node's name and address, also
    as the IPv4-mapped IPv6 address a dual-stack socket reports for its peer (torch's c10d store looks the
    peer's name up that way; a cluster's DNS answers both, here there is no DNS to ask)."""
    named = [("127.0.0.1", "localhost"), (HOST_ADDRESS, controller), *((n.address, n.name) for n in nodes(count))]
    lines = [f"{address}\t{name}" for address, name in named] + ["::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"::ffff:{address}\t{name}" for address, name in named]
    return "\n".join(lines) + "\n"


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    res = subprocess.run(argv, capture_output=True, text=True)
    if check and res.returncode:
        raise OSError(f"`{' '.join(argv)}` failed: {res.stderr.strip()}")
    return res


def create(count: int, hosts_file: Path, controller: str) -> list[Node]:
    """The bridge, one namespace per node with its veth (eth0) address, and the shared hosts file."""
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f"{count} nodes: use 1 to {MAX_NODES}")
    remove(MAX_NODES)  # leftovers of a run that was killed before it could clean up
    hosts_file.parent.mkdir(parents=True, exist_ok=True)
    hosts_file.write_text(hosts_text(count, controller))
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{HOST_ADDRESS}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for n in nodes(count):
        _ip("netns", "add", n.netns)
        _ip("link", "add", n.veth, "type", "veth", "peer", "name", f"{n.veth}p")
        _ip("link", "set", f"{n.veth}p", "netns", n.netns)
        _ip("link", "set", n.veth, "master", BRIDGE)
        _ip("link", "set", n.veth, "up")
        _ip("link", "set", f"{n.veth}p", "name", "eth0", netns=n.netns)
        _ip("addr", "add", f"{n.address}/24", "dev", "eth0", netns=n.netns)
        _ip("link", "set", "eth0", "up", netns=n.netns)
        _ip("link", "set", "lo", "up", netns=n.netns)
    return nodes(count)


def node_argv(node: Node, hosts_file: Path, argv: list[str]) -> list[str]:
    """``argv`` run inside ``node``: its network namespace (``nsenter --net``: ``ip netns exec`` would mount
    a fresh /sys, where slurmd finds no cgroup file system), a new UTS namespace with the node's hostname,
    and a private mount namespace where ``hosts_file`` is ``/etc/hosts``."""
    import shlex

    inner = (f"hostname {node.name} && mount --bind {shlex.quote(os.fspath(hosts_file))} /etc/hosts && "
             f"exec {shlex.join(argv)}")
    return ["nsenter", f"--net={NETNS_DIR / node.netns}", "unshare", "--uts", "--mount", "--propagation",
            "private", "sh", "-c", inner]


def pids_in(node_or_netns: Node | str) -> list[int]:
    name = node_or_netns.netns if isinstance(node_or_netns, Node) else node_or_netns
    res = _ip("netns", "pids", name, check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def remove(count: int = MAX_NODES) -> list[str]:
    """Kill what still runs in the namespaces (TERM, then KILL), delete them and the bridge; returns what was
    removed. Safe to call when nothing is there."""
    removed = []
    present = set(_ip("netns", "list", check=False).stdout.split())
    for n in nodes(count):
        if n.netns not in present:
            continue
        pids = pids_in(n)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                pids = pids_in(n)
                time.sleep(0.1)
            if not pids:
                break
        _ip("netns", "del", n.netns, check=False)
        _ip("link", "del", n.veth, check=False)
        removed.append(n.netns)
    if _ip("link", "show", BRIDGE, check=False).returncode == 0:
        _ip("link", "del", BRIDGE, check=False)
        removed.append(BRIDGE)
    return removed
