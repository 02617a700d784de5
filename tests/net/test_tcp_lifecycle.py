"""TcpTransport resources and timing: sockets closed on every path, frame deadlines,
bounded shutdown (code review findings)."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from typing import Any

import trio

from p2pexec.net.codec import Codec
from p2pexec.net.config import NetConfig
from p2pexec.net.tcp import CLOSE_DRAIN_TIMEOUT, TcpTransport
from p2pexec.net.tls import Credentials, secure


async def wait_for_eof(stream: trio.SocketStream) -> None:
    """Returns once the other end closed its socket."""
    while True:
        try:
            if not await stream.receive_some(65536):
                return
        except trio.BrokenResourceError:
            return


async def test_a_cancelled_client_handshake_closes_its_socket(
        make_transport: Callable[..., TcpTransport]) -> None:
    """A caller cancelled while the peer stalls the handshake must not leak the socket."""
    closed = trio.Event()

    async def stall(stream: trio.SocketStream) -> None:
        await wait_for_eof(stream)
        closed.set()

    transport = make_transport()
    gc.disable()  # only an explicit close counts, not the collector finding the socket
    try:
        async with trio.open_nursery() as nursery:
            (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
            nursery.start_soon(trio.serve_listeners, stall, [listener])
            await nursery.start(transport.serve, lambda conn: trio.sleep_forever())
            with trio.move_on_after(0.2) as scope:
                await transport.connect(listener.socket.getsockname()[:2])
            assert scope.cancelled_caught
            with trio.move_on_after(2.0):
                await closed.wait()
            assert closed.is_set()
            await transport.aclose()
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()


async def test_closing_the_transport_closes_sockets_still_in_the_handshake(
        make_transport: Callable[..., TcpTransport]) -> None:
    transport = make_transport()
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(transport.serve, lambda conn: trio.sleep_forever())
            stream = await trio.open_tcp_stream(*address)  # says nothing: stuck in the handshake
            with trio.fail_after(2):
                while not transport.handshakes_in_progress:
                    await trio.sleep(0.01)
            await transport.aclose()
            with trio.move_on_after(2.0) as scope:
                await wait_for_eof(stream)
            assert not scope.cancelled_caught
            await stream.aclose()
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()


async def test_closing_does_not_wait_write_timeout_for_a_peer_that_stopped_reading(
        make_transport: Callable[..., TcpTransport],
        make_credentials: Callable[..., Credentials]) -> None:
    """Shutdown drains queued writes for at most CLOSE_DRAIN_TIMEOUT, then closes hard:
    a stalled peer must not hold the node's exit for write_timeout (30 s here)."""
    config = dataclasses.replace(NetConfig.local(), write_timeout=30.0)
    transport = make_transport(config=config)
    queued: list[int] = []

    async def flood(conn: Any) -> None:
        while True:                      # until the writer is stuck and the queue full
            await conn.send(b"x" * (1024 * 1024))
            queued.append(1)

    async with trio.open_nursery() as nursery:
        address = await nursery.start(transport.serve, flood)
        stream = await trio.open_tcp_stream(*address)
        tls = (await secure(stream, make_credentials(), Codec(), server=False)).stream
        await trio.sleep(1.0)         # loopback fills the socket buffers in milliseconds
        before = len(queued)
        await trio.sleep(0.2)
        assert len(queued) == before > 0  # the writer is blocked: we never read
        start = trio.current_time()
        await transport.aclose()      # shielded: only its own bound can end it early
        took = trio.current_time() - start
        assert CLOSE_DRAIN_TIMEOUT - 0.1 <= took < CLOSE_DRAIN_TIMEOUT + 3, took
        await trio.aclose_forcefully(tls)
        nursery.cancel_scope.cancel()
