"""RPC over TCP+TLS on 127.0.0.1: concurrency, failures, timeouts, cancellation, reconnect."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import trio

from p2pexec.net.codec import Codec, message
from p2pexec.net.config import NetConfig
from p2pexec.net.messages import Request
from p2pexec.net.rpc import RemoteError, RpcNode
from p2pexec.net.tcp import TcpTransport
from p2pexec.net.transport import Peer


@message(910)
@dataclass(frozen=True, slots=True)
class Echo:
    text: str


@message(911)
@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@message(912)
@dataclass(frozen=True, slots=True)
class Boom:
    text: str


@message(913)
@dataclass(frozen=True, slots=True)
class Note:
    text: str


class Server:
    """Answers Echo inline-fast, Sleep in a task (recording cancellations), Boom by raising."""

    def __init__(self) -> None:
        self.notes: list[tuple[bytes, str]] = []
        self.cancelled = 0
        self.got_note = trio.Event()

    async def on_request(self, peer: Peer, body: Any) -> Any:
        if isinstance(body, Echo):
            return Echo(body.text.upper())
        if isinstance(body, Sleep):
            try:
                await trio.sleep(body.seconds)
            except trio.Cancelled:
                self.cancelled += 1
                raise
            return Echo("slept")
        raise ValueError(f"cannot do {body.text}")

    def on_message(self, peer: Peer, msg: Any) -> None:
        self.notes.append((peer.node_id.raw, msg.text))
        self.got_note.set()


@asynccontextmanager
async def rpc_node(transport: TcpTransport, server: Server | None = None,
                   ) -> AsyncIterator[RpcNode]:
    node = RpcNode(transport, server.on_request if server else None,
                   server.on_message if server else None, config=NetConfig.local())
    async with node.serving():
        yield node


async def test_concurrent_calls_get_their_own_answers(
        make_transport: Callable[..., TcpTransport]) -> None:
    async with rpc_node(make_transport(), Server()) as server, \
            rpc_node(make_transport()) as client:
        got: dict[int, Any] = {}

        async def one(i: int) -> None:
            got[i] = await client.call(server.local.address, Echo(f"m{i}"))

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(one, i)
        assert got == {i: Echo(f"M{i}") for i in range(100)}
        assert client.transport.connection_count == 1


async def test_call_many_answers_in_order_with_per_request_failures(
        make_transport: Callable[..., TcpTransport]) -> None:
    async with rpc_node(make_transport(), Server()) as server, \
            rpc_node(make_transport()) as client:
        results = await client.call_many(server.local.address,
                                         [Echo("a"), Boom("x"), Echo("b")])
        assert results[0] == Echo("A") and results[2] == Echo("B")
        assert isinstance(results[1], RemoteError)
        assert (results[1].kind, results[1].text) == ("ValueError", "cannot do x")


async def test_remote_exception_keeps_the_connection(
        make_transport: Callable[..., TcpTransport]) -> None:
    async with rpc_node(make_transport(), Server()) as server, \
            rpc_node(make_transport()) as client:
        with pytest.raises(RemoteError, match=r"ValueError on node .*: cannot do it"):
            await client.call(server.local.address, Boom("it"), node=server.local.node_id)
        assert await client.call(server.local.address, Echo("ok")) == Echo("OK")
        assert client.transport.connection_count == 1


async def test_timeout_cancels_the_remote_handler_and_keeps_the_connection(
        make_transport: Callable[..., TcpTransport]) -> None:
    srv = Server()
    async with rpc_node(make_transport(), srv) as server, rpc_node(make_transport()) as client:
        with pytest.raises(TimeoutError, match=r"1 of 1 calls .* unanswered after 0\.2 s"):
            await client.call(server.local.address, Sleep(30), timeout=0.2)
        assert await client.call(server.local.address, Echo("after")) == Echo("AFTER")
        assert srv.cancelled == 1
        assert client.transport.connection_count == 1


async def test_cancelled_caller_does_not_break_the_connection(
        make_transport: Callable[..., TcpTransport]) -> None:
    srv = Server()
    async with rpc_node(make_transport(), srv) as server, rpc_node(make_transport()) as client:
        with trio.move_on_after(0.1) as scope:
            await client.call(server.local.address, Sleep(30))
        assert scope.cancelled_caught
        results = await client.call_many(server.local.address, [Echo(str(i)) for i in range(5)])
        assert results == [Echo(str(i)) for i in range(5)]
        assert srv.cancelled == 1
        assert client.transport.connection_count == 1


async def test_one_way_message_reaches_the_handler(
        make_transport: Callable[..., TcpTransport]) -> None:
    srv = Server()
    async with rpc_node(make_transport(), srv) as server, rpc_node(make_transport()) as client:
        await client.notify(server.local.address, Note("hi"))
        with trio.fail_after(5):
            await srv.got_note.wait()
        assert srv.notes == [(client.local.node_id.raw, "hi")]


async def test_reconnects_on_demand_after_the_peer_restarts(
        make_transport: Callable[..., TcpTransport]) -> None:
    first = make_transport()
    async with rpc_node(make_transport()) as client:
        async with rpc_node(first, Server()) as server:
            address = server.local.address
            assert await client.call(address, Echo("one")) == Echo("ONE")
        with pytest.raises(OSError):
            await client.call(address, Echo("nobody"))
        again = TcpTransport(first.credentials, NetConfig.local(), port=address[1])
        async with rpc_node(again, Server()):
            assert await client.call(address, Echo("two"), node=first.local.node_id) == Echo(
                "TWO")


async def test_call_in_flight_fails_when_the_link_drops(
        make_transport: Callable[..., TcpTransport]) -> None:
    async with rpc_node(make_transport()) as client:
        async with rpc_node(make_transport(), Server()) as server:
            address = server.local.address

            async def close_soon() -> None:
                await trio.sleep(0.2)
                await server.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(close_soon)
                with pytest.raises(trio.BrokenResourceError, match="lost"):
                    await client.call(address, Sleep(30))


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xc1garbage", "malformed message"),
    (msgpack.packb([999, 1]), "unknown message type 999"),
    (msgpack.packb([910, 1]), r"field Echo\.text: expected str, got int"),
])
async def test_bad_message_drops_only_that_peer(
        make_transport: Callable[..., TcpTransport], caplog: pytest.LogCaptureFixture,
        payload: bytes, reason: str) -> None:
    caplog.set_level(logging.WARNING, "p2pexec.net")
    async with rpc_node(make_transport(), Server()) as server, \
            rpc_node(make_transport()) as honest:
        rogue = make_transport()
        async with trio.open_nursery() as nursery:
            await nursery.start(rogue.serve, lambda conn: trio.sleep_forever())
            conn = await rogue.connect(server.local.address)
            await conn.send(payload)
            with trio.fail_after(5), pytest.raises((trio.EndOfChannel,
                                                    trio.BrokenResourceError)):
                await conn.receive()
            await rogue.aclose()
            nursery.cancel_scope.cancel()
        assert await honest.call(server.local.address, Echo("still")) == Echo("STILL")
    lines = [r.getMessage() for r in caplog.records if "dropped peer" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("dropped peer 127.0.0.1:")
    assert f"(node {rogue.local.node_id.short}): " in lines[0]
    assert re.search(reason, lines[0])


async def test_rpc_and_datagrams_over_ipv6_loopback(
        make_credentials: Callable[..., Any]) -> None:
    a = TcpTransport(make_credentials(), NetConfig.local(), host="::1")
    b = TcpTransport(make_credentials(), NetConfig.local(), host="::1")
    try:
        await a.bind()
        await b.bind()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    async with rpc_node(a, Server()) as server, rpc_node(b) as client:
        assert await client.call(server.local.address, Echo("six")) == Echo("SIX")
        assert server.local.address[0] == "::1"
        await b.send_datagram(a.local.address, b"over v6")
        with trio.fail_after(5):
            source, payload = await a.receive_datagram()
        assert (source[:2], payload) == (b.local.address, b"over v6")


async def test_duplicate_call_ids_drop_that_peer_and_the_node_keeps_serving(
        make_transport: Callable[..., TcpTransport], caplog: pytest.LogCaptureFixture) -> None:
    """Two requests with one call id on a connection the node opened itself: its reader
    runs in the node's own nursery, where a KeyError used to end `serve`."""
    caplog.set_level(logging.WARNING, "p2pexec.net")
    codec = Codec()
    rogue = make_transport()

    async def answer_with_duplicates(conn: Any) -> None:
        codec.decode(await conn.receive())
        duplicate = codec.encode(Request(7, Sleep(0.05)))
        await conn.send_many([duplicate, duplicate])
        with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
            await conn.receive()

    server_logic = Server()
    async with rpc_node(make_transport(), server_logic) as server, \
            rpc_node(make_transport()) as honest, trio.open_nursery() as nursery:
        await nursery.start(rogue.serve, answer_with_duplicates)
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await server.call(rogue.local.address, Echo("hi"))
        await trio.sleep(0.1)  # a handler left running would finish (and del) by now
        assert await honest.call(server.local.address, Echo("still")) == Echo("STILL")
        assert server_logic.cancelled == 1  # the first request's handler was cancelled
        await rogue.aclose()
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if "dropped peer" in r.getMessage()]
    assert lines == [f"dropped peer {rogue.local.address[0]}:{rogue.local.address[1]} "
                     f"(node {rogue.local.node_id.short}): duplicate call id 7"]
