"""The control socket: how local tools (`p2pexec status`, later attached drivers) talk to a
running node.

A unix stream socket `<data_dir>/control.sock`, mode 0600 in a 0700 data dir, so only the
node's owner can use it. Each request and reply is one frame: a 4-byte big-endian length
and a msgpack map. A request is `{"op": name, "arg": value}`; the reply is
`{"ok": true, "value": ...}` or `{"ok": false, "error": "one line"}`. The server answers
requests on one connection in order until the client closes it.

A socket file left by a node that was killed is noticed (nobody accepts on it) and
replaced; a live one means another node already uses the data dir, which is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import trio

from p2pexec.errors import LocalUsageError, P2PExecError, RemoteProtocolError
from p2pexec.net.codec import HEADER, FrameDecoder

log = logging.getLogger("p2pexec.control")

MAX_REQUEST = 1 << 20
"""Bytes of one request: ops carry small arguments."""
MAX_REPLY = 64 << 20
"""Bytes of one reply a client accepts: a status of thousands of members fits easily."""
_UNIX_PATH_MAX = 100
"""sun_path holds 108 bytes; longer paths are reached through /proc/self/fd (Linux)."""

Handler = Callable[[Any], Any]


class NodeNotRunning(LocalUsageError):
    """Nothing answers on the data dir's control socket."""


class ControlError(P2PExecError):
    """The node refused or failed a control request; the message is the node's reason."""


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
def _short_path(path: Path) -> Iterator[str]:
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
    with _short_path(path) as short, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(short)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:
            return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
        return True


class ControlServer:
    """Serves `handlers` (op name -> function of the argument) on the control socket."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = Path(path)
        self.handlers = handlers

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
            with _short_path(self.path) as short:
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
        decoder = FrameDecoder(MAX_REQUEST)
        async with stream:
            try:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    for body in decoder.feed(data):
                        await stream.send_all(self._answer(body))
            except RemoteProtocolError as exc:
                log.warning("control socket %s: %s; connection closed", self.path, exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    def _answer(self, body: bytes) -> bytes:
        """The packed reply to one request; a handler's failure (or a value msgpack cannot
        carry) becomes an error reply, never an exception that would stop the node."""
        request = _unpack(body, MAX_REQUEST)
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise RemoteProtocolError("a control request is a map with a string 'op'")
        op = request["op"]
        handler = self.handlers.get(op)
        if handler is None:
            return _pack({"ok": False, "error": f"unknown control operation {op!r}; this "
                                                f"node serves {', '.join(sorted(self.handlers))}"})
        try:
            return _pack({"ok": True, "value": handler(request.get("arg"))})
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
            with _short_path(path) as short:
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

