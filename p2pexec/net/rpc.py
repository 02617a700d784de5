"""Request/response and one-way messages over one connection per peer, on any `Transport`.

* Concurrent calls share a connection; each request carries a `call_id` and its answer the
  same id. `call` waits at most `timeout`; `call_many` sends a whole batch in one write
  and waits for all answers (pipelining without one task per request).
* A caller cancelled or timed out drops only its own call: the connection stays up, a
  `Cancel` tells the callee, a late answer is ignored.
* A connection that broke is dropped from the tables; the next call to that address
  connects again (reconnect on demand). Calls in flight on it fail with
  `trio.BrokenResourceError`; they are not retried here, since a request may not be
  idempotent.
* Incoming messages are decoded with the codec limits; a peer that sends a malformed or
  unknown message is logged and dropped, the node carries on.

Handlers: `on_request(peer, body) -> answer message` and `on_message(peer, message)`. A
plain function runs inline in the connection's reader (fastest: no task per request, for
quick handlers); a coroutine function runs in its own task, so slow handlers do not
block the connection and can be cancelled by the caller.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import trio

from p2pexec.errors import LocalProtocolError, P2PExecError, ProtocolError, RemoteProtocolError
from p2pexec.ids import NodeId
from p2pexec.net.codec import Codec, log_dropped
from p2pexec.net.config import NetConfig
from p2pexec.net.messages import Cancel, Failure, Request, Response
from p2pexec.net.transport import Address, Connection, Peer, Transport

log = logging.getLogger("p2pexec.net")

RequestHandler = Callable[[Peer, Any], Any | Awaitable[Any]]
MessageHandler = Callable[[Peer, Any], Awaitable[None] | None]


class RemoteError(P2PExecError):
    """The peer's handler raised: `kind` is the exception class name, `text` its message."""

    def __init__(self, kind: str, text: str, peer: Peer) -> None:
        super().__init__(f"{kind} on node {peer.node_id.short}: {text}")
        self.kind = kind
        self.text = text


class _Waiter:
    """Collects the answers of one `call_many` batch."""

    __slots__ = ("done", "remaining", "results")

    def __init__(self, n: int) -> None:
        self.results: list[Any] = [None] * n
        self.remaining = n
        self.done = trio.Event()

    def settle(self, index: int, value: Any) -> None:
        self.results[index] = value
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


class _Channel:
    """One connection and the calls waiting on it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.calls: dict[int, tuple[_Waiter, int]] = {}
        self.running: dict[int, trio.CancelScope] = {}  # async handlers, by call id
        self.alive = True

    def fail_all(self, reason: str) -> None:
        """The link is gone: every call still waiting on it fails (each its own error)."""
        self.alive = False
        for waiter, index in list(self.calls.values()):
            waiter.settle(index, trio.BrokenResourceError(reason))
        self.calls.clear()


class RpcNode:
    """Calls and one-way messages between nodes over `transport` (see module docstring).

    Run it with `await nursery.start(rpc.serve)`: it serves the transport and owns the
    reader tasks of its outgoing connections; `aclose` ends everything."""

    def __init__(self, transport: Transport, on_request: RequestHandler | None = None,
                 on_message: MessageHandler | None = None, config: NetConfig | None = None,
                 codec: Codec | None = None) -> None:
        self.transport = transport
        self.config = config or NetConfig()
        self.codec = codec or Codec(self.config.limits)
        self._on_request = on_request
        self._on_message = on_message
        self._request_is_async = inspect.iscoroutinefunction(on_request)
        self._message_is_async = inspect.iscoroutinefunction(on_message)
        self._by_address: dict[Address, _Channel] = {}
        self._by_node: dict[NodeId, _Channel] = {}
        self._connecting: dict[Address, trio.Lock] = {}
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None

    @property
    def local(self) -> Peer:
        return self.transport.local

    async def serve(self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Serve the transport; `task_status.started(address)` once calls can be made."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                address = await nursery.start(self.transport.serve, self._accepted)
                task_status.started(address)
        finally:
            self._nursery = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Make calls and take `adopt`ed connections without serving the transport: for a
        node whose router owns `transport.serve` and hands RPC connections here."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def adopt(self, conn: Connection, first: Any) -> None:
        """Serve an incoming connection whose first message (`first`, decoded) a router
        already read: it becomes a channel like any accepted one."""
        await self._read(self._register(conn, None), None, first)

    async def aclose(self) -> None:
        """Close the transport and with it every connection and reader."""
        await self.transport.aclose()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[RpcNode]:
        """`async with node.serving():` serve inside the block, close on the way out."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.serve)
            try:
                yield self
            finally:
                await self.aclose()
                nursery.cancel_scope.cancel()

    # ---- outgoing --------------------------------------------------------------------

    def _live(self, address: Address, node: NodeId | None) -> _Channel | None:
        """The live channel to `node` (either direction) or, with no node given, `address`."""
        chan = self._by_node.get(node) if node is not None else self._by_address.get(address)
        return chan if chan is not None and chan.alive else None

    async def _channel(self, address: Address, node: NodeId | None) -> _Channel:
        """A live channel to `node` or `address`; connect if there is none."""
        chan = self._live(address, node)
        if chan is not None:
            return chan
        lock = self._connecting.setdefault(address, trio.Lock())
        try:
            async with lock:
                chan = self._live(address, node)  # another task may have connected meanwhile
                if chan is not None:
                    return chan
                if self._nursery is None:
                    raise trio.ClosedResourceError("RpcNode is not serving")
                conn = await self.transport.connect(address, expected=node)
                chan = self._register(conn, address)
                self._nursery.start_soon(self._read, chan, address)
                return chan
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._connecting.pop(address, None)  # keep no lock per address ever seen

    def _register(self, conn: Connection, address: Address | None) -> _Channel:
        chan = _Channel(conn)
        if address is not None:
            self._by_address[address] = chan
        self._by_node[conn.peer.node_id] = chan
        return chan

    def _unregister(self, chan: _Channel, address: Address | None) -> None:
        if address is not None and self._by_address.get(address) is chan:
            del self._by_address[address]
        node = chan.conn.peer.node_id
        if self._by_node.get(node) is chan:
            del self._by_node[node]

    async def call(self, address: Address, body: Any, *, node: NodeId | None = None,
                   timeout: float | None = None) -> Any:
        """Send `body` as a request and return the answer message.

        Raises `TimeoutError` after `timeout` (default `config.rpc_timeout`), `RemoteError`
        if the peer's handler raised, `trio.BrokenResourceError` if the link broke, `OSError`
        or `AuthenticationError` if no connection could be made."""
        (result,) = await self._calls(address, [body], node, timeout)
        if isinstance(result, BaseException):
            raise result
        return result

    async def call_many(self, address: Address, bodies: Sequence[Any], *,
                        node: NodeId | None = None, timeout: float | None = None) -> list[Any]:
        """Send every request in one write; answers in order, each either the answer message
        or the exception for that request (`RemoteError`, `BrokenResourceError`). Raises
        `TimeoutError` if not all answered within `timeout`."""
        return await self._calls(address, bodies, node, timeout)

    async def _calls(self, address: Address, bodies: Sequence[Any], node: NodeId | None,
                     timeout: float | None) -> list[Any]:
        if not bodies:
            return []
        timeout = self.config.rpc_timeout if timeout is None else timeout
        deadline = trio.current_time() + timeout
        chan = self._live(address, node)
        if chan is None:
            with trio.move_on_at(deadline) as scope:
                chan = await self._channel(address, node)
            if scope.cancelled_caught:
                raise TimeoutError(f"no connection to {address[0]}:{address[1]} within "
                                   f"{timeout:g} s")
        waiter = _Waiter(len(bodies))
        ids = [next(self._ids) for _ in bodies]
        frames = [self.codec.encode(Request(call_id, body)) for call_id, body in zip(
            ids, bodies, strict=True)]
        for index, call_id in enumerate(ids):
            chan.calls[call_id] = (waiter, index)
        finished = False
        try:
            with trio.move_on_at(deadline):
                await chan.conn.send_many(frames)  # waits only under back-pressure
                await waiter.done.wait()
            finished = waiter.done.is_set()
        finally:
            if not finished:
                await self._abandon(chan, ids)
        if not finished:
            raise TimeoutError(f"{waiter.remaining} of {len(bodies)} calls to "
                               f"{chan.conn.peer.node_id.short} unanswered after {timeout:g} s")
        return waiter.results

    async def _abandon(self, chan: _Channel, ids: list[int]) -> None:
        """The caller gave up: forget its calls and tell the callee (best effort)."""
        gone = [call_id for call_id in ids if chan.calls.pop(call_id, None) is not None]
        if not gone or not chan.alive:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            try:
                await chan.conn.send_many([self.codec.encode(Cancel(i)) for i in gone])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the link is gone, and with it the callee's work

    async def notify(self, address: Address, message: Any, *,
                     node: NodeId | None = None) -> None:
        """Send a one-way message (no answer, no delivery guarantee beyond the stream)."""
        chan = await self._channel(address, node)
        await chan.conn.send(self.codec.encode(message))

    async def notify_many(self, address: Address, messages: Sequence[Any], *,
                          node: NodeId | None = None) -> None:
        """Send one-way messages in one write (as `notify`, in order)."""
        chan = await self._channel(address, node)
        await chan.conn.send_many([self.codec.encode(m) for m in messages])

    # ---- incoming --------------------------------------------------------------------

    async def _accepted(self, conn: Connection) -> None:
        await self._read(self._register(conn, None), None)

    async def _read(self, chan: _Channel, address: Address | None, first: Any = None) -> None:
        """The connection's reader: answers, requests, cancels, one-way messages."""
        conn = chan.conn
        peer = conn.peer
        reason = f"connection to {peer.node_id.short} closed"
        try:
            async with trio.open_nursery() as handlers:
                try:
                    if first is not None:
                        await self._dispatch(chan, peer, first, handlers)
                    while True:
                        msg = self.codec.decode(await conn.receive())
                        await self._dispatch(chan, peer, msg, handlers)
                except ProtocolError as exc:
                    log_dropped(peer.address, exc, peer.node_id)
                    reason = f"dropped {peer.node_id.short}: {exc}"
                except (trio.EndOfChannel, trio.BrokenResourceError,
                        trio.ClosedResourceError) as exc:
                    reason = f"connection to {peer.node_id.short} lost ({type(exc).__name__})"
                handlers.cancel_scope.cancel()
        finally:
            chan.fail_all(reason)
            self._unregister(chan, address)
            with trio.CancelScope(shield=True):
                await conn.aclose()

    async def _dispatch(self, chan: _Channel, peer: Peer, msg: Any,
                        handlers: trio.Nursery) -> None:
        kind = type(msg)
        if kind is Response or kind is Failure:
            entry = chan.calls.pop(msg.call_id, None)
            if entry is not None:  # else: a late answer to a call given up on
                value = msg.body if kind is Response else RemoteError(msg.kind, msg.text, peer)
                entry[0].settle(entry[1], value)
        elif kind is Request:
            if self._on_request is None:
                raise RemoteProtocolError("sent a request to a node that serves none")
            if self._request_is_async:
                if msg.call_id in chan.running:  # its Cancel could not tell the two apart
                    raise RemoteProtocolError(f"duplicate call id {msg.call_id}")
                scope = chan.running[msg.call_id] = trio.CancelScope()
                handlers.start_soon(self._run_async_request, chan, peer, msg, scope)
            else:
                await chan.conn.send(self._answer_inline(peer, msg))
        elif kind is Cancel:
            scope = chan.running.get(msg.call_id)
            if scope is not None:
                scope.cancel()
        elif self._on_message is None:
            raise RemoteProtocolError(f"sent a one-way {kind.__name__} to a node that "
                                      f"takes none")
        elif self._message_is_async:
            handlers.start_soon(self._run_async_message, peer, msg)
        else:
            self._guard_message(peer, msg)

    def _answer_inline(self, peer: Peer, req: Request) -> bytes:
        assert self._on_request is not None
        try:
            answer = self._on_request(peer, req.body)
        except RemoteProtocolError:
            raise
        except Exception as exc:
            return self._encode_failure(req.call_id, exc)
        return self._encode_answer(req.call_id, answer)

    def _encode_answer(self, call_id: int, answer: Any) -> bytes:
        """The encoded `Response`, or a `Failure` if the answer cannot be sent (our bug)."""
        try:
            return self.codec.encode(Response(call_id, answer))
        except LocalProtocolError as exc:
            log.error("answer to call %d cannot be sent: %s", call_id, exc)
            return self._encode_failure(call_id, exc)

    def _encode_failure(self, call_id: int, exc: Exception) -> bytes:
        return self.codec.encode(Failure(call_id, type(exc).__name__, str(exc)[:4096]))

    async def _run_async_request(self, chan: _Channel, peer: Peer, req: Request,
                                 scope: trio.CancelScope) -> None:
        """Run one request in `scope`, registered in `chan.running` by the reader before
        this task started (so a duplicate id or a Cancel that arrives first is seen)."""
        assert self._on_request is not None
        with scope:
            try:
                reply = self._encode_answer(req.call_id, await self._on_request(peer, req.body))
            except RemoteProtocolError as exc:
                log_dropped(peer.address, exc, peer.node_id)
                await chan.conn.aclose()
                return
            except Exception as exc:
                reply = self._encode_failure(req.call_id, exc)
            finally:
                if chan.running.get(req.call_id) is scope:
                    del chan.running[req.call_id]
        if scope.cancelled_caught:
            return
        try:
            await chan.conn.send(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the caller's link is gone: nobody to answer

    def _guard_message(self, peer: Peer, msg: Any) -> None:
        assert self._on_message is not None
        try:
            self._on_message(peer, msg)
        except RemoteProtocolError:
            raise
        except Exception:
            log.exception("handler of %s from node %s failed", type(msg).__name__,
                          peer.node_id.short)

    async def _run_async_message(self, peer: Peer, msg: Any) -> None:
        assert self._on_message is not None
        try:
            await self._on_message(peer, msg)
        except Exception:
            log.exception("handler of %s from node %s failed", type(msg).__name__,
                          peer.node_id.short)

