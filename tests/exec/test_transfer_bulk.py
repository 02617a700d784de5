"""The bulk path of object transfer on real TCP+TLS transports on 127.0.0.1: sealed frames
on a second connection, resumed from another holder, and every way a peer can misbehave
on it costing one log line and that peer, never the fetch or the node."""

from __future__ import annotations

import logging
import os
import random
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from p2pexec.errors import ObjectLostError
from p2pexec.exec import shm
from p2pexec.exec.protocol import SHARED
from p2pexec.exec.transfer import (
    CHECKSUM_SIZE,
    FetchObject,
    ObjectHeader,
    ObjectTransfers,
    object_key,
)
from p2pexec.ids import NodeId
from p2pexec.net.bulk import receive_exactly
from p2pexec.net.codec import Codec
from p2pexec.net.config import NetConfig
from p2pexec.net.security import ClusterKeys, NodeIdentity
from p2pexec.net.tcp import TcpTransport
from p2pexec.net.tls import Credentials

CHUNK = 64 * 1024
SIZE = 20 * CHUNK + 1234
STALL = 0.5
KEYS = ClusterKeys("bulk-test-token-0123456789")


class StubDht:
    """Where each node listens and who holds what: all a transfer asks of the DHT."""

    def __init__(self) -> None:
        self.addresses: dict[NodeId, tuple[str, int]] = {}
        self.holders: dict[bytes, list[NodeId]] = {}

    def address_of(self, node: NodeId) -> tuple[str, int] | None:
        return self.addresses.get(node)

    async def find_value(self, key: bytes) -> list[SimpleNamespace]:
        return [SimpleNamespace(publisher=n) for n in self.holders.get(key, [])]


@dataclass
class Node:
    transport: TcpTransport
    transfers: ObjectTransfers
    payloads: dict[bytes, list] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)

    @property
    def node_id(self) -> NodeId:
        return self.transport.local.node_id

    def hold(self, dht: StubDht, object_id: bytes, data: bytes) -> None:
        name = shm.segment_name(os.getpid(), os.urandom(8) + object_id)
        shm.write(name, len(data), [(0, data)])
        self.segments.append(name)
        self.payloads[object_id] = [SHARED, name, len(data), []]
        dht.holders.setdefault(object_key(object_id), []).append(self.node_id)


def held_by_both(dht: StubDht, a: Node, c: Node, object_id: bytes) -> bytes:
    """SIZE random bytes that nodes `a` and `c` both hold as `object_id`."""
    data = os.urandom(SIZE)
    a.hold(dht, object_id, data)
    c.hold(dht, object_id, data)
    return data


def serve_bulk_with(node: Node, sender: Callable[..., Awaitable[None]]) -> None:
    """`node` streams bulk frames with `sender(send_bulk, stream, offer, fd, offset, size,
    hasher, buffer)`, handed the honest `send_bulk` to misbehave around."""
    honest = node.transfers._send_bulk

    async def send(*args: Any) -> None:
        await sender(honest, *args)

    node.transfers._send_bulk = send


def dies_after_five_frames(node: Node) -> None:
    """`node` sends five frames of its next bulk stream, then goes away whole."""

    async def dies(send_bulk, stream, offer, fd, offset, size, hasher, buffer):
        await send_bulk(stream, offer, fd, offset, offset + 5 * CHUNK, hasher, buffer)
        await node.transport.aclose()
        raise trio.BrokenResourceError("killed")

    serve_bulk_with(node, dies)


@asynccontextmanager
async def cluster(n: int, chunk_size: int = CHUNK, idle_timeouts: tuple[float, ...] = ()
                  ) -> AsyncIterator[tuple[StubDht, list[Node]]]:
    """`n` nodes on 127.0.0.1; node i keeps idle transfer connections `idle_timeouts[i]`
    seconds (the default when not given)."""
    dht = StubDht()
    codec = Codec()
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for i in range(n):
            transport = TcpTransport(Credentials.create(NodeIdentity.generate(), KEYS),
                                     NetConfig.local())
            payloads: dict[bytes, list] = {}
            transfers = ObjectTransfers(transport, dht, codec, payloads.get,
                                        random.Random(i), chunk_size, STALL,
                                        *idle_timeouts[i:i + 1])
            node = Node(transport, transfers, payloads)

            async def handle(conn, transfers=transfers):
                await transfers.serve(conn, codec.decode(await conn.receive()))

            address = await nursery.start(transport.serve, handle)
            dht.addresses[node.node_id] = address
            nodes.append(node)
        try:
            yield dht, nodes
        finally:
            for node in nodes:
                await node.transport.aclose()
                for name in node.segments:
                    shm.unlink(name)
            nursery.cancel_scope.cancel()


def content(payload: list) -> bytes:
    assert payload[0] == SHARED
    fd = shm.open_segment(payload[1])
    try:
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)
        shm.unlink(payload[1])


def bulk_connections(node: Node) -> list[int]:
    """Counts the bulk connections `node` opens as a fetcher."""
    opened = [0]
    original = node.transport.connect_bulk

    async def counting(address, ticket):
        opened[0] += 1
        return await original(address, ticket)

    node.transport.connect_bulk = counting
    return opened


def tls_connections(node: Node) -> list[int]:
    """Counts the transfer connections `node` opens as a fetcher."""
    opened = [0]
    original = node.transport.connect

    async def counting(address, expected=None):
        opened[0] += 1
        return await original(address, expected)

    node.transport.connect = counting
    return opened


def dropped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("dropped peer")]


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "p2pexec")


async def test_an_object_crosses_on_a_sealed_bulk_channel_and_hashes_clean():
    async with cluster(2) as (dht, (a, b)):
        data = os.urandom(SIZE)
        a.hold(dht, b"obj1", data)
        opened = bulk_connections(b)
        payload = await b.transfers.fetch(b"obj1", holder=a.node_id)
        assert payload[2:] == [SIZE, []]
        assert content(payload) == data
        assert opened == [1]
        assert a.transfers.bytes_served == b.transfers.bytes_fetched == SIZE
        # the holder summed while sending; the fetcher checked and kept the checksum
        crc = zlib.crc32(data).to_bytes(CHECKSUM_SIZE, "big")
        assert a.transfers._digests[b"obj1"] == b.transfers._digests[b"obj1"] == crc


async def test_fetches_from_one_holder_share_one_connection_and_bulk_channel(
        caplog: pytest.LogCaptureFixture):
    async with cluster(2) as (dht, (a, b)):
        objects = {f"obj{i}".encode(): os.urandom(SIZE) for i in range(3)}
        for object_id, data in objects.items():
            a.hold(dht, object_id, data)
        opened, bulk_opened = tls_connections(b), bulk_connections(b)
        for object_id, data in objects.items():
            assert content(await b.transfers.fetch(object_id, holder=a.node_id)) == data
        assert opened == bulk_opened == [1]
        assert dropped(caplog) == []


def segments_now() -> set[str]:
    """Every shared-memory segment on the machine now. Tests compare what they made
    (the names added since a look before): earlier tests in this process and other
    processes may still be removing theirs."""
    return set(os.listdir(shm.segment_dir()))


async def test_a_prefetch_uses_only_a_kept_connection_and_a_miss_keeps_it(
        caplog: pytest.LogCaptureFixture):
    """A prefetch is a guess: with no connection kept to the holder it opens none; one the
    holder has no large copy for answers None and leaves the connection for the next
    request (so does a fetch told `ObjectMissing`); one that finds the copy brings it."""
    async with cluster(2) as (dht, (a, b)):
        before = segments_now()
        first, second = os.urandom(SIZE), os.urandom(SIZE)
        a.hold(dht, b"first", first)
        a.hold(dht, b"second", second)
        opened, bulk_opened = tls_connections(b), bulk_connections(b)
        assert await b.transfers.prefetch(b"first", a.node_id) is None
        assert opened == [0] and b.transfers.prefetched == 0
        assert content(await b.transfers.fetch(b"first", holder=a.node_id)) == first
        assert await b.transfers.prefetch(b"small", a.node_id) is None
        assert content(await b.transfers.prefetch(b"second", a.node_id)) == second
        with pytest.raises(ObjectLostError, match="no copy of that object here"):
            await b.transfers.fetch(b"gone", holder=a.node_id)
        assert content(await b.transfers.fetch(b"first", holder=a.node_id)) == first
        assert opened == bulk_opened == [1]
        assert b.transfers.prefetched == 1
        mine = f"{shm.PREFIX}_{os.getpid()}_"
        made = {name for name in segments_now() - before if name.startswith(mine)}
        assert made == set(a.segments)  # the missed prefetch left no copy behind
        assert dropped(caplog) == []


async def test_a_failed_transfer_closes_its_channel_and_the_next_fetch_opens_another(
        caplog: pytest.LogCaptureFixture):
    """A bad frame ends the connection and its bulk channel (whatever else was in flight
    on it); the next fetch from that holder starts on fresh ones."""
    async with cluster(2) as (dht, (a, b)):
        first, second = os.urandom(SIZE), os.urandom(SIZE)
        a.hold(dht, b"first", first)
        a.hold(dht, b"second", second)
        lied = []

        async def lies_once(send_bulk, stream, offer, fd, offset, size, hasher, buffer):
            if not lied:
                lied.append(True)
                await stream.send_all(os.urandom(CHUNK + 16))
            await send_bulk(stream, offer, fd, offset, size, hasher, buffer)

        serve_bulk_with(a, lies_once)
        opened, bulk_opened = tls_connections(b), bulk_connections(b)
        with pytest.raises(ObjectLostError, match="failed authentication"):
            await b.transfers.fetch(b"first", holder=a.node_id)
        assert content(await b.transfers.fetch(b"second", holder=a.node_id)) == second
        assert opened == bulk_opened == [2]
        assert len(dropped(caplog)) == 1


async def test_a_kept_connection_the_holder_closed_is_replaced_unseen(
        caplog: pytest.LogCaptureFixture):
    """The holder closes idle connections after 0.2 s, the fetcher would keep them for
    30 s: the second fetch finds its kept connection closed and opens another."""
    async with cluster(2, idle_timeouts=(0.2, 60.0)) as (dht, (a, b)):
        first, second = os.urandom(SIZE), os.urandom(SIZE)
        a.hold(dht, b"first", first)
        a.hold(dht, b"second", second)
        opened, bulk_opened = tls_connections(b), bulk_connections(b)
        assert content(await b.transfers.fetch(b"first", holder=a.node_id)) == first
        await trio.sleep(0.5)
        assert content(await b.transfers.fetch(b"second", holder=a.node_id)) == second
        assert opened == bulk_opened == [2]
        assert a.transfers.bytes_served == 2 * SIZE
        assert dropped(caplog) == []


async def test_a_holder_dying_mid_way_hands_over_to_another_at_the_same_byte(
        caplog: pytest.LogCaptureFixture):
    async with cluster(3) as (dht, (a, b, c)):
        data = held_by_both(dht, a, c, b"obj2")
        dies_after_five_frames(a)
        opened = bulk_connections(b)
        payload = await b.transfers.fetch(b"obj2", holder=a.node_id)
        assert content(payload) == data
        assert opened == [2]
        assert a.transfers.bytes_served == 5 * CHUNK
        assert c.transfers.bytes_served == SIZE - 5 * CHUNK  # resumed, not restarted
        assert b.transfers.bytes_fetched == SIZE
        assert dropped(caplog) == []  # a holder dying is not its fault


async def test_a_copy_stitched_from_two_holders_that_differ_is_refused():
    """A fetch resumed from a second holder whose copy differs from the first's: the
    stitched copy fails the second holder's checksum and is deleted."""
    async with cluster(3) as (dht, (a, b, c)):
        a.hold(dht, b"obj4", os.urandom(SIZE))
        c.hold(dht, b"obj4", os.urandom(SIZE))
        dies_after_five_frames(a)
        before = segments_now()
        with pytest.raises(ObjectLostError, match="content checksum mismatch"):
            await b.transfers.fetch(b"obj4", holder=a.node_id)
        assert c.transfers.bytes_served == SIZE - 5 * CHUNK  # resumed, then refused
        assert segments_now() - before == set()


async def test_a_copy_that_fails_its_content_checksum_is_deleted():
    async with cluster(2) as (dht, (a, b)):
        a.hold(dht, b"obj3", os.urandom(SIZE))
        a.transfers._digests[b"obj3"] = bytes(CHECKSUM_SIZE)  # a holder that lies
        before = segments_now()
        with pytest.raises(ObjectLostError, match="content checksum"):
            await b.transfers.fetch(b"obj3", holder=a.node_id)
        assert b.transfers.bytes_fetched == SIZE
        assert segments_now() - before == set()


@pytest.mark.parametrize("attack", ["garbage frames", "offset forged", "frame skipped"])
async def test_a_holder_sending_bad_frames_is_dropped_and_another_serves(
        caplog: pytest.LogCaptureFixture, attack: str):
    async with cluster(3) as (dht, (a, b, c)):
        data = held_by_both(dht, a, c, b"obj4")

        async def lies(send_bulk, stream, offer, fd, offset, size, hasher, buffer):
            if attack == "garbage frames":
                await stream.send_all(os.urandom(size - offset + 16))
            else:  # frames sealed for other offsets than they hold
                skew = 1 if attack == "offset forged" else CHUNK
                await send_bulk(stream, offer, fd, offset + skew, size, hasher, buffer)

        serve_bulk_with(a, lies)
        payload = await b.transfers.fetch(b"obj4", holder=a.node_id)
        assert content(payload) == data
        assert c.transfers.bytes_served == SIZE  # nothing unauthenticated was kept
        lines = dropped(caplog)
        assert len(lines) == 1, lines
        assert "failed authentication" in lines[0] and a.node_id.short in lines[0]


async def test_a_holder_stalling_on_the_bulk_path_costs_the_stall_timeout():
    async with cluster(3) as (dht, (a, b, c)):
        data = held_by_both(dht, a, c, b"obj5")

        async def stalls(send_bulk, stream, offer, fd, offset, size, hasher, buffer):
            await send_bulk(stream, offer, fd, offset, offset + 3 * CHUNK, hasher, buffer)
            await stream.send_all(b"x" * 100)  # part of a frame, then nothing
            await trio.sleep_forever()

        serve_bulk_with(a, stalls)
        started = trio.current_time()
        payload = await b.transfers.fetch(b"obj5", holder=a.node_id)
        assert content(payload) == data
        assert STALL <= trio.current_time() - started < STALL + 3
        assert c.transfers.bytes_served == SIZE - 3 * CHUNK


def more_than_socket_buffers() -> int:
    """Bytes a holder cannot hand to the kernel while the fetcher reads nothing: more than
    the largest receive and send buffers TCP may grow to here."""
    most = 0
    for name in ("tcp_rmem", "tcp_wmem"):
        try:
            most += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[-1])
        except OSError:
            most += 32 << 20
    return most + (16 << 20)


@pytest.mark.parametrize("fetcher", ["never connects", "never reads"])
async def test_a_fetcher_that_stalls_is_dropped_by_the_holder(
        caplog: pytest.LogCaptureFixture, fetcher: str):
    """The holder gives up after its stall timeout with one line and keeps serving."""
    async with cluster(2, chunk_size=1 << 20) as (dht, (a, b)):
        data = os.urandom(more_than_socket_buffers() if fetcher == "never reads" else SIZE)
        a.hold(dht, b"obj6", data)
        codec = Codec()
        conn = await b.transport.connect(dht.addresses[a.node_id], expected=a.node_id)
        await conn.send(codec.encode(FetchObject(b"obj6", 0, True)))
        header = codec.decode(await conn.receive())
        assert type(header) is ObjectHeader and header.bulk is not None
        stream = None
        if fetcher == "never reads":
            stream = await b.transport.connect_bulk(dht.addresses[a.node_id],
                                                    header.bulk.ticket)
            await receive_exactly(stream, memoryview(bytearray(100)))
        with trio.fail_after(STALL + 5):
            while not dropped(caplog):
                await trio.sleep(0.05)
        lines = dropped(caplog)
        assert len(lines) == 1 and "transfer stalled" in lines[0], lines
        assert b.node_id.short in lines[0]
        if stream is not None:
            await stream.aclose()
        await conn.aclose()
        payload = await b.transfers.fetch(b"obj6", holder=a.node_id)  # still serving
        assert content(payload) == data


async def fetch_traced(fetcher, object_id: bytes, holder) -> tuple[list, int]:
    """`fetcher` fetches `object_id` from `holder`: the payload, and the peak of Python
    memory allocated meanwhile (both ends run in this process)."""
    tracemalloc.start()
    try:
        payload = await fetcher.transfers.fetch(object_id, holder=holder.node_id)
        return payload, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_the_fetcher_holds_a_chunk_window_not_the_object():
    """Python memory allocated during a 32 MiB transfer (both ends in this process):
    each side's two frame buffers, never the object."""
    async with cluster(2, chunk_size=1 << 20) as (dht, (a, b)):
        data = os.urandom(32 << 20)
        a.hold(dht, b"obj7", data)
        del data
        payload, peak = await fetch_traced(b, b"obj7", a)
        assert b.transfers.bytes_fetched == 32 << 20
        assert peak < 6 << 20, f"peak {peak / 2**20:.1f} MiB"
        shm.unlink(payload[1])


async def test_later_transfers_reuse_the_frame_buffers():
    """Each side keeps its frame buffers for the next transfer: a fresh one costs a page
    fault per 4 KiB on each side, so a second transfer allocates none."""
    async with cluster(2, chunk_size=1 << 20) as (dht, (a, b)):
        first, second = os.urandom(4 << 20), os.urandom(4 << 20)
        a.hold(dht, b"first", first)
        a.hold(dht, b"second", second)
        assert content(await b.transfers.fetch(b"first", holder=a.node_id)) == first
        payload, peak = await fetch_traced(b, b"second", a)
        assert content(payload) == second
        assert peak < 256 << 10, f"peak {peak / 2**10:.0f} KiB"
