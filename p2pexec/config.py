"""The node's settings, composed from each layer's own frozen config.

Every default is documented where it is defined (`exec.config`, `net.config`,
`gossip.config`); this module only gathers them and names the presets.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from p2pexec.dht.config import DhtConfig
from p2pexec.errors import LocalUsageError
from p2pexec.exec.config import ExecConfig
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
    """Custom resources this node offers besides CPUs, e.g. {"gpu": 1}."""
    name: str = field(default_factory=socket.gethostname)
    """Shown in `p2pexec status` and `px.nodes()`; defaults to the host name."""
    cluster: ClusterConfig | None = None
    """Join a cluster (`p2pexec join`); None runs the node alone, with no network."""

    @classmethod
    def embedded(cls, num_cpus: float | None = None,
                 resources: dict[str, float] | None = None,
                 cluster: ClusterConfig | None = None,
                 object_store_memory: int | None = None) -> NodeConfig:
        """A node inside the user's process: no daemon and no configuration; it joins a
        cluster only when given a `ClusterConfig`."""
        return cls(exec=ExecConfig(num_cpus=num_cpus, object_store_memory=object_store_memory),
                   resources=dict(resources or {}), cluster=cluster)
