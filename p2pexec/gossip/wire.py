"""Bytes on the wire for gossip, through the shared `p2pexec.net.codec` registry.

A datagram is one `Packet` (a probe message, then piggybacked updates); a stream message
is one `PushPull`. The codec checks every field's type and its limits; here we also refuse
a packet nesting anything but gossip datagram messages, and a stream carrying anything but
a push-pull. Bad input raises `RemoteProtocolError` for that peer.
"""

from __future__ import annotations

from collections.abc import Sequence

from p2pexec.errors import LocalProtocolError, RemoteProtocolError
from p2pexec.gossip.config import MAX_DATAGRAM
from p2pexec.gossip.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    Left,
    LoadUpdate,
    Message,
    Nack,
    Packet,
    Ping,
    PushPull,
    Suspect,
)
from p2pexec.net.codec import Codec

PACKET_OVERHEAD = 5
"""Bytes of a `Packet` beyond its messages' own encodings: the outer array (1), the type
code (1) and the header of the message array (up to 3, for 16 to 65535 messages)."""
DATAGRAM_TYPES = (Ping, IndirectPing, Ack, Nack, Alive, Suspect, Dead, Left, LoadUpdate)

_codec = Codec()


def encoded_size(msg: Message) -> int:
    """Bytes `msg` adds to a datagram: used to fill packets up to max_packet_size."""
    return len(_codec.encode(msg))


def encode_packet(msgs: Sequence[Message]) -> bytes:
    """One datagram carrying `msgs` (a probe message first, piggybacked updates after)."""
    data = _codec.encode(Packet(tuple(msgs)))
    if len(data) > MAX_DATAGRAM:
        raise LocalProtocolError(f"gossip datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


def decode_packet(data: bytes) -> list[Message]:
    """The messages of one datagram; `RemoteProtocolError` on anything else."""
    if len(data) > MAX_DATAGRAM:
        raise RemoteProtocolError(f"gossip datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    packet = _codec.decode(data)
    if type(packet) is not Packet:
        raise RemoteProtocolError(f"expected a gossip packet, got {type(packet).__name__}")
    for msg in packet.msgs:
        if type(msg) not in DATAGRAM_TYPES:
            raise RemoteProtocolError(f"{type(msg).__name__} cannot travel in a gossip packet")
    return list(packet.msgs)


def encode_stream(msg: PushPull) -> bytes:
    """One push-pull message for a reliable connection."""
    return _codec.encode(msg)


def decode_stream(data: bytes) -> PushPull:
    """The push-pull of one stream message; `RemoteProtocolError` on anything else."""
    msg = _codec.decode(data)
    if type(msg) is not PushPull:
        raise RemoteProtocolError(f"expected a gossip push-pull, got {type(msg).__name__}")
    return msg
