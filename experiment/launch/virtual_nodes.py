"""Several "nodes" on one machine: one network namespace per node, joined by a bridge, each with its own
hostname, address and ``/etc/hosts`` (through a mount namespace), for the multi-node Slurm tests.

A node is what a real cluster's node is to the kit: a host name that resolves to an address the other nodes
reach (gloo's rendezvous and all-reduce go over the veth pair and the bridge), a ``hostname`` of its own,
and the shared file system at the same path (the mount namespace is a private copy of this machine's
mounts with only ``/etc/hosts`` replaced). Processes started in a node (``run_in``) see all of that; they
share this machine's PID namespace, so the tests can kill one node's processes by PID.

Everything of instance K (0 by default; several clusters can run side by side) is named with the prefix
``mtkK`` and lives in 10.231.K.0/24, addresses the tests made themselves; ``remove`` kills every process
left in the namespaces, then deletes them and the bridge. Needs root and iproute2 (``ip``), util-linux
(``nsenter``, ``unshare``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
MAX_NODES = 8
MAX_INSTANCES = 50


def prefix(instance: int) -> str:
    return f"mtk{instance}"


def bridge(instance: int) -> str:
    return f"{prefix(instance)}br"


def host_address(instance: int) -> str:
    """This machine's side of the bridge: the controller's address as the nodes see it."""
    return f"10.231.{instance}.1"


@dataclass(frozen=True)
class Node:
    index: int  # 1-based
    instance: int = 0

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def address(self) -> str:
        return f"10.231.{self.instance}.{10 + self.index}"

    @property
    def netns(self) -> str:
        return f"{prefix(self.instance)}-{self.name}"

    @property
    def veth(self) -> str:  # this machine's end; the node's end is renamed eth0 inside its namespace
        return f"{prefix(self.instance)}v{self.index}"


def nodes(count: int, instance: int = 0) -> list[Node]:
    return [Node(i, instance) for i in range(1, count + 1)]


def hosts_text(count: int, controller: str, instance: int = 0) -> str:
    """The ``/etc/hosts`` every node sees: localhost, the controller, and each node's name and address, also
    as the IPv4-mapped IPv6 address a dual-stack socket reports for its peer (torch's c10d store looks the
    peer's name up that way; a cluster's DNS answers both, here there is no DNS to ask)."""
    named = [("127.0.0.1", "localhost"), (host_address(instance), controller),
             *((n.address, n.name) for n in nodes(count, instance))]
    lines = [f"{address}\t{name}" for address, name in named] + ["::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"::ffff:{address}\t{name}" for address, name in named]
    return "\n".join(lines) + "\n"


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    res = subprocess.run(argv, capture_output=True, text=True)
    if check and res.returncode:
        raise OSError(f"`{' '.join(argv)}` failed: {res.stderr.strip()}")
    return res


def create(count: int, hosts_file: Path, controller: str, instance: int = 0) -> list[Node]:
    """The bridge, one namespace per node with its veth (eth0) address, and the shared hosts file."""
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f"{count} nodes: use 1 to {MAX_NODES}")
    if not 0 <= instance < MAX_INSTANCES:
        raise ValueError(f"instance {instance}: use 0 to {MAX_INSTANCES - 1}")
    remove(MAX_NODES, instance)  # leftovers of a run that was killed before it could clean up
    hosts_file.parent.mkdir(parents=True, exist_ok=True)
    hosts_file.write_text(hosts_text(count, controller, instance))
    br = bridge(instance)
    _ip("link", "add", br, "type", "bridge")
    _ip("addr", "add", f"{host_address(instance)}/24", "dev", br)
    _ip("link", "set", br, "up")
    for n in nodes(count, instance):
        _ip("netns", "add", n.netns)
        _ip("link", "add", n.veth, "type", "veth", "peer", "name", f"{n.veth}p")
        _ip("link", "set", f"{n.veth}p", "netns", n.netns)
        _ip("link", "set", n.veth, "master", br)
        _ip("link", "set", n.veth, "up")
        _ip("link", "set", f"{n.veth}p", "name", "eth0", netns=n.netns)
        _ip("addr", "add", f"{n.address}/24", "dev", "eth0", netns=n.netns)
        _ip("link", "set", "eth0", "up", netns=n.netns)
        _ip("link", "set", "lo", "up", netns=n.netns)
    return nodes(count, instance)


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


def remove(count: int = MAX_NODES, instance: int = 0) -> list[str]:
    """Kill what still runs in the namespaces (TERM, then KILL), delete them and the bridge; returns what was
    removed. Safe to call when nothing is there."""
    removed = []
    present = set(_ip("netns", "list", check=False).stdout.split())
    for n in nodes(count, instance):
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
    br = bridge(instance)
    if _ip("link", "show", br, check=False).returncode == 0:
        _ip("link", "del", br, check=False)
        removed.append(br)
    return removed
