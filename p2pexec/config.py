"""The node's settings, composed from each layer's own frozen config.

Every default is documented where it is defined (`exec.config`, `net.config`,
`gossip.config`); this module only gathers them and names the presets.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from p2pexec.dht.config import DhtConfig
from p2pexec.errors import LocalUsageError
from p2pexec.exec.config import ExecConfig
from p2pexec.exec.resources import CPU, GPU
from p2pexec.gossip.config import GossipConfig
from p2pexec.net.config import NetConfig
from p2pexec.net.discovery import DiscoveryConfig
from p2pexec.net.transport import WILDCARD_HOSTS, Address

DATA_DIR_ENV = "P2PEXEC_DATA_DIR"
DEFAULT_PORT = 7946
"""memberlist's and Serf's port: TCP for connections, UDP (same number) for gossip."""
CONTROL_SOCKET = "control.sock"
"""The unix socket, inside the data dir, through which local tools talk to a running node."""

PRESETS: dict[str, tuple[Callable[[], GossipConfig], Callable[[], DiscoveryConfig]]] = {
    "lan": (GossipConfig.lan, DiscoveryConfig.lan),
    "local": (GossipConfig.local, DiscoveryConfig.local),
}
"""`--gossip NAME`: membership and discovery timings for machines on a LAN (memberlist's
DefaultLANConfig, mDNS re-queried every minute) or for nodes on one machine (memberlist's
DefaultLocalConfig, peers re-reported every 5 s)."""


def default_data_dir() -> Path:
    """`$P2PEXEC_DATA_DIR`, else `$XDG_DATA_HOME/p2pexec`, else `~/.local/share/p2pexec`:
    where the node key and the control socket live (one node per data dir)."""
    explicit = os.environ.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "p2pexec"


def detect_gpus() -> int:
    """How many GPUs `nvidia-smi` lists (one index per line); 0 without it or when it
    fails, so a machine without NVIDIA's driver offers none rather than refusing to start."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return 0
    try:
        listed = subprocess.run([nvidia_smi, "--query-gpu=index", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.stdout.splitlines() if line.strip())


def control_socket_path(data_dir: Path) -> Path:
    """Where the node using `data_dir` listens for local tools (`p2pexec status`)."""
    return Path(data_dir) / CONTROL_SOCKET


@dataclass(frozen=True)
class ClusterConfig:
    """How a node joins a cluster (`p2pexec join`). Without it a node is embedded: no
    network at all."""

    token: str = field(repr=False)
    """The cluster secret. Whoever holds it can join and run code on every node (kept out
    of the repr, so a logged config never shows it)."""
    data_dir: Path = field(default_factory=default_data_dir)
    """Node key (0600) and control socket (0600); see `default_data_dir`."""
    host: str = "0.0.0.0"
    """Address to listen on (TCP and UDP). The wildcard listens on every interface."""
    port: int = DEFAULT_PORT
    """Port to listen on; 0 picks a free one. Nodes on one machine need distinct ports."""
    advertise_host: str | None = None
    """The address other nodes reach this one at. None: `host`, or for a wildcard host the
    first non-loopback IPv4 address of this machine."""
    peers: tuple[Address, ...] = ()
    """`--peer host:port` seeds, for networks that multicast does not reach."""
    mdns: bool = True
    """Find peers on the LAN with mDNS (`--no-mdns`: seeds only)."""
    gossip: GossipConfig = field(default_factory=GossipConfig.lan)
    """Membership timings; see `PRESETS` and `GossipConfig.failure_detection_bound`."""
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig.lan)
    """Discovery timings. Its mdns, seeds and interfaces fields are set from this config
    (`mdns`, `peers`, and the listen host when it is a concrete address)."""
    net: NetConfig = field(default_factory=NetConfig)
    """Transport timeouts and limits."""
    dht: DhtConfig = field(default_factory=DhtConfig)
    """Kademlia parameters (replication, lookup parallelism, timeouts, record lifetimes)."""
    first_message_timeout: float = 10.0
    """Seconds an incoming connection may stay silent before its first message says which
    service it wants; then it is dropped (a slot-holding idle peer costs at most this)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise LocalUsageError(f"port must be 0-65535, got {self.port}")
        if self.first_message_timeout <= 0:
            raise LocalUsageError("first_message_timeout must be positive")

    @classmethod
    def preset(cls, name: str, token: str, **settings: object) -> ClusterConfig:
        """A config with the gossip and discovery timings of `PRESETS[name]`."""
        if name not in PRESETS:
            raise LocalUsageError(f"unknown gossip preset {name!r}; choose from "
                                  f"{', '.join(PRESETS)}")
        gossip, discovery = PRESETS[name]
        return cls(token=token, gossip=gossip(), discovery=discovery(), **settings)  # type: ignore[arg-type]

    def discovery_config(self) -> DiscoveryConfig:
        """`discovery` with this node's mdns switch, seeds and mDNS interfaces."""
        wildcard = self.host in WILDCARD_HOSTS
        interfaces = self.discovery.interfaces if wildcard else (self.host,)
        return dataclasses.replace(self.discovery, mdns=self.mdns, seeds=self.peers,
                                   interfaces=interfaces)


@dataclass(frozen=True)
class NodeConfig:
    exec: ExecConfig = field(default_factory=ExecConfig)
    """Worker pool, inline threshold, prefetch, retries."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom resources this node offers besides CPUs and GPUs, e.g. {"tpu": 1}."""
    num_gpus: int = 0
    """GPUs this node offers as "GPU" (Ray's name): tasks asking for them get indices
    0..num_gpus-1 in `CUDA_VISIBLE_DEVICES`. `p2pexec join` and `px.init` count them with
    `detect_gpus` unless told; a config built by hand offers none unless it says so."""
    name: str = field(default_factory=socket.gethostname)
    """Shown in `p2pexec status` and `px.nodes()`; defaults to the host name."""
    cluster: ClusterConfig | None = None
    """Join a cluster (`p2pexec join`); None runs the node alone, with no network."""

    def __post_init__(self) -> None:
        if (isinstance(self.num_gpus, bool) or not isinstance(self.num_gpus, (int, float))
                or self.num_gpus < 0 or self.num_gpus != int(self.num_gpus)):
            raise LocalUsageError(f"num_gpus must be a whole number of GPUs (0 or more), "
                                  f"got {self.num_gpus!r}")
        if GPU in self.resources:
            raise LocalUsageError("give a node's GPUs with num_gpus= (`p2pexec join --gpus`), "
                                  "not as the custom resource 'GPU'")

    def offered(self) -> dict[str, float]:
        """Everything this node offers tasks: CPUs, GPUs and custom resources."""
        gpus = {GPU: float(self.num_gpus)} if self.num_gpus else {}
        return {CPU: self.exec.cpus(), **gpus, **self.resources}

    @classmethod
    def embedded(cls, num_cpus: float | None = None,
                 resources: dict[str, float] | None = None,
                 cluster: ClusterConfig | None = None,
                 object_store_memory: int | None = None,
                 num_gpus: int | None = None) -> NodeConfig:
        """A node inside the user's process: no daemon and no configuration; it joins a
        cluster only when given a `ClusterConfig`. `num_gpus` None: `detect_gpus()`."""
        return cls(exec=ExecConfig(num_cpus=num_cpus, object_store_memory=object_store_memory),
                   resources=dict(resources or {}), cluster=cluster,
                   num_gpus=detect_gpus() if num_gpus is None else num_gpus)
