"""The control socket: request/reply round trips (also past the 108-byte unix path limit),
errors as one line for the client, a stale socket replaced, a live one refused."""

from __future__ import annotations

import socket

import msgpack
import pytest
import trio

from p2pexec.control import ControlError, ControlServer, NodeNotRunning, request
from p2pexec.errors import LocalUsageError


def refuse(_arg: object) -> None:
    raise LocalUsageError("no actor named 'x' is alive on this cluster")


HANDLERS = {"echo": lambda arg: arg, "refuse": refuse}


async def ask(path, op, arg=None):
    return await trio.to_thread.run_sync(request, path, op, arg)


async def test_requests_and_errors_over_a_long_socket_path(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = deep / "control.sock"
    assert len(str(path)) > 108
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, HANDLERS).run)
        value = {"members": [{"name": "a", "load": [1, 2]}], "raw": b"\x00\x01"}
        assert await ask(path, "echo", value) == value
        with pytest.raises(ControlError) as refused:
            await ask(path, "refuse")
        assert str(refused.value) == "no actor named 'x' is alive on this cluster"
        with pytest.raises(ControlError) as unknown:
            await ask(path, "nope")
        assert str(unknown.value) == ("unknown control operation 'nope'; this node serves "
                                      "echo, refuse")
        nursery.cancel_scope.cancel()
    assert not path.exists()
    with pytest.raises(NodeNotRunning):
        request(path, "echo")


async def test_a_malformed_request_closes_that_connection_only(tmp_path, caplog):
    path = tmp_path / "control.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, HANDLERS).run)

        def send_garbage() -> bytes:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(path))
                body = msgpack.packb(["status"])  # a list, not a map with "op"
                s.sendall(len(body).to_bytes(4, "big") + body)
                return s.recv(100)

        assert await trio.to_thread.run_sync(send_garbage) == b""
        assert [r.getMessage() for r in caplog.records] == [
            f"control socket {path}: a control request is a map with a string 'op'; "
            f"connection closed"]
        assert await ask(path, "echo", [1]) == [1]
        nursery.cancel_scope.cancel()


async def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path):
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a node that was killed
    with pytest.raises(NodeNotRunning):
        request(path, "echo")
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, HANDLERS).run)
        assert await ask(path, "echo", 5) == 5
        with pytest.raises(LocalUsageError) as second:
            await ControlServer(path, HANDLERS).run()
        assert str(second.value) == (f"another node is already running with data dir "
                                     f"{tmp_path}; give this one its own --data-dir")
        assert await ask(path, "echo", 6) == 6
        nursery.cancel_scope.cancel()


async def test_a_reply_msgpack_cannot_carry_is_an_error_reply_not_a_dead_node(tmp_path):
    path = tmp_path / "control.sock"
    handlers = {**HANDLERS, "bad": lambda _arg: object()}
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, handlers).run)
        with pytest.raises(ControlError, match="TypeError"):
            await ask(path, "bad")
        assert await ask(path, "echo", 7) == 7  # still serving
        nursery.cancel_scope.cancel()


async def test_a_malformed_reply_is_a_control_error_for_the_client(tmp_path):
    path = tmp_path / "control.sock"
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(1)

    async def fake_node() -> None:
        conn, _ = await listener.accept()
        with conn:
            await conn.recv(1000)
            await conn.send(b"\x00\x00\x00\x01\xc1")  # a frame whose body is not msgpack

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_node)
        with pytest.raises(ControlError, match="malformed reply"):
            await ask(path, "status")
    listener.close()


async def test_an_existing_data_dir_is_made_private(tmp_path):
    data_dir = tmp_path / "shared"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(data_dir / "control.sock", HANDLERS).run)
        assert data_dir.stat().st_mode & 0o777 == 0o700
        nursery.cancel_scope.cancel()
