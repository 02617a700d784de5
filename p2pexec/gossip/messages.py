"""The messages gossip exchanges: probes, membership updates, load, and full-state sync.

Probe messages (Ping, IndirectPing, Ack, Nack) travel as datagrams, with membership and load
updates piggybacked on them. `PushPull` carries a whole member table over a reliable stream.
All are frozen value objects registered with `p2pexec.net.codec` under gossip's codes
32-63; `wire.py` frames them into datagrams and stream messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

from p2pexec.ids import NodeId
from p2pexec.net.codec import Message as AnyMessage
from p2pexec.net.codec import message
from p2pexec.net.transport import Address

MAX_RESOURCES = 64
"""Most custom resources one node may advertise."""

MAX_RESOURCE_NAME_BYTES = 64
"""Longest resource name ("CPU", "gpu", "memory_gb"...): names, like the whole `Alive`,
must fit in one gossip packet."""

MAX_COUNTER = 2**62
"""Incarnations, load versions, sequence numbers and task counts are below this. An honest
node counts up one at a time and never gets near it; a peer's claim of 2**64 - 1 (all that
msgpack can carry) would otherwise make our own +1 unencodable and stop gossip."""


LIFE_SHIFT = 24
"""An incarnation holds the node's life (how many times its process has started, counted
in its data dir) above this bit and the refutations of that life below it. A restarted
process so outbids all its former life said without waiting to be suspected, and its
peers see that the process changed: what the old one ran or held is gone (the member's
`FAILED` then `JOINED`). 2**24 refutations in one life is far beyond an honest node's."""

MAX_LIFE = (MAX_COUNTER >> LIFE_SHIFT) - 1
"""The largest life an incarnation can carry."""


def life_of(incarnation: int) -> int:
    """The life (process start) an incarnation belongs to."""
    return incarnation >> LIFE_SHIFT


class State(IntEnum):
    """A member's state. At one incarnation the higher value wins (see table.py)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


def check_resources(resources: dict[str, float]) -> None:
    """Advertised resources must be a few finite, non-negative amounts (a peer's claim of
    NaN or infinite CPUs must not reach the scheduler)."""
    if len(resources) > MAX_RESOURCES:
        raise ValueError(f"more than {MAX_RESOURCES} resources advertised")
    for name, amount in resources.items():
        if not name or len(name.encode()) > MAX_RESOURCE_NAME_BYTES:
            raise ValueError(f"resource name {name[:80]!r} is not 1..{MAX_RESOURCE_NAME_BYTES} "
                             f"bytes long")
        if not (math.isfinite(amount) and amount >= 0):
            raise ValueError(f"resource {name!r} has invalid amount {amount!r}")


def check_counter(what: str, value: int) -> None:
    """A counter must be in 0..MAX_COUNTER - 1 (`ValueError`, which the codec reports as
    the peer's `RemoteProtocolError`)."""
    if not 0 <= value < MAX_COUNTER:
        raise ValueError(f"{what} {value} is outside 0..{MAX_COUNTER - 1}")


MAX_HOST_BYTES = 255
"""Longest host name in an address (DNS's limit)."""


def check_address(address: Address) -> None:
    """A gossiped address must be one a socket can take: a non-empty printable host of at
    most MAX_HOST_BYTES bytes and a port in 1..65535. Else `ValueError` (at decode: the
    peer's `RemoteProtocolError`), so a bad claim never reaches sendto or connect."""
    host, port = address
    if not 1 <= port <= 65535:
        raise ValueError(f"address port {port} is outside 1..65535")
    if not host or not host.isprintable() or len(host.encode()) > MAX_HOST_BYTES:
        raise ValueError(f"address host {host[:64]!r} is not a printable name of "
                         f"1..{MAX_HOST_BYTES} bytes")


_STATES = frozenset(int(s) for s in State)


@message(32)
@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there? `target` guards against a different node now living at the address."""

    seq: int
    target: NodeId
    sender: NodeId

    def __post_init__(self) -> None:
        check_counter("seq", self.seq)


@message(33)
@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Please probe `target` at `target_address` for me and forward its ack (SWIM ping-req).
    With `nack`, answer with a Nack if the target stays silent (Lifeguard)."""

    seq: int
    target: NodeId
    target_address: Address
    sender: NodeId
    nack: bool = True

    def __post_init__(self) -> None:
        check_counter("seq", self.seq)
        check_address(self.target_address)


@message(34)
@dataclass(frozen=True, slots=True)
class Ack:
    """Reply to a Ping (or forwarded reply to an IndirectPing) with the prober's seq."""

    seq: int
    sender: NodeId

    def __post_init__(self) -> None:
        check_counter("seq", self.seq)


@message(35)
@dataclass(frozen=True, slots=True)
class Nack:
    """An intermediary reached no one: the target did not answer it either."""

    seq: int
    sender: NodeId

    def __post_init__(self) -> None:
        check_counter("seq", self.seq)


@message(36)
@dataclass(frozen=True, slots=True)
class Alive:
    """`node` is alive at `incarnation`, reachable at `address`, advertising `resources`.
    Only the node itself raises its incarnation (to refute a suspicion or change resources)."""

    node: NodeId
    incarnation: int
    name: str
    address: Address
    resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_counter("incarnation", self.incarnation)
        check_address(self.address)
        check_resources(self.resources)


@message(37)
@dataclass(frozen=True, slots=True)
class Suspect:
    """`origin` suspects `node` at `incarnation`; independent origins confirm each other."""

    node: NodeId
    incarnation: int
    origin: NodeId

    def __post_init__(self) -> None:
        check_counter("incarnation", self.incarnation)


@message(38)
@dataclass(frozen=True, slots=True)
class Dead:
    """`origin`'s suspicion of `node` at `incarnation` ran out: it is declared failed."""

    node: NodeId
    incarnation: int
    origin: NodeId

    def __post_init__(self) -> None:
        check_counter("incarnation", self.incarnation)


@message(39)
@dataclass(frozen=True, slots=True)
class Left:
    """`node` left gracefully at `incarnation`: it is gone, but it did not fail."""

    node: NodeId
    incarnation: int

    def __post_init__(self) -> None:
        check_counter("incarnation", self.incarnation)


@message(40)
@dataclass(frozen=True, slots=True)
class LoadUpdate:
    """`node`'s load sample number `version` (a counter the node alone raises)."""

    node: NodeId
    version: int
    queue_length: int
    running_tasks: int

    def __post_init__(self) -> None:
        check_counter("version", self.version)
        check_counter("queue_length", self.queue_length)
        check_counter("running_tasks", self.running_tasks)


MemberUpdate = Alive | Suspect | Dead | Left | LoadUpdate
"""Updates that change the member table; they are what gets piggybacked."""


@message(41)
@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One row of a full-state exchange."""

    node: NodeId
    name: str
    address: Address
    incarnation: int
    state: int
    """A `State` value (sent as a plain int)."""
    resources: dict[str, float]
    load_version: int
    queue_length: int
    running_tasks: int

    def __post_init__(self) -> None:
        if self.state not in _STATES:
            raise ValueError(f"unknown member state {self.state!r}")
        check_counter("incarnation", self.incarnation)
        check_counter("load_version", self.load_version)
        check_counter("queue_length", self.queue_length)
        check_counter("running_tasks", self.running_tasks)
        check_address(self.address)
        check_resources(self.resources)


@message(42)
@dataclass(frozen=True, slots=True)
class PushPull:
    """A full member table, sent over a stream; the other side answers with its own."""

    sender: NodeId
    join: bool
    members: tuple[MemberRecord, ...]


@message(43)
@dataclass(frozen=True, slots=True)
class Packet:
    """One datagram: a probe message first, piggybacked updates after."""

    msgs: tuple[AnyMessage, ...]


Message = Ping | IndirectPing | Ack | Nack | Alive | Suspect | Dead | Left | LoadUpdate | PushPull
