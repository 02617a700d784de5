"""The contract every `Transport` implementation keeps, as a reusable pytest suite.

Gossip, the DHT and the executor are written once against `p2pexec.net.transport`; they
run on TCP+TLS in production and on `SimNetwork` in tests and simulations. This suite is
what makes that swap safe: both implementations must pass it unchanged.

How an implementation's test module uses it (tests/net/test_conformance_tcp.py for TCP):

    import pytest
    from p2pexec.testing.conformance import TransportConformance

    class TcpFactory:
        def __init__(self, tmp_path):
            self.tmp_path = tmp_path

        async def make(self, n):
            # n fresh, not yet serving transports, each with its own key, all able to
            # authenticate each other (same cluster token)
            return [make_tcp_transport(self.tmp_path / str(i)) for i in range(n)]

        def unused_address(self):
            # an address in the implementation's own space where nobody listens
            return ("127.0.0.1", free_port())

    class TestTcpConformance(TransportConformance):
        @pytest.fixture
        def transport_factory(self, tmp_path):
            return TcpFactory(tmp_path)

A simulated implementation overrides `conformance_clock` too, so the suite runs on
`trio.testing.MockClock(autojump_threshold=0)` (pytest-trio only picks up a clock that is
a direct argument of the test, hence this fixture on every test). Real-network
implementations keep the default (None: trio's real clock). Timeouts in the suite are
generous upper bounds that only fire when an implementation hangs.

The suite starts `serve` itself (through `serving`), closes every transport it was given
when a test ends, and never reaches into an implementation's internals.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import pytest
import trio

from p2pexec.errors import AuthenticationError
from p2pexec.ids import NodeId
from p2pexec.net.transport import Address, Connection, Transport

TIMEOUT = 10.0
"""Seconds after which a conformance step counts as hung (real or simulated time)."""


class TransportFactory(Protocol):
    """What an implementation's test module supplies through the `transport_factory` fixture."""

    async def make(self, n: int) -> list[Transport]:
        """`n` fresh transports, not serving yet, with distinct node ids, mutually trusted."""

    def unused_address(self) -> Address:
        """An address of this implementation where nobody listens (connect must fail)."""


@dataclass
class Served:
    """A transport the suite started serving, and the connections its handler accepted."""

    transport: Transport
    address: Address
    accepted: trio.MemoryReceiveChannel[Connection]

    async def next_accepted(self) -> Connection:
        """The next inbound connection; fails the test instead of hanging."""
        with trio.fail_after(TIMEOUT):
            return await self.accepted.receive()


@asynccontextmanager
async def serving(transports: list[Transport]) -> AsyncIterator[list[Served]]:
    """Serve every transport in one nursery; close them all (and stop serving) on exit.

    The handler parks each connection in a channel and keeps its task alive, so the suite
    does not depend on whether an implementation closes a connection when its handler
    returns.
    """
    async with trio.open_nursery() as nursery:
        served: list[Served] = []
        for transport in transports:
            send, receive = trio.open_memory_channel[Connection](math.inf)

            async def handler(conn: Connection,
                              send: trio.MemorySendChannel[Connection] = send) -> None:
                await send.send(conn)
                await trio.sleep_forever()

            with trio.fail_after(TIMEOUT):
                address = await nursery.start(transport.serve, handler)
            served.append(Served(transport, address, receive))
        try:
            yield served
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(TIMEOUT):
                for transport in transports:
                    await transport.aclose()
            nursery.cancel_scope.cancel()


async def connected_pair(a: Served, b: Served) -> tuple[Connection, Connection]:
    """A connection from `a` to `b`: (a's end, b's end)."""
    with trio.fail_after(TIMEOUT):
        client = await a.transport.connect(b.address)
    return client, await b.next_accepted()


async def receive_n(conn: Connection, n: int) -> list[bytes]:
    """Exactly `n` messages from `conn`, failing the test instead of hanging."""
    with trio.fail_after(TIMEOUT):
        return [await conn.receive() for _ in range(n)]


class TransportConformance:
    """Behaviour everything above `net/` relies on. Subclass it in a `Test*` class and
    provide the `transport_factory` fixture (see the module docstring)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Refuse, at class definition, a subclass that forgot its `transport_factory`."""
        super().__init_subclass__(**kwargs)
        if not callable(getattr(cls, "transport_factory", None)):
            raise TypeError(f"{cls.__name__} must provide the transport_factory fixture "
                            f"(see p2pexec.testing.conformance)")

    @pytest.fixture
    def conformance_clock(self) -> trio.abc.Clock | None:
        """None runs on the real clock; simulated transports return a MockClock."""
        return None

    # --- identity and addresses -------------------------------------------------------

    async def test_serve_reports_local_address_and_ids_are_distinct(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        transports = await transport_factory.make(3)
        async with serving(transports) as nodes:
            assert [n.address for n in nodes] == [t.local.address for t in transports]
            assert len({t.local.node_id for t in transports}) == 3
            assert len({t.local.address for t in transports}) == 3
            assert all(isinstance(t, Transport) for t in transports)

    async def test_both_ends_see_the_authenticated_peer(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        """The server side only promises the node id: over TCP the client's source port
        is not the address it listens at."""
        async with serving(await transport_factory.make(2)) as (a, b):
            client, server = await connected_pair(a, b)
            assert isinstance(client, Connection)
            assert client.peer.node_id == b.transport.local.node_id
            assert client.peer.address == b.address
            assert server.peer.node_id == a.transport.local.node_id

    async def test_connect_with_expected_id_succeeds(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        async with serving(await transport_factory.make(2)) as (a, b):
            with trio.fail_after(TIMEOUT):
                client = await a.transport.connect(b.address,
                                                   expected=b.transport.local.node_id)
            await client.send(b"pinned")
            server = await b.next_accepted()
            assert await receive_n(server, 1) == [b"pinned"]

    async def test_connect_with_wrong_expected_id_fails_and_server_carries_on(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        async with serving(await transport_factory.make(3)) as (a, b, c):
            with trio.fail_after(TIMEOUT), pytest.raises(AuthenticationError):
                await a.transport.connect(b.address, expected=c.transport.local.node_id)
            with trio.fail_after(TIMEOUT), pytest.raises(AuthenticationError):
                await a.transport.connect(b.address, expected=NodeId(bytes(32)))
            client, server = await connected_pair(a, b)
            await client.send(b"still serving")
            assert await receive_n(server, 1) == [b"still serving"]

    async def test_connect_where_nobody_listens_fails_with_oserror(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        async with serving(await transport_factory.make(1)) as (a,):
            with trio.fail_after(TIMEOUT), pytest.raises(OSError):
                await a.transport.connect(transport_factory.unused_address())

    # --- reliable streams -------------------------------------------------------------

    async def test_round_trip_in_both_directions(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        async with serving(await transport_factory.make(2)) as (a, b):
            client, server = await connected_pair(a, b)
            await client.send(b"ping")
            assert await receive_n(server, 1) == [b"ping"]
            await server.send(b"pong")
            assert await receive_n(client, 1) == [b"pong"]

    async def test_message_sent_before_accept_is_not_lost(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        async with serving(await transport_factory.make(2)) as (a, b):
            with trio.fail_after(TIMEOUT):
                client = await a.transport.connect(b.address)
            await client.send(b"early")
            server = await b.next_accepted()
            assert await receive_n(server, 1) == [b"early"]

    async def test_empty_message_is_a_message_not_an_end(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        async with serving(await transport_factory.make(2)) as (a, b):
            client, server = await connected_pair(a, b)
            await client.send(b"")
            await client.send(b"after")
            assert await receive_n(server, 2) == [b"", b"after"]

    async def test_thousand_messages_arrive_in_order(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        async with serving(await transport_factory.make(2)) as (a, b):
            client, server = await connected_pair(a, b)
            sent = [i.to_bytes(4, "big") * (1 + i % 7) for i in range(1000)]
            for message in sent:
                await client.send(message)
            assert await receive_n(server, 1000) == sent

    async def test_send_many_delivers_all_in_order_between_single_sends(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        async with serving(await transport_factory.make(2)) as (a, b):
            client, server = await connected_pair(a, b)
            batch = [f"m{i}".encode() for i in range(300)]
            await client.send(b"first")
            await client.send_many(batch)
            await client.send_many([])
            await client.send(b"last")
            assert await receive_n(server, 302) == [b"first", *batch, b"last"]

    async def test_one_mebibyte_message_round_trip(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        big = bytes(range(256)) * 4096
        async with serving(await transport_factory.make(2)) as (a, b):
            client, server = await connected_pair(a, b)
            await client.send(big)
            assert await receive_n(server, 1) == [big]
            await server.send(big[::-1])
            assert await receive_n(client, 1) == [big[::-1]]

    async def test_concurrent_senders_on_one_connection_keep_messages_whole(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        """Several tasks of one node share a connection (rpc calls); messages never mix."""
        async with serving(await transport_factory.make(2)) as (a, b):
            client, server = await connected_pair(a, b)

            async def sender(tag: bytes) -> None:
                for i in range(100):
                    await client.send(tag * 1000 + i.to_bytes(2, "big"))

            async with trio.open_nursery() as nursery:
                for tag in (b"x", b"y", b"z"):
                    nursery.start_soon(sender, tag)
            got = await receive_n(server, 300)
            for tag in (b"x", b"y", b"z"):
                mine = [m for m in got if m[:1000] == tag * 1000]
                assert mine == [tag * 1000 + i.to_bytes(2, "big") for i in range(100)]

    async def test_full_duplex_traffic_does_not_deadlock(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        """Both ends write and read at the same time (rpc requests and replies crossing)."""
        async with serving(await transport_factory.make(2)) as (a, b):
            client, server = await connected_pair(a, b)
            streams = {side: [side * 10_000 + i.to_bytes(2, "big") for i in range(200)]
                       for side in (b"c", b"s")}
            received: dict[bytes, list[bytes]] = {}

            async def write(conn: Connection, side: bytes) -> None:
                for message in streams[side]:
                    await conn.send(message)

            async def read(conn: Connection, side: bytes) -> None:
                received[side] = await receive_n(conn, 200)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write, client, b"c")
                nursery.start_soon(write, server, b"s")
                nursery.start_soon(read, server, b"c")
                nursery.start_soon(read, client, b"s")
            assert received == streams

    async def test_concurrent_connections_from_several_peers(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        """Each client opens two connections to one server; every stream stays separate,
        in order, and is attributed to the right node."""
        transports = await transport_factory.make(5)
        async with serving(transports) as (server_node, *clients):
            expected: dict[bytes, list[bytes]] = {}

            async def client_task(node: Served, index: int) -> None:
                with trio.fail_after(TIMEOUT):
                    conns = [await node.transport.connect(server_node.address)
                             for _ in range(2)]
                for c, conn in enumerate(conns):
                    tag = f"{index}.{c}".encode()
                    messages = [tag + b":" + str(i).encode() for i in range(50)]
                    expected[tag] = messages
                    await conn.send(tag)
                    await conn.send_many(messages)
                    assert await receive_n(conn, 1) == [b"ack " + tag]

            async def serve_one(conn: Connection) -> None:
                (tag,) = await receive_n(conn, 1)
                received[tag] = (conn.peer.node_id, await receive_n(conn, 50))
                await conn.send(b"ack " + tag)

            received: dict[bytes, tuple[NodeId, list[bytes]]] = {}
            async with trio.open_nursery() as nursery:
                for index, node in enumerate(clients):
                    nursery.start_soon(client_task, node, index)
                for _ in range(2 * len(clients)):
                    nursery.start_soon(serve_one, await server_node.next_accepted())
            assert received == {
                tag: (clients[int(tag.split(b".")[0])].transport.local.node_id, messages)
                for tag, messages in expected.items()}

    # --- closing ----------------------------------------------------------------------

    async def test_clean_close_delivers_pending_then_end_of_channel(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        async with serving(await transport_factory.make(2)) as (a, b):
            client, server = await connected_pair(a, b)
            for i in range(10):
                await client.send(str(i).encode())
            await client.aclose()
            assert await receive_n(server, 10) == [str(i).encode() for i in range(10)]
            for _ in range(2):
                with trio.fail_after(TIMEOUT), pytest.raises(trio.EndOfChannel):
                    await server.receive()

    async def test_send_after_own_close_raises_closed_resource(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        async with serving(await transport_factory.make(2)) as (a, b):
            client, _server = await connected_pair(a, b)
            await client.aclose()
            await client.aclose()  # idempotent
            with pytest.raises(trio.ClosedResourceError):
                await client.send(b"too late")
            with pytest.raises(trio.ClosedResourceError):
                await client.receive()

    async def test_closing_a_connection_wakes_its_blocked_receiver(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        """An rpc reader task must not hang when another task closes its connection."""
        async with serving(await transport_factory.make(2)) as (a, b):
            client, _server = await connected_pair(a, b)
            outcome: list[type[BaseException]] = []

            async def reader() -> None:
                try:
                    await client.receive()
                except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
                    outcome.append(type(exc))

            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    await trio.sleep(0.05)
                    await client.aclose()
            assert len(outcome) == 1

    async def test_transport_aclose_closes_its_connections_and_stops_serving(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        async with serving(await transport_factory.make(3)) as (a, b, c):
            to_b, _at_b = await connected_pair(a, b)
            _to_c, at_c = await connected_pair(a, c)
            await b.transport.aclose()
            await b.transport.aclose()  # idempotent
            with trio.fail_after(TIMEOUT), pytest.raises(
                    (trio.EndOfChannel, trio.BrokenResourceError)):
                await to_b.receive()
            with trio.fail_after(TIMEOUT), pytest.raises(OSError):
                await a.transport.connect(b.address)
            await a.transport.aclose()  # closes a's outgoing connection to c too
            with trio.fail_after(TIMEOUT), pytest.raises(
                    (trio.EndOfChannel, trio.BrokenResourceError)):
                await at_c.receive()

    # --- datagrams --------------------------------------------------------------------

    async def test_datagram_round_trip_reports_sender_address(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        """Best effort, so the sender retries; the receiver sees the sender's listening
        address (gossip replies to it)."""
        async with serving(await transport_factory.make(2)) as (a, b):
            assert await _datagram_with_retries(a, b, b"ping" * 100) == (a.address,
                                                                         b"ping" * 100)
            assert await _datagram_with_retries(b, a, b"pong") == (b.address, b"pong")

    async def test_datagram_to_nobody_does_not_raise(
            self, transport_factory: TransportFactory,
            conformance_clock: trio.abc.Clock | None) -> None:
        async with serving(await transport_factory.make(2)) as (a, b):
            with trio.fail_after(TIMEOUT):
                await a.transport.send_datagram(transport_factory.unused_address(), b"hello?")
            await b.transport.aclose()
            with trio.fail_after(TIMEOUT):
                await a.transport.send_datagram(b.address, b"anyone?")


async def _datagram_with_retries(src: Served, dst: Served, payload: bytes) -> tuple[Address,
                                                                                   bytes]:
    """Send `payload` every 200 ms until `dst` receives a datagram (or the suite times out)."""
    with trio.fail_after(TIMEOUT):
        while True:
            await src.transport.send_datagram(dst.address, payload)
            with trio.move_on_after(0.2):
                return await dst.transport.receive_datagram()
