"""The production `Transport`: TCP streams secured by `tls.secure`, sealed UDP datagrams.

Streams carry whole messages as length-prefixed frames. Each connection has one writer
task (`TcpConnection.run_writer`, in the transport's nursery): `send` and `send_many` only
append frames to the connection's queue and wake it, and it writes everything queued since
its last write in one `send_all` (trio pays per call). Only the writer touches the socket,
so a cancelled sender never leaves half a frame on the wire. Senders wait only while
`send_buffer_bytes` are queued (back-pressure); a write that the peer does not take within
`write_timeout` breaks the connection. Closing lets the writer drain for a short bound
(`CLOSE_DRAIN_TIMEOUT`), then closes hard.

Datagrams use UDP on the same port number as the TCP listener, each sealed with
AES-256-GCM under a key derived from the token (`security.DatagramSealer`), at most
`max_datagram_size` bytes on the wire. Nothing in a datagram is decoded before it
authenticated; others are dropped with a rate-limited log line.

Bulk channels (`net.bulk`) share the listening port: an accepted connection that opens
with the bulk magic is read as a bulk hello, and handed over when its ticket was offered
(`expect_bulk`), else dropped with a log line.

Defences: at most `max_handshakes` connections in the handshake (or the bulk hello) at
once (more are closed at accept), each under `handshake_timeout`, a started frame must
finish within `frame_timeout`, and a frame header over the limit is refused before its
body is read.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from p2pexec.errors import (
    AuthenticationError,
    LocalProtocolError,
    LocalUsageError,
    ProtocolError,
    RemoteProtocolError,
)
from p2pexec.ids import NodeId
from p2pexec.net import bulk
from p2pexec.net.codec import Codec, frame_bytes, log_dropped
from p2pexec.net.config import NetConfig
from p2pexec.net.security import ClusterKeys, DatagramSealer, NodeIdentity
from p2pexec.net.tls import Credentials, SecureChannel, secure
from p2pexec.net.transport import Address, ConnectionHandler, Peer

log = logging.getLogger("p2pexec.net")

_BIND_ATTEMPTS = 8
"""Tries at finding a port free for both TCP and UDP when binding port 0."""

CLOSE_DRAIN_TIMEOUT = 2.0
"""Most seconds `aclose` lets the writer send what is queued (at most write_timeout). A
live peer takes megabytes in that time; a stalled one must not hold a shutdown for the
whole write_timeout, so after it the connection is closed hard."""


class RateLimitedLog:
    """At most `burst` WARNING lines per `interval` seconds for each kind of event, then
    one line saying how many were suppressed: a flood must not flood the log."""

    def __init__(self, interval: float, burst: int = 10) -> None:
        self.interval = interval
        self.burst = burst
        self._windows: dict[str, tuple[float, int]] = {}

    def allow(self, kind: str) -> bool:
        """True if a line about `kind` may be logged now."""
        now = trio.current_time()
        start, count = self._windows.get(kind, (-math.inf, 0))
        if now - start >= self.interval:
            if count > self.burst:
                log.warning("%d more '%s' events suppressed in the last %.0f s",
                            count - self.burst, kind, self.interval)
            start, count = now, 0
        self._windows[kind] = (start, count + 1)
        return count < self.burst


class TcpConnection:
    """One authenticated TLS stream to a peer, carrying whole messages (see module doc)."""

    def __init__(self, transport: TcpTransport, channel: SecureChannel, address: Address) -> None:
        self._transport = transport
        self._stream = channel.stream
        self._decoder = channel.decoder
        self._inbox: collections.deque[bytes] = collections.deque(channel.early)
        self._peer = Peer(channel.peer, address)
        cfg = transport.config
        self._max_frame = cfg.limits.max_frame_size
        self._limit = cfg.send_buffer_bytes
        self._frame_timeout = cfg.frame_timeout
        # when the frame being received must be complete (one may have begun in the handshake)
        self._frame_deadline = (trio.current_time() + cfg.frame_timeout
                                if self._decoder.partial else math.inf)
        self._write_timeout = cfg.write_timeout
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._wake = trio.lowlevel.ParkingLot()  # the writer waiting for frames
        self._space = trio.lowlevel.ParkingLot()  # senders waiting for queue space
        self._writer_done = trio.Event()
        self._closed = False
        self._broken: str | None = None
        self._eof = False

    @property
    def peer(self) -> Peer:
        return self._peer

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("connection closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(f"connection to {self._peer.node_id.short} broke: "
                                           f"{self._broken}")

    async def send(self, message: bytes) -> None:
        """Queue one message (see `send_many`)."""
        self._check_open()
        frame = frame_bytes(message, self._max_frame)
        if self._pending_bytes >= self._limit:
            await self._wait_for_space()
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        self._wake.unpark_all()

    async def send_many(self, messages: list[bytes]) -> None:
        """Queue messages; the writer sends them in one `send_all` with everything else
        queued. Waits only while `send_buffer_bytes` are already queued (back-pressure)."""
        self._check_open()
        if not messages:
            return
        frames = [frame_bytes(m, self._max_frame) for m in messages]
        if self._pending_bytes >= self._limit:
            await self._wait_for_space()
        self._pending.extend(frames)
        self._pending_bytes += sum(map(len, frames))
        self._wake.unpark_all()

    async def _wait_for_space(self) -> None:
        while self._pending_bytes >= self._limit:
            await self._space.park()
            self._check_open()

    async def run_writer(self) -> None:
        """The connection's writer task: drains the queue until the connection closes.

        One cancel scope serves every write: its deadline is armed (`write_timeout`) only
        while a write is in progress, which costs less than a scope per write."""
        try:
            with trio.CancelScope() as scope:
                while True:
                    while not self._pending:
                        if self._closed or self._broken is not None:
                            return
                        await self._wake.park()
                    batch, self._pending, self._pending_bytes = self._pending, [], 0
                    self._space.unpark_all()
                    scope.deadline = trio.current_time() + self._write_timeout
                    await self._stream.send_all(batch[0] if len(batch) == 1 else b"".join(batch))
                    scope.deadline = math.inf
            self._fail(f"peer took no data for {self._write_timeout:g} s")
            await self._abort()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self._broken is None and not self._closed:
                self._broken = f"write failed: {exc.__cause__ or str(exc) or type(exc).__name__}"
        finally:
            if self._broken is None and not self._closed:  # cancelled: the transport stopped
                self._broken = "the transport stopped serving"
            self._space.unpark_all()
            self._writer_done.set()

    def _fail(self, reason: str) -> None:
        self._broken = reason
        log_dropped(self._peer.address, reason, self._peer.node_id)

    async def receive(self) -> bytes:
        """Next whole message (`EndOfChannel` after a clean close by the peer)."""
        if self._closed:
            raise trio.ClosedResourceError("connection closed")
        # one cancel scope for the whole message, its deadline moved as frames start: a
        # large frame takes many reads (a TLS record each), and a scope per read cost
        # about a fifth of a transfer's receiving time
        with trio.CancelScope() as scope:
            while not self._inbox:
                self._check_open()
                if self._eof:
                    raise trio.EndOfChannel
                scope.deadline = (self._frame_deadline if self._decoder.partial
                                  else math.inf)
                try:
                    data = await self._stream.receive_some(65536)
                except trio.BrokenResourceError as exc:
                    if self._closed:
                        raise trio.ClosedResourceError("connection closed") from None
                    self._broken = f"link broke: {exc.__cause__ or exc or 'reset'}"
                    raise
                await self._take(data)
        if scope.cancelled_caught:
            await self._protocol_failure(f"started a frame and did not finish it within "
                                         f"{self._frame_timeout:g} s")
        return self._inbox.popleft()

    async def _take(self, data: bytes) -> None:
        """Feed one read to the decoder (end-of-file and bad frames end the connection)."""
        if not data:
            if self._decoder.partial:
                await self._protocol_failure("closed the connection in the middle of a frame")
            self._eof = True
            raise trio.EndOfChannel
        was_partial = self._decoder.partial
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            await self._protocol_failure(str(exc))
        self._inbox.extend(frames)
        if self._decoder.partial and (frames or not was_partial):
            # a new frame started: it has frame_timeout to arrive whole, however slowly
            # its bytes trickle in
            self._frame_deadline = trio.current_time() + self._frame_timeout

    async def _protocol_failure(self, reason: str) -> None:
        """Log the one line, drop the peer, and end this receive with BrokenResourceError."""
        self._fail(reason)
        await self._abort()
        raise trio.BrokenResourceError(reason)

    async def _abort(self) -> None:
        self._transport.forget(self)
        self._wake.unpark_all()
        self._space.unpark_all()
        await trio.aclose_forcefully(self._stream)

    async def aclose(self) -> None:
        """Let the writer send what is queued (within CLOSE_DRAIN_TIMEOUT or write_timeout,
        whichever is shorter), send TLS close_notify, close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._transport.forget(self)
        self._wake.unpark_all()
        self._space.unpark_all()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(min(self._write_timeout, CLOSE_DRAIN_TIMEOUT)):
                await self._writer_done.wait()
            if self._broken is None and self._writer_done.is_set():
                with trio.move_on_after(1.0):
                    try:
                        await self._stream.aclose()
                        return
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
            await trio.aclose_forcefully(self._stream)


class TcpBulkStream:
    """A bulk connection: the plain socket stream, read with `recv_into` so a frame lands
    in the caller's buffer in a few large reads (see `net.bulk`)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def receive_into(self, buffer: memoryview) -> int:
        try:
            return await self._stream.socket.recv_into(buffer)
        except OSError as exc:
            raise trio.BrokenResourceError(f"bulk connection broke: {exc}") from exc

    def close(self) -> None:
        """Close at once: nothing is buffered on our side to flush."""
        self._stream.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class TcpTransport:
    """TCP + TLS streams and sealed UDP datagrams on one port (see the module docstring).

    Construct it, then `serve` (binds and accepts) and/or `connect`; `aclose` ends it all.
    A connection handed to the `serve` handler is closed when the handler returns."""

    def __init__(self, credentials: Credentials, config: NetConfig | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.credentials = credentials
        self.config = config or NetConfig()
        self.codec = Codec(self.config.limits)
        self._host = host
        self._port = port
        self._listener: trio.SocketListener | None = None
        self._udp: trio.socket.SocketType | None = None
        self._address: Address = (host, port)
        self._sealer = DatagramSealer(credentials.keys, credentials.node_id)
        self._connections: set[TcpConnection] = set()
        self._handshakes = 0
        self._bulk_waiting: dict[bytes, trio.MemorySendChannel[TcpBulkStream]] = {}
        self._serve_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._ratelimit = RateLimitedLog(self.config.log_interval)
        self.closing = False

    @classmethod
    def create(cls, data_dir: Path, token: str, config: NetConfig | None = None,
               host: str = "127.0.0.1", port: int = 0) -> TcpTransport:
        """The usual way a node makes its transport: its key from `data_dir` (created on
        first start), the cluster from `token`. Logs the node id's short form."""
        identity = NodeIdentity.load_or_create(data_dir)
        keys = ClusterKeys(token)
        log.info("node %s in cluster %s", identity.node_id.short, keys.cluster_id)
        return cls(Credentials.create(identity, keys), config, host, port)

    @property
    def local(self) -> Peer:
        return Peer(self.credentials.node_id, self._address)

    @property
    def identity(self) -> NodeIdentity:
        """This node's key (it signs the node's DHT records)."""
        return self.credentials.identity

    @property
    def max_datagram_payload(self) -> int:
        """Most bytes `send_datagram` takes: max_datagram_size minus the seal."""
        return self.config.max_datagram_size - DatagramSealer.OVERHEAD

    @property
    def handshakes_in_progress(self) -> int:
        """Connections accepted whose handshake has not finished (at most `max_handshakes`)."""
        return self._handshakes

    @property
    def connection_count(self) -> int:
        """Authenticated connections currently open."""
        return len(self._connections)

    def forget(self, conn: TcpConnection) -> None:
        """A connection closed: stop tracking it."""
        self._connections.discard(conn)

    def _check_open(self) -> None:
        if self.closing:
            raise trio.ClosedResourceError("transport closed")

    async def bind(self) -> Address:
        """Bind the TCP listener and the UDP socket to one port (idempotent)."""
        self._check_open()
        if self._listener is not None:
            return self._address
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        for _ in range(_BIND_ATTEMPTS):
            sock = trio.socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await sock.bind((self._host, self._port))
            port = sock.getsockname()[1]
            udp = trio.socket.socket(family, socket.SOCK_DGRAM)
            try:
                await udp.bind((self._host, port))
            except OSError:
                sock.close()
                udp.close()
                if self._port:
                    raise
                continue
            sock.listen(1024)
            self._listener = trio.SocketListener(sock)
            self._udp = udp
            self._address = (self._host, port)
            return self._address
        raise OSError(f"no port free for both TCP and UDP on {self._host}")

    async def serve(self, handler: ConnectionHandler, *,
                    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until `aclose`; each passes the handshake, then runs
        `handler` in its own task."""
        address = await self.bind()
        assert self._listener is not None
        listener = self._listener
        try:
            async with trio.open_nursery() as nursery:
                self._serve_scope = nursery.cancel_scope
                self._nursery = nursery
                task_status.started(address)
                await self._accept_loop(listener, nursery, handler)
        finally:
            self._nursery = None

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery,
                           handler: ConnectionHandler) -> None:
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:  # out of file descriptors: back off, keep serving
                if self._ratelimit.allow("accept failed"):
                    log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            if self._handshakes >= self.config.max_handshakes:
                if self._ratelimit.allow("handshake cap"):
                    log_dropped(_remote(stream), f"{self._handshakes} handshakes already in "
                                f"progress (max_handshakes)")
                await trio.aclose_forcefully(stream)
                continue
            self._handshakes += 1
            nursery.start_soon(self._accept_one, stream, handler)

    async def _accept_one(self, stream: trio.SocketStream, handler: ConnectionHandler) -> None:
        remote = _remote(stream)
        try:
            channel = await self._handshake(stream, remote, server=True, expected=None)
        finally:
            self._handshakes -= 1
        if channel is None:
            return
        conn = self._adopt(channel, remote)
        try:
            await handler(conn)
        except ProtocolError as exc:
            log_dropped(remote, exc, channel.peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
            pass  # the peer left or the transport is closing: nothing to report
        except Exception:
            log.exception("handler for peer %s:%s (node %s) failed", remote[0], remote[1],
                          channel.peer.short)
        finally:
            await conn.aclose()

    async def _is_bulk(self, stream: trio.SocketStream) -> bool:
        """Whether a fresh connection opens with (the start of) a bulk hello rather than a
        TLS record. Peeks, so the TLS handshake still sees every byte, and anything else
        (random bytes, HTTP) still fails the handshake with its own reason."""
        first = await stream.socket.recv(len(bulk.BULK_MAGIC), socket.MSG_PEEK)
        return bool(first) and bulk.BULK_MAGIC.startswith(first)

    async def _accept_bulk(self, stream: trio.SocketStream) -> None:
        """Read a bulk hello and hand the connection to whoever offered its ticket."""
        data = b""
        while len(data) < bulk.HELLO_SIZE:
            chunk = await stream.receive_some(bulk.HELLO_SIZE - len(data))
            if not chunk:
                raise RemoteProtocolError("closed the connection inside its bulk hello")
            data += chunk
        waiting = self._bulk_waiting.pop(bulk.ticket_of(data), None)
        if waiting is None:
            raise RemoteProtocolError("presented a bulk ticket nobody offered (or offered "
                                      "before)")
        waiting.send_nowait(TcpBulkStream(stream))

    @contextlib.contextmanager
    def expect_bulk(self, ticket: bytes) -> Iterator[trio.MemoryReceiveChannel[TcpBulkStream]]:
        """Hand the bulk connection presenting `ticket` to the channel yielded, once,
        while the context lasts (see `net.bulk.BulkTransport`)."""
        if ticket in self._bulk_waiting:
            raise LocalUsageError("a bulk ticket is offered once")
        send, receive = trio.open_memory_channel[TcpBulkStream](1)
        self._bulk_waiting[ticket] = send
        try:
            yield receive
        finally:
            self._bulk_waiting.pop(ticket, None)
            send.close()
            try:  # it came but nobody took it
                unclaimed = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                pass
            else:
                unclaimed.close()
            receive.close()

    async def connect_bulk(self, address: Address, ticket: bytes) -> TcpBulkStream:
        """Open a bulk connection and present `ticket` (`TimeoutError` after
        `connect_timeout`)."""
        self._check_open()
        host, port = address
        with trio.move_on_after(self.config.connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
            try:
                await stream.send_all(bulk.hello(ticket))
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            return TcpBulkStream(stream)
        raise TimeoutError(f"no bulk connection to {host}:{port} within "
                           f"{self.config.connect_timeout:g} s")

    async def _handshake(self, stream: trio.SocketStream, remote: Address, *, server: bool,
                         expected: NodeId | None) -> SecureChannel | None:
        """Run `tls.secure` under the timeout; on failure log one line, close, return None.
        A server first tells a bulk hello from TLS (under the same deadline) and hands a
        bulk connection over: None as well, the stream is no longer ours."""
        timeout = self.config.handshake_timeout
        reason: str | Exception
        try:
            with trio.fail_after(timeout):
                if server and await self._is_bulk(stream):
                    await self._accept_bulk(stream)
                    return None
                return await secure(stream, self.credentials, self.codec, server=server,
                                    expected=expected)
        except trio.TooSlowError:
            reason = f"did not finish the handshake within {timeout:g} s"
        except ProtocolError as exc:
            reason = exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason = f"connection lost during the handshake ({str(exc) or type(exc).__name__})"
        except BaseException:  # cancelled (the caller gave up, the transport is closing)
            await trio.aclose_forcefully(stream)
            raise
        if self._ratelimit.allow("handshake failed"):
            log_dropped(remote, reason)
        await trio.aclose_forcefully(stream)
        if not server:
            if isinstance(reason, ProtocolError):
                raise reason
            raise AuthenticationError(f"{remote[0]}:{remote[1]} {reason}")
        return None

    async def connect(self, address: Address, expected: NodeId | None = None) -> TcpConnection:
        """Open and authenticate a connection. `OSError` if nobody answers (`TimeoutError`
        after `connect_timeout`), `AuthenticationError`/`ProtocolError` if the peer fails
        the handshake (it is logged and dropped)."""
        self._check_open()
        if self._nursery is None:
            raise LocalUsageError("TcpTransport.connect needs `serve` running: connections "
                                  "run their writer tasks in its nursery")
        host, port = address
        with trio.move_on_after(self.config.connect_timeout) as scope:
            stream = await trio.open_tcp_stream(host, port)
        if scope.cancelled_caught:
            raise TimeoutError(f"no answer from {host}:{port} within "
                               f"{self.config.connect_timeout:g} s")
        channel = await self._handshake(stream, (host, port), server=False, expected=expected)
        assert channel is not None  # a client-side failure raised instead
        if self.closing or self._nursery is None:
            await trio.aclose_forcefully(channel.stream)
            self._check_open()
        return self._adopt(channel, (host, port))

    def _adopt(self, channel: SecureChannel, address: Address) -> TcpConnection:
        """Track a fresh authenticated connection and start its writer task."""
        assert self._nursery is not None
        conn = TcpConnection(self, channel, address)
        self._connections.add(conn)
        self._nursery.start_soon(conn.run_writer)
        return conn

    async def send_datagram(self, address: Address, payload: bytes) -> None:
        """Seal and send one datagram; lost silently if nobody is there."""
        await self.bind()
        assert self._udp is not None
        limit = self.max_datagram_payload
        if len(payload) > limit:
            raise LocalProtocolError(f"datagram payload of {len(payload)} bytes is over the "
                                     f"{limit}-byte limit (max_datagram_size)")
        try:
            await self._udp.sendto(self._sealer.seal(payload), address)
        except (OSError, OverflowError, ValueError) as exc:  # bad port, NUL or bad IDNA host
            if self._ratelimit.allow("datagram send failed"):
                log.warning("datagram to %s:%s not sent: %s", address[0], address[1], exc)

    async def receive_datagram(self) -> tuple[Address, bytes]:
        """Next datagram that authenticated under the token; others are dropped and logged.
        One task at a time may receive."""
        await self.bind()
        assert self._udp is not None
        udp = self._udp
        while True:
            try:
                data, source = await udp.recvfrom(self.config.max_datagram_size + 1)
            except (ConnectionRefusedError, ConnectionResetError):
                continue  # an ICMP error about an earlier send: not a datagram
            except OSError as exc:
                if self.closing:
                    raise trio.ClosedResourceError("transport closed") from exc
                raise
            address: Address = (source[0], source[1])
            if len(data) > self.config.max_datagram_size:
                reason = f"datagram over {self.config.max_datagram_size} bytes"
            else:
                try:
                    _sender, payload = self._sealer.open(data)
                except AuthenticationError as exc:
                    reason = str(exc)
                else:
                    return address, payload
            if self._ratelimit.allow("bad datagram"):
                log.warning("dropped datagram from %s:%s: %s", address[0], address[1], reason)

    async def aclose(self) -> None:
        """Stop serving, close the sockets and every connection (idempotent)."""
        if self.closing:
            return
        self.closing = True
        with trio.CancelScope(shield=True):
            if self._listener is not None:
                await self._listener.aclose()
            if self._udp is not None:
                self._udp.close()
            async with trio.open_nursery() as closing:  # a stalled peer delays no other
                for conn in list(self._connections):
                    closing.start_soon(conn.aclose)
            if self._serve_scope is not None:
                self._serve_scope.cancel()


def _remote(stream: Any) -> Address:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return ("?", 0)
    return (host, port)
