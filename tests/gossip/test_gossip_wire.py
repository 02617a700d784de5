"""Gossip bytes on the wire: round trips, and refusal of anything malformed."""

from __future__ import annotations

import msgpack
import pytest

from p2pexec.errors import RemoteProtocolError
from p2pexec.gossip.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    Left,
    LoadUpdate,
    MemberRecord,
    Nack,
    Ping,
    PushPull,
    State,
    Suspect,
)
from p2pexec.gossip.wire import decode_packet, decode_stream, encode_packet, encode_stream
from p2pexec.ids import NodeId

A, B = NodeId(b"\x01" * 32), NodeId(b"\x02" * 32)
ALL = [Ping(1, A, B), IndirectPing(2, A, ("10.0.0.1", 7946), B, True), Ack(3, A), Nack(4, B),
       Alive(A, 5, "a", ("10.0.0.1", 7946), {"CPU": 2.0, "gpu": 1.0}), Suspect(A, 6, B),
       Dead(A, 7, B), Left(B, 8), LoadUpdate(A, 9, 10, 11)]


def test_every_datagram_message_round_trips_in_one_packet():
    assert decode_packet(encode_packet(ALL)) == ALL


def test_push_pull_round_trips():
    msg = PushPull(A, True, (MemberRecord(A, "a", ("h", 1), 2, State.SUSPECT, {"CPU": 1.0},
                                          3, 4, 5),))
    assert decode_stream(encode_stream(msg)) == msg


@pytest.mark.parametrize("data", [
    b"\xc1",                                                   # not msgpack
    msgpack.packb([43, [[32, 1, b"short", b"\x02" * 32]]]),    # bad node id
    msgpack.packb([43, [[36, b"\x01" * 32, 0, "a", ["h", 1], {"CPU": float("nan")}]]]),
    msgpack.packb([43, [[42, b"\x01" * 32, True, []]]]),       # push-pull inside a packet
    msgpack.packb([32, 1, b"\x01" * 32, b"\x02" * 32]),        # a bare ping, no packet
    msgpack.packb([43, [[99, 1]]]),                            # unknown type
])
def test_malformed_datagrams_raise_remote_protocol_error(data):
    with pytest.raises(RemoteProtocolError):
        decode_packet(data)


def test_a_stream_must_carry_a_push_pull_with_known_states():
    with pytest.raises(RemoteProtocolError):
        decode_stream(encode_packet([Ack(1, A)]))
    bad_state = msgpack.packb([42, b"\x01" * 32, False,
                               [[b"\x01" * 32, "a", ["h", 1], 0, 9, {}, 0, 0, 0]]])
    with pytest.raises(RemoteProtocolError):
        decode_stream(bad_state)
