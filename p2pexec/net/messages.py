"""The net package's own wire messages (codes 0-31): the handshake and the RPC envelopes."""

from __future__ import annotations

from dataclasses import dataclass

from p2pexec.ids import NodeId
from p2pexec.net.codec import Message, message

MAGIC = "p2pexec"
"""First field of every hello: a peer speaking something else is refused by name."""


@message(0)
@dataclass(frozen=True, slots=True)
class Hello:
    """First message each side sends after TLS: who it claims to be, what it speaks."""

    magic: str
    min_version: int
    max_version: int
    node_id: NodeId
    nonce: bytes


@message(1)
@dataclass(frozen=True, slots=True)
class TokenProof:
    """Second message: HMAC of the token over both certificates (`security.token_proof`)."""

    mac: bytes


@message(2)
@dataclass(frozen=True, slots=True)
class Request:
    """An RPC call; the answer carries the same `call_id`."""

    call_id: int
    body: Message


@message(3)
@dataclass(frozen=True, slots=True)
class Response:
    """The successful answer to request `call_id`."""

    call_id: int
    body: Message


@message(4)
@dataclass(frozen=True, slots=True)
class Failure:
    """Request `call_id` failed on the remote side: `kind` names the exception class."""

    call_id: int
    kind: str
    text: str


@message(5)
@dataclass(frozen=True, slots=True)
class Cancel:
    """The caller gave up on `call_id`: the callee may stop working on it."""

    call_id: int
