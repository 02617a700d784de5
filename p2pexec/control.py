"""The control socket: how local tools (`p2pexec status`) and attached drivers talk to a
running node.

A unix stream socket `<data_dir>/control.sock`, mode 0600 in a 0700 data dir, and the
peer's uid is checked on every connection (SO_PEERCRED), so only the node's own user can
use it. Every frame is a 4-byte big-endian length and a msgpack body. The first frame
says what the client is:
- a msgpack map is a tool's request, `{"op": name, "arg": value}`, answered by
  `{"ok": true, "value": ...}` or `{"ok": false, "error": "one line"}`, in order, until the
  client closes the connection;
- a codec message `Hello(role="driver")` attaches a driver: from then on the connection is
  the local link of `p2pexec.exec.protocol`, served by the execution layer;
  `Hello(role="output")` opens that driver's output stream (what its tasks print).
A client that says nothing within `FIRST_FRAME_TIMEOUT` is dropped.

A socket file left by a node that was killed is noticed (nobody accepts on it) and
replaced; a live one means another node already uses the data dir, which is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import inspect
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import trio

from p2pexec.errors import (
    ControlError,
    LocalUsageError,
    NodeNotRunning,
    P2PExecError,
    ProtocolError,
    RemoteProtocolError,
)
from p2pexec.exec import protocol as link
from p2pexec.net.codec import HEADER, Codec, FrameDecoder

log = logging.getLogger("p2pexec.control")

MAX_REQUEST = 1 << 20
"""Bytes of one request: ops carry small arguments."""
MAX_REPLY = 64 << 20
"""Bytes of one reply a client accepts: a status of thousands of members fits easily."""
_UNIX_PATH_MAX = 100
"""sun_path holds 108 bytes; longer paths are reached through /proc/self/fd (Linux)."""

FIRST_FRAME_TIMEOUT = 10.0
"""Seconds a new client may stay silent before it is dropped (it holds a slot meanwhile)."""

Handler = Callable[[Any], Any]
AttachHandler = Callable[[trio.SocketStream, link.Hello, FrameDecoder], Awaitable[None]]
"""Serves an attached driver: its stream, its Hello, and the decoder holding what it sent
after the Hello."""
_MSGPACK_MAPS = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])


def _pack(value: dict[str, Any]) -> bytes:
    body = msgpack.packb(value, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def _unpack(body: bytes, limit: int) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False, max_str_len=limit,
                               max_bin_len=limit, max_array_len=limit, max_map_len=limit,
                               max_ext_len=0)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(
            f"malformed control message: {str(exc) or type(exc).__name__}") from None


@contextlib.contextmanager
def short_socket_path(path: Path) -> Iterator[str]:
    """A path to the socket short enough for sun_path (through the directory's fd if not)."""
    if len(os.fsencode(str(path))) < _UNIX_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _private_dir(directory: Path) -> None:
    """The data dir exists and only its owner may enter it (0700), as the docstring says."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = directory.stat().st_mode & 0o777
    if mode != 0o700:
        log.warning("data dir %s had mode %o; setting it to 700 (it holds the node key and "
                    "the control socket)", directory, mode)
        directory.chmod(0o700)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Hold `<data_dir>/lock` for the node's life: two nodes starting at once on one data
    dir cannot both pass the stale-socket check below."""
    fd = os.open(directory / "lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LocalUsageError(f"another node is already running with data dir "
                                  f"{directory}; give this one its own --data-dir") from None
        yield
    finally:
        os.close(fd)


def _someone_listens(path: Path) -> bool:
    with short_socket_path(path) as short, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(short)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:
            return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
        return True


def _is_link_message(body: bytes) -> bool:
    """A codec message (an array led by its type code) rather than a tool's request map."""
    if not body or body[0] in _MSGPACK_MAPS:
        return False
    value = _unpack(body, MAX_REQUEST)
    return isinstance(value, list) and bool(value) and type(value[0]) is int


def peer_uid(sock: Any) -> int:
    """The uid of the process at the other end of a unix socket (Linux SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class ControlServer:
    """Serves `handlers` (op name -> function of the argument) on the control socket, and
    hands drivers that attach to `attach`."""

    def __init__(self, path: Path, handlers: dict[str, Handler],
                 attach: AttachHandler | None = None) -> None:
        self.path = Path(path)
        self.handlers = handlers
        self.attach = attach
        self._hello_codec = Codec(link.HELLO_LIMITS)

    async def run(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Listen until cancelled; remove the socket file on the way out.
        `LocalUsageError` if another node already listens on this path."""
        _private_dir(self.path.parent)
        with _exclusive(self.path.parent):
            await self._listen(task_status)

    async def _listen(self, task_status: trio.TaskStatus[Path]) -> None:
        if self.path.exists() or self.path.is_symlink():
            if await trio.to_thread.run_sync(_someone_listens, self.path):
                raise LocalUsageError(f"another node is already running with data dir "
                                      f"{self.path.parent} (its control socket answers); "
                                      f"give this one its own --data-dir")
            self.path.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with short_socket_path(self.path) as short:
                await sock.bind(short)
            os.chmod(self.path, 0o600)
            sock.listen(64)
            inode = self.path.stat().st_ino
        except BaseException:
            sock.close()
            raise
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._serve,
                                    [trio.SocketListener(sock)])
                task_status.started(self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                if self.path.stat().st_ino == inode:  # not a successor's socket
                    self.path.unlink()

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            uid = peer_uid(stream.socket)
            if uid != os.getuid():
                log.warning("control socket %s: refused a client of uid %d (only uid %d, "
                            "the node's user, may connect)", self.path, uid, os.getuid())
                return
            decoder = FrameDecoder(MAX_REQUEST)
            try:
                first = None
                with trio.move_on_after(FIRST_FRAME_TIMEOUT) as waited:
                    first = await self._first_frame(stream, decoder)
                if waited.cancelled_caught:
                    log.warning("control socket %s: a client sent nothing for %g s; "
                                "connection closed", self.path, FIRST_FRAME_TIMEOUT)
                    return
                if first is None:
                    return
                if _is_link_message(first):
                    await self._attach(stream, first, decoder)
                    return
                await stream.send_all(await self._answer(first))
                while True:
                    for body in decoder.feed(b""):
                        await stream.send_all(await self._answer(body))
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    for body in decoder.feed(data):
                        await stream.send_all(await self._answer(body))
            except ProtocolError as exc:
                log.warning("control socket %s: %s; connection closed", self.path, exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    @staticmethod
    async def _first_frame(stream: trio.SocketStream, decoder: FrameDecoder) -> bytes | None:
        """The client's first frame; None if it closed first. Later frames stay in
        `decoder`."""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return None
            bodies = decoder.feed(data, max_frames=1)
            if bodies:
                return bodies[0]

    async def _attach(self, stream: trio.SocketStream, first: bytes,
                      decoder: FrameDecoder) -> None:
        hello = self._hello_codec.decode(first)
        if type(hello) is not link.Hello or hello.role not in (link.DRIVER_ROLE,
                                                               link.OUTPUT_ROLE):
            raise RemoteProtocolError(f"a client opened with {type(hello).__name__}; "
                                      f"a driver must open with Hello(role='driver' or "
                                      f"'output')")
        if hello.protocol != link.LINK_PROTOCOL:
            raise RemoteProtocolError(f"driver pid {hello.pid} speaks link protocol "
                                      f"{hello.protocol}, this node speaks "
                                      f"{link.LINK_PROTOCOL} (use the same p2pexec version)")
        if self.attach is None:
            raise RemoteProtocolError("this node does not accept drivers")
        await self.attach(stream, hello, decoder)

    async def _answer(self, body: bytes) -> bytes:
        """The packed reply to one request; a handler's failure (or a value msgpack cannot
        carry) becomes an error reply, never an exception that would stop the node. A
        handler may be a coroutine function (it asks other nodes)."""
        request = _unpack(body, MAX_REQUEST)
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise RemoteProtocolError("a control request is a map with a string 'op'")
        op = request["op"]
        handler = self.handlers.get(op)
        if handler is None:
            return _pack({"ok": False, "error": f"unknown control operation {op!r}; this "
                                                f"node serves {', '.join(sorted(self.handlers))}"})
        try:
            value = handler(request.get("arg"))
            if inspect.isawaitable(value):
                value = await value
            return _pack({"ok": True, "value": value})
        except P2PExecError as exc:
            return _pack({"ok": False, "error": str(exc)})
        except Exception as exc:  # a bug in a handler: report it, keep serving
            log.exception("control operation %r failed", op)
            return _pack({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def request(path: Path, op: str, arg: Any = None, timeout: float = 10.0) -> Any:
    """Ask the node listening on `path` (blocking). `NodeNotRunning` if nobody does,
    `ControlError` with the node's reason if it refuses."""
    path = Path(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            with short_socket_path(path) as short:
                s.connect(short)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise NodeNotRunning(f"no node is running with data dir {path.parent} "
                                 f"(nothing answers on {path}); start one with "
                                 f"`p2pexec join`") from None
        s.sendall(_pack({"op": op, "arg": arg}))
        decoder = FrameDecoder(MAX_REPLY)
        while True:
            data = s.recv(1 << 20)
            if not data:
                raise ControlError(f"the node on {path} closed the connection without an answer")
            try:
                bodies = decoder.feed(data)
            except RemoteProtocolError as exc:
                raise ControlError(f"the node on {path} sent a malformed reply ({exc})") from None
            if bodies:
                break
    try:
        reply = _unpack(bodies[0], MAX_REPLY)
    except RemoteProtocolError as exc:
        raise ControlError(f"the node on {path} sent a malformed reply ({exc})") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlError(f"the node on {path} sent a malformed reply")
    if not reply["ok"]:
        raise ControlError(str(reply.get("error")))
    return reply.get("value")

