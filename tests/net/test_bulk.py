"""Bulk channels: the sealed frames (no I/O) and their connections on a real TCP port."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from p2pexec.errors import AuthenticationError, RemoteProtocolError
from p2pexec.net import bulk
from p2pexec.net.bulk import TAG_SIZE, BulkCipher, BulkOffer, BulkTransport, receive_exactly
from p2pexec.net.codec import Codec
from p2pexec.net.tcp import TcpTransport
from p2pexec.net.transport import Address

FRAME = 8192


def sealed_frames(offer: BulkOffer, data: bytes) -> list[bytes]:
    cipher = BulkCipher(offer)
    out = bytearray(offer.frame_size + TAG_SIZE)
    return [bytes(cipher.seal_into(start, memoryview(data)[start:start + offer.frame_size],
                                   out))
            for start in range(0, len(data), offer.frame_size)]


def open_all(offer: BulkOffer, frames: list[bytes], offsets: list[int]) -> bytes:
    cipher = BulkCipher(offer)
    got = bytearray()
    for frame, offset in zip(frames, offsets, strict=True):
        out = bytearray(len(frame) - TAG_SIZE)
        cipher.open_into(offset, memoryview(frame), memoryview(out))
        got += out
    return bytes(got)


def test_frames_open_to_the_data_they_sealed():
    offer = BulkOffer.new(FRAME)
    data = os.urandom(3 * FRAME + 100)
    frames = sealed_frames(offer, data)
    assert [len(f) for f in frames] == [FRAME + TAG_SIZE] * 3 + [100 + TAG_SIZE]
    assert data[:FRAME] not in frames[0]  # encrypted
    assert open_all(offer, frames, [0, FRAME, 2 * FRAME, 3 * FRAME]) == data


@pytest.mark.parametrize("attack", ["flipped bit", "offset forged", "frames swapped",
                                    "frame replayed", "other key", "other ticket"])
def test_an_altered_frame_fails_authentication(attack: str):
    offer = BulkOffer.new(FRAME)
    data = os.urandom(2 * FRAME)
    frames = sealed_frames(offer, data)
    offsets = [0, FRAME]
    if attack == "flipped bit":
        frames[1] = frames[1][:10] + bytes([frames[1][10] ^ 1]) + frames[1][11:]
    elif attack == "offset forged":
        offsets = [0, FRAME + 1]
    elif attack == "frames swapped":
        frames.reverse()
    elif attack == "frame replayed":
        frames[1] = frames[0]
    elif attack == "other key":
        offer = BulkOffer(offer.ticket, os.urandom(32), FRAME)
    else:
        offer = BulkOffer(os.urandom(16), offer.key, FRAME)
    with pytest.raises(AuthenticationError, match="failed authentication"):
        open_all(offer, frames, offsets)


def test_offers_are_fresh_and_bad_ones_are_refused():
    a, b = BulkOffer.new(FRAME), BulkOffer.new(FRAME)
    assert a.ticket != b.ticket and a.key != b.key
    a.check()
    bad = [BulkOffer(b"t" * 15, a.key, FRAME), BulkOffer(a.ticket, b"k" * 16, FRAME),
           BulkOffer(a.ticket, a.key, bulk.MAX_FRAME_SIZE + 1), BulkOffer(a.ticket, a.key, 0)]
    for offer in bad:
        with pytest.raises(RemoteProtocolError):
            offer.check()


def test_an_offer_travels_inside_messages():
    codec = Codec()
    offer = BulkOffer.new(FRAME)
    assert codec.decode(codec.encode(offer)) == offer


def test_a_hello_carries_its_ticket_and_nothing_else_passes():
    ticket = os.urandom(16)
    assert bulk.ticket_of(bulk.hello(ticket)) == ticket
    for bad in (b"", bulk.hello(ticket)[:-1], b"x" * bulk.HELLO_SIZE,
                bulk.hello(ticket) + b"x"):
        with pytest.raises(RemoteProtocolError):
            bulk.ticket_of(bad)


# ---- on TCP ------------------------------------------------------------------------------

async def idle(conn) -> None:
    await conn.receive()


@asynccontextmanager
async def serving(make_transport: Callable[..., TcpTransport]
                  ) -> AsyncIterator[tuple[TcpTransport, TcpTransport, Address]]:
    """A server transport listening on 127.0.0.1, a client transport and the server's
    address; the server stops after."""
    server, client = make_transport(), make_transport()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, idle)
        yield server, client, address
        nursery.cancel_scope.cancel()


def dropped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("dropped peer")]


async def test_a_bulk_connection_reaches_whoever_offered_its_ticket(
        make_transport: Callable[..., TcpTransport]):
    async with serving(make_transport) as (server, client, address):
        assert isinstance(server, BulkTransport)
        ticket = os.urandom(16)
        with server.expect_bulk(ticket) as arrivals:
            sending = await client.connect_bulk(address, ticket)
            with trio.fail_after(5):
                receiving = await arrivals.receive()
        payload = os.urandom(3 << 20)
        async with trio.open_nursery() as both:
            both.start_soon(sending.send_all, payload)
            got = bytearray(len(payload))
            await receive_exactly(receiving, memoryview(got))
        assert got == payload
        await sending.aclose()
        assert await receiving.receive_into(memoryview(bytearray(1))) == 0  # end of stream
        await receiving.aclose()
        assert server.connection_count == 0  # a bulk connection is not a peer connection


@pytest.mark.parametrize("case", ["unknown ticket", "ticket used twice", "offer withdrawn"])
async def test_a_bulk_hello_nobody_expects_is_dropped_with_one_line(
        make_transport: Callable[..., TcpTransport], caplog: pytest.LogCaptureFixture,
        case: str):
    caplog.set_level(logging.WARNING, "p2pexec.net")
    server, client = make_transport(), make_transport()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, idle)
        await nursery.start(client.serve, idle)
        ticket = os.urandom(16)
        if case == "ticket used twice":
            with server.expect_bulk(ticket) as arrivals:
                first = await client.connect_bulk(address, ticket)
                await (await arrivals.receive()).aclose()
                await first.aclose()
        elif case == "offer withdrawn":
            with server.expect_bulk(ticket):
                pass
        stream = await client.connect_bulk(address, ticket)
        with trio.fail_after(5):  # the server hangs up
            assert await stream.receive_into(memoryview(bytearray(16))) == 0
        await stream.aclose()
        assert len(dropped(caplog)) == 1, dropped(caplog)
        assert "bulk ticket nobody offered" in dropped(caplog)[0]
        with trio.fail_after(5):  # still serving peers
            conn = await client.connect(address)
        await conn.aclose()
        assert server.handshakes_in_progress == 0
        nursery.cancel_scope.cancel()


async def test_a_bulk_connection_that_arrives_unclaimed_is_closed(
        make_transport: Callable[..., TcpTransport]):
    async with serving(make_transport) as (server, client, address):
        ticket = os.urandom(16)
        with server.expect_bulk(ticket) as arrivals:
            stream = await client.connect_bulk(address, ticket)
            with trio.fail_after(5):
                while arrivals.statistics().current_buffer_used == 0:
                    await trio.sleep(0.01)
        with trio.fail_after(5):
            assert await stream.receive_into(memoryview(bytearray(16))) == 0
        await stream.aclose()
