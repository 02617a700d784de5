"""Test and simulation support: an in-memory network on trio's clock and the transport
conformance suite. Public like `trio.testing`, never imported by `p2pexec` itself."""

from p2pexec.testing.simnet import (
    LinkSpec,
    NodeCrashedError,
    NodeStats,
    Partition,
    SimConnection,
    SimNetwork,
    SimTransport,
)

__all__ = [
    "LinkSpec",
    "NodeCrashedError",
    "NodeStats",
    "Partition",
    "SimConnection",
    "SimNetwork",
    "SimTransport",
]
