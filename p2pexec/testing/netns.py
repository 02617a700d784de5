"""Real networks for tests: one Linux network namespace per node, joined by a bridge.

A hub namespace holds a bridge; each node namespace i has one veth `eth0` with address
10.77.0.i/24 whose other end (`v<i>`) is a port of that bridge. The host's own interfaces
and routes are never touched (every link is created inside a namespace), and nodes can
reach only each other's 10.77.0.x addresses: the node namespaces have no default route.
Taking `v<i>` down partitions node i; bringing it up heals it.

    with netns_cluster(3) as net:              # needs root; see `netns_skip_reason`
        proc = net.run(1, [sys.executable, "-m", "p2pexec", ...])
        net.link_down(1)
        ...
    # every process started by `run` is killed and every namespace deleted, even on failure

Setting up three nodes takes ~0.2 s. Names carry the pid (`px<pid>x<k>h`,
`px<pid>x<k>n<i>`) so concurrent test runs never collide, and namespaces left behind by
a test run that was killed are removed by the next one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from p2pexec.processes import pid_alive

log = logging.getLogger("p2pexec.testing.netns")

SUBNET_PREFIX = "10.77.0"
"""Node i gets SUBNET_PREFIX.i/24; the subnet is private to the namespaces."""

MAX_NODES = 250

_NAME_RE = re.compile(r"px(\d+)x\d+(?:h|n\d+)")
_counter = count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip`; with `check`, a failure raises with ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


@functools.cache
def netns_skip_reason() -> str | None:
    """Why namespace tests cannot run here (not root, no `ip`, `ip netns add` refused),
    or None when they can. Probed once per process by adding and deleting a namespace."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    if shutil.which("ip") is None:
        return "network namespace tests need iproute2's `ip`"
    probe = f"px{os.getpid()}x{next(_counter)}h"
    added = _ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` failed: {added.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def netns_available() -> bool:
    """True when `netns_cluster` can run on this machine (see `netns_skip_reason`)."""
    return netns_skip_reason() is None


    return True


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces this module made for processes that no longer exist; return them."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    stale = []
    for line in listed:
        name = line.split(" ", 1)[0]
        match = _NAME_RE.fullmatch(name)
        if match and not pid_alive(int(match.group(1))):
            _ip("netns", "del", name, check=False)
            stale.append(name)
    return stale


@dataclass
class NetnsCluster:
    """A handle on the namespaces of one `netns_cluster`: nodes are numbered 1..n."""

    hub: str
    nodes: dict[int, str]
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def indices(self) -> list[int]:
        """Node numbers, 1..n: node i is `address(i)` in namespace `namespace(i)`."""
        return sorted(self.nodes)

    def namespace(self, i: int) -> str:
        return self.nodes[i]

    def address(self, i: int) -> str:
        """Node i's IPv4 address on the bridge."""
        self._check(i)
        return f"{SUBNET_PREFIX}.{i}"

    def command(self, i: int, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside node i's namespace (for callers that own the process)."""
        return ["ip", "netns", "exec", self.namespace(i), *argv]

    def run(self, i: int, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside node i's namespace, in its own process group; it is killed
        (with its children) when the cluster is torn down."""
        proc = subprocess.Popen(self.command(i, argv), start_new_session=True, **popen_kwargs)
        self.processes.append(proc)
        return proc

    def call(self, i: int, argv: Sequence[str],
             timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a short command inside node i's namespace and return its output."""
        return subprocess.run(self.command(i, argv), capture_output=True, text=True,
                              timeout=timeout, check=False)

    def link_down(self, i: int) -> None:
        """Cut node i off the bridge: a partition of node i from everyone else."""
        _ip("-n", self.hub, "link", "set", f"v{self._check(i)}", "down")

    def link_up(self, i: int) -> None:
        """Reconnect node i to the bridge: heals `link_down`."""
        _ip("-n", self.hub, "link", "set", f"v{self._check(i)}", "up")

    def kill_all(self) -> None:
        """Kill every process `run` started (its whole process group) and reap it."""
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.processes.clear()

    def _check(self, i: int) -> int:
        if i not in self.nodes:
            raise KeyError(f"no node {i}; nodes are {self.indices}")
        return i


@contextlib.contextmanager
def netns_cluster(n: int) -> Iterator[NetnsCluster]:
    """Create a hub bridge and `n` node namespaces (10.77.0.1 .. 10.77.0.n); remove them,
    and kill every process started in them through the handle, on exit."""
    if not 1 <= n <= MAX_NODES:
        raise ValueError(f"netns_cluster takes 1..{MAX_NODES} nodes, got {n}")
    reason = netns_skip_reason()
    if reason is not None:
        raise RuntimeError(reason)
    remove_stale_namespaces()
    base = f"px{os.getpid()}x{next(_counter)}"
    cluster = NetnsCluster(hub=f"{base}h", nodes={i: f"{base}n{i}" for i in range(1, n + 1)})
    created: list[str] = []
    try:
        _ip("netns", "add", cluster.hub)
        created.append(cluster.hub)
        _ip("-n", cluster.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", cluster.hub, "link", "set", "br0", "up")
        for i, ns in cluster.nodes.items():
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", cluster.hub, "link", "add", f"v{i}", "type", "veth",
                "peer", "name", "eth0", "netns", ns)
            _ip("-n", cluster.hub, "link", "set", f"v{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET_PREFIX}.{i}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "up")
        yield cluster
    finally:
        cluster.kill_all()
        for ns in reversed(created):  # deleting a namespace removes its veth end too
            done = _ip("netns", "del", ns, check=False)
            if done.returncode != 0:
                log.warning("could not delete namespace %s: %s", ns, done.stderr.strip())
