"""The DHT's wire messages (codes 64-95): contacts, signed records, and the four RPCs.

Every request travels in the RPC envelope (`net.messages.Request`) and is answered there.
A record is signed by its publisher's node key, so any node can check, without asking
anyone, that a record about node P was published by P: that is what lets replicas be
handed over between nodes while "a peer can only publish records about itself" holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pexec.ids import NodeId
from p2pexec.net.codec import message
from p2pexec.net.transport import Address

KEY_SIZE = 32
"""Keys and node ids share one 256-bit space (node id = SHA-256 of the node's key)."""


@message(64)
@dataclass(frozen=True, slots=True)
class Contact:
    """A node and where it listens."""

    node: NodeId
    address: Address


@message(65)
@dataclass(frozen=True, slots=True)
class Record:
    """One publisher's value under a key. A higher `seq` from the same publisher replaces
    a lower one; an empty `value` withdraws the record (a tombstone, kept until it
    expires so that an older copy handed over later cannot bring the record back)."""

    key: bytes
    publisher: NodeId
    public_key: bytes
    """The publisher's raw Ed25519 key: its SHA-256 must be `publisher`."""
    seq: int
    value: bytes
    signature: bytes
    """Ed25519 signature of `signed_bytes(key, seq, value)` by `public_key`."""

    @property
    def withdrawn(self) -> bool:
        return not self.value


@message(66)
@dataclass(frozen=True, slots=True)
class DhtPing:
    """Are you there? (sent to the least recently seen contact of a full bucket)."""


@message(67)
@dataclass(frozen=True, slots=True)
class DhtPong:
    """Yes."""


@message(68)
@dataclass(frozen=True, slots=True)
class FindNode:
    """The k contacts closest to `target` that you know."""

    target: bytes


@message(69)
@dataclass(frozen=True, slots=True)
class FindValue:
    """The records you hold under `key`, and your closest contacts to it."""

    key: bytes


@message(70)
@dataclass(frozen=True, slots=True)
class Nodes:
    """Answer to FindNode."""

    contacts: list[Contact]


@message(71)
@dataclass(frozen=True, slots=True)
class Values:
    """Answer to FindValue: the live records held (possibly none) and closer contacts."""

    records: list[Record]
    contacts: list[Contact]


@message(72)
@dataclass(frozen=True, slots=True)
class Store:
    """Keep these records for `ttl` seconds (capped by the receiver's own record_ttl)."""

    records: list[Record]
    ttl: float


@message(73)
@dataclass(frozen=True, slots=True)
class Stored:
    """Answer to Store: how many were kept, and why each refused one was refused."""

    accepted: int
    refused: list[str]


def signed_bytes(key: bytes, seq: int, value: bytes) -> bytes:
    """What a record's signature covers (the TTL is not: it shrinks as copies move)."""
    return b"p2pexec dht record v1\0" + key + seq.to_bytes(8, "big") + value
