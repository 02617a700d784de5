"""The one seam between the node and the network.

Everything above `net/` (gossip, dht, exec) talks to a `Transport`: best-effort
datagrams and reliable, ordered, authenticated message connections between node
addresses (memberlist's split between packets and streams). The TCP+TLS implementation
is production; `p2pexec.testing.SimNetwork` implements the same protocol in memory.
Both pass `p2pexec.testing.conformance`.

Messages here are opaque `bytes`: framing and typed messages live in `net.codec`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import trio

from p2pexec.ids import NodeId

Address = tuple[str, int]
"""Where a node listens: (host, port). SimNetwork hands out addresses of its own."""

WILDCARD_HOSTS = ("", "0.0.0.0", "::")
"""Listen hosts meaning "every interface": never an address another node can reach."""


def format_address(address: Address) -> str:
    """host:port, IPv6 hosts in brackets (as `--peer` takes them)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Peer:
    """An authenticated remote node: its id was proven by its key during the handshake."""

    node_id: NodeId
    address: Address


@runtime_checkable
class Connection(Protocol):
    """A reliable, ordered, authenticated channel of whole messages to one peer."""

    @property
    def peer(self) -> Peer: ...

    async def send(self, message: bytes) -> None:
        """Queue one message; raises `trio.BrokenResourceError` once the link is gone."""

    async def send_many(self, messages: list[bytes]) -> None:
        """Send several messages in one write where the implementation can coalesce."""

    async def receive(self) -> bytes:
        """Next message; raises `trio.EndOfChannel` on a clean close and
        `trio.BrokenResourceError` when the link broke."""

    async def aclose(self) -> None: ...


ConnectionHandler = Callable[[Connection], Awaitable[None]]


@runtime_checkable
class Transport(Protocol):
    """Streams and datagrams between nodes. Implementations: TCP+TLS, SimNetwork."""

    @property
    def local(self) -> Peer:
        """This node: its id and the address others reach it at (valid once serving)."""

    async def bind(self) -> Address:
        """Claim the address this node listens at (idempotent) and return it, before
        `serve` runs: others can be told where to reach us first."""

    async def serve(self, handler: ConnectionHandler, *,
                    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections forever, running `handler` for each authenticated one in
        its own task. `task_status.started(address)` once listening."""

    async def connect(self, address: Address, expected: NodeId | None = None) -> Connection:
        """Open an authenticated connection; `expected` pins the peer's node id."""

    async def send_datagram(self, address: Address, payload: bytes) -> None:
        """Best effort: may be lost, duplicated or reordered; never raises for a dead peer."""

    async def receive_datagram(self) -> tuple[Address, bytes]:
        """Next authenticated datagram and the address it came from."""

    async def aclose(self) -> None:
        """Stop serving and close every connection."""
