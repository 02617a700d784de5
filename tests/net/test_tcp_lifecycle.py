"""TcpTransport resources and timing: sockets closed on every path, frame deadlines,
bounded shutdown (code review findings)."""

from __future__ import annotations

import gc
from collections.abc import Callable

import trio

from p2pexec.net.tcp import TcpTransport


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
