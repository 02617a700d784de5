"""The codec: typed round trips, refusal of everything malformed, and a Hypothesis fuzz."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pexec.errors import LocalProtocolError, LocalUsageError, RemoteProtocolError
from p2pexec.ids import NodeId
from p2pexec.net.codec import (
    HEADER,
    Codec,
    FrameDecoder,
    Message,
    frame_bytes,
    message,
    negotiate,
    registered,
)
from p2pexec.net.config import CodecLimits

A = NodeId(bytes(range(32)))


@message(900)
@dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: float


@message(901)
@dataclass(frozen=True, slots=True)
class Everything:
    n: int
    f: float
    ok: bool
    name: str
    blob: bytes
    node: NodeId
    maybe: NodeId | None
    nums: tuple[int, ...]
    pair: tuple[str, int]
    items: list[str]
    table: dict[str, int]
    point: Point
    inner: Message
    extra: Any


@message(902)
@dataclass(frozen=True, slots=True)
class Blob:
    data: bytes


@message(903)
@dataclass(frozen=True, slots=True)
class Anything:
    value: Any


@message(904)
@dataclass(frozen=True, kw_only=True)
class KeywordsOnly:
    a: int
    b: str = "x"


def everything() -> Everything:
    return Everything(n=-5, f=2.5, ok=True, name="héllo", blob=b"\x00\xff", node=A, maybe=None,
                      nums=(1, 2, 3), pair=("a", 1), items=["x", "y"], table={"k": 7},
                      point=Point(1, 2.0), inner=Point(3, 4.5),
                      extra={"a": (1, 2, {"b": None})})


def test_round_trip_of_every_field_kind() -> None:
    codec = Codec()
    assert codec.decode(codec.encode(everything())) == everything()


def test_keyword_only_fields_round_trip() -> None:
    codec = Codec()
    assert codec.decode(codec.encode(KeywordsOnly(a=1, b="y"))) == KeywordsOnly(a=1, b="y")


def test_wire_form_is_code_then_fields() -> None:
    assert msgpack.unpackb(Codec().encode(Point(1, 2.0))) == [900, 1, 2.0]


def test_registry_lists_codes_and_refuses_collisions() -> None:
    assert registered()[900] is Point
    with pytest.raises(LocalUsageError, match="code 900 is taken by Point"):
        @message(900)
        @dataclass(frozen=True)
        class Other:
            a: int


def test_only_frozen_dataclasses_can_register() -> None:
    with pytest.raises(LocalUsageError, match="frozen dataclass"):
        @message(950)
        @dataclass
        class Mutable:
            a: int


def test_unregistered_message_cannot_be_encoded() -> None:
    @dataclass(frozen=True)
    class Loose:
        a: int

    with pytest.raises(LocalProtocolError, match="not a registered message"):
        Codec().encode(Loose(1))


@pytest.mark.parametrize(("body", "reason"), [
    (msgpack.packb([999, 1]), "unknown message type 999"),
    (msgpack.packb([900, 1]), "Point has 2 fields, got 1"),
    (msgpack.packb([900, "1", 2.0]), r"field Point.x: expected int, got str"),
    (msgpack.packb(["900", 1, 2.0]), "type code must be an int"),
    (msgpack.packb({"a": 1}), r"expected \[type, fields...\], got dict"),
    (msgpack.packb([]), r"expected \[type, fields...\]"),
    (b"\xc1", "malformed message"),
    (msgpack.packb([900, 1, 2.0]) + b"\x00", "malformed message"),
    (b"\x92\x01", "malformed message"),
    (msgpack.packb([903, msgpack.ExtType(5, b"x")]), "malformed message"),
])
def test_malformed_bodies_raise_remote_protocol_error(body: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        Codec().decode(body)


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    """The message array is level 1; 7 more levels fit a limit of 8, 8 more do not."""
    codec = Codec(CodecLimits(max_depth=8))
    ok: Any = None
    expected: Any = None
    for _ in range(7):
        ok = [ok]
        expected = (expected,)
    assert codec.decode(msgpack.packb([903, ok])) == Anything(expected)
    deep = [ok]
    with pytest.raises(RemoteProtocolError, match="deeper than the depth limit"):
        codec.decode(msgpack.packb([903, deep]))


def test_msgpack_bomb_nesting_is_refused() -> None:
    body = b"\x92" + msgpack.packb(903) + b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(RemoteProtocolError, match="nested too deeply"):
        Codec().decode(body)


def test_length_limits_are_enforced() -> None:
    codec = Codec(CodecLimits(max_str_len=10, max_bin_len=10, max_collection_len=3))
    assert codec.decode(codec.encode(Anything("0123456789"))) == Anything("0123456789")
    for value in ["01234567890", b"01234567890", (1, 2, 3, 4), {1: 1, 2: 2, 3: 3, 4: 4}]:
        with pytest.raises(RemoteProtocolError, match="malformed message"):
            codec.decode(msgpack.packb([903, value], use_bin_type=True))


def test_encoding_over_the_frame_limit_is_a_local_error() -> None:
    codec = Codec(CodecLimits(max_frame_size=100))
    with pytest.raises(LocalProtocolError, match="over the 100-byte frame limit"):
        codec.encode(Blob(b"x" * 200))


def test_node_id_fields_must_be_32_bytes() -> None:
    body = msgpack.packb([901, *msgpack.unpackb(Codec().encode(everything()))[1:]])
    fields = msgpack.unpackb(body)
    fields[6] = b"short"
    with pytest.raises(RemoteProtocolError, match=r"Everything\.node: expected 32-byte node id"):
        Codec().decode(msgpack.packb(fields, use_bin_type=True))


def test_frame_decoder_splits_any_chunking() -> None:
    bodies = [b"", b"a", b"bc" * 100, b"xyz"]
    stream = b"".join(frame_bytes(b, 1000) for b in bodies)
    for step in (1, 3, 7, len(stream)):
        dec = FrameDecoder(1000)
        got = []
        for i in range(0, len(stream), step):
            got += dec.feed(stream[i:i + step])
        assert got == bodies
        assert not dec.partial


def test_frame_claiming_4_gib_is_refused_from_its_header() -> None:
    dec = FrameDecoder(16 * 1024 * 1024)
    with pytest.raises(RemoteProtocolError, match="4294967295 bytes announced"):
        dec.feed(HEADER.pack(0xFFFFFFFF) + b"x" * 10)


def test_partial_frame_is_reported() -> None:
    dec = FrameDecoder(100)
    assert dec.feed(HEADER.pack(5)) == []
    assert dec.partial
    assert dec.feed(b"hello") == [b"hello"]
    assert not dec.partial


def test_version_negotiation() -> None:
    assert negotiate(1, 3, 2, 5) == 3
    with pytest.raises(RemoteProtocolError, match="peer speaks 4-5, we speak 1-3"):
        negotiate(1, 3, 4, 5)


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4).map(tuple)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bodies_decode_or_raise_protocol_error(body: bytes) -> None:
    try:
        Codec(CodecLimits(max_depth=6)).decode(body)
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(plain)
def test_fuzz_any_plain_value_round_trips(value: Any) -> None:
    codec = Codec()
    assert codec.decode(codec.encode(Anything(value))) == Anything(value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20), st.lists(st.integers(1, 50), min_size=1))
def test_fuzz_frame_decoder_reassembles_any_split(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame_bytes(b, 300) for b in bodies)
    dec = FrameDecoder(300)
    got: list[bytes] = []
    pos = i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += dec.feed(stream[pos:pos + step])
        pos += step
        i += 1
    assert got == bodies
    assert not dec.partial


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 3, 70_000, 200_000, 65_535, 65_536]), max_size=8),
       st.lists(st.integers(1, 90_000), min_size=1), st.lists(st.booleans(), min_size=1))
def test_fuzz_large_frames_reassemble_under_any_split_and_frame_budget(
        sizes: list[int], cuts: list[int], one_at_a_time: list[bool]) -> None:
    """Frames over LARGE_FRAME take their own buffer; with max_frames=1 the rest waits."""
    bodies = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    stream = b"".join(frame_bytes(b, 1 << 20) for b in bodies)
    dec = FrameDecoder(1 << 20)
    got: list[bytes] = []
    pos = i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        budget = 1 if one_at_a_time[i % len(one_at_a_time)] else None
        got += dec.feed(stream[pos:pos + step], max_frames=budget)
        pos += step
        i += 1
    while True:  # frames held back by the budget come out on empty feeds
        more = dec.feed(b"", max_frames=1)
        if not more:
            break
        got += more
    assert got == bodies
    assert not dec.partial


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60), st.integers(0, 59))
def test_fuzz_mutated_valid_bodies_never_escape_protocol_error(noise: bytes, at: int) -> None:
    good = Codec().encode(everything())
    at = min(at, len(good))
    body = good[:at] + noise + good[at + len(noise):]
    try:
        Codec().decode(body)
    except RemoteProtocolError:
        pass


def test_an_int_msgpack_cannot_hold_is_a_local_protocol_error() -> None:
    """msgpack ints stop at 2**64 - 1: one more is our bug, reported as the docstring says."""
    codec = Codec()
    with pytest.raises(LocalProtocolError, match="cannot encode Point"):
        codec.encode(Point(2**64, 1.0))
    with pytest.raises(LocalProtocolError, match="cannot encode Point"):
        codec.encode(Point(-(2**63) - 1, 1.0))
    assert codec.decode(codec.encode(Point(2**64 - 1, 1.0))) == Point(2**64 - 1, 1.0)
