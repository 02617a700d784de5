"""The node's settings, composed from each layer's own frozen config.

Every default is documented where it is defined (`exec.config`, `net.config`,
`gossip.config`); this module only gathers them and names the presets.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from p2pexec.exec.config import ExecConfig


@dataclass(frozen=True)
class NodeConfig:
    exec: ExecConfig = field(default_factory=ExecConfig)
    """Worker pool, inline threshold, prefetch, retries."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom resources this node offers besides CPUs, e.g. {"gpu": 1}."""
    name: str = field(default_factory=socket.gethostname)
    """Shown in `p2pexec status` and `px.nodes()`; defaults to the host name."""

    @classmethod
    def embedded(cls, num_cpus: float | None = None,
                 resources: dict[str, float] | None = None) -> NodeConfig:
        """A node inside the user's process: no daemon, no network, no configuration."""
        return cls(exec=ExecConfig(num_cpus=num_cpus), resources=dict(resources or {}))
