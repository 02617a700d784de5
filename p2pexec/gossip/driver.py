"""The one trio driver of the membership core: the only place gossip touches I/O or a clock.

Usage inside a node (the node owns `transport.serve` and routes connections)::

    core = Membership(transport.local.node_id, transport.local.address,
                      GossipConfig.lan(), random.Random(), resources={"CPU": 8.0})
    gossip = GossipDriver(core, transport)
    events = gossip.subscribe()                      # before start: nothing is missed
    await nursery.start(gossip.run)                  # returns once running
    gossip.join([("10.0.0.7", 7946)])                # seeds (zeroconf or --peer)
    ...
    # in the node's connection router, when the first message is a gossip PushPull:
    await gossip.handle_stream(conn, first=first_message_bytes_or_decoded_push_pull)
    ...
    gossip.set_local_load(queue_length=3, running_tasks=2)
    gossip.view()                                    # {NodeId: Member}
    await gossip.leave()                             # before closing the transport

Probes, acks, nacks and piggybacked updates are datagrams (`transport.send_datagram`);
push-pull is one request and one reply over a connection (`transport.connect`). The driver
reads `transport.receive_datagram()` itself and feeds each datagram to `handle_datagram`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import trio

from p2pexec.errors import (
    LocalProtocolError,
    LocalUsageError,
    ProtocolError,
    RemoteProtocolError,
)
from p2pexec.gossip.core import Member, MemberEvent, Membership
from p2pexec.gossip.messages import Message, PushPull, State
from p2pexec.gossip.wire import decode_packet, decode_stream, encode_packet, encode_stream
from p2pexec.ids import NodeId
from p2pexec.net.codec import log_dropped
from p2pexec.net.transport import Address, Connection, Transport

log = logging.getLogger("p2pexec.gossip")

_LINK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel, OSError)


class GossipDriver:
    """Runs a `Membership` core over a `Transport` and publishes its events."""

    def __init__(self, core: Membership, transport: Transport,
                 events_send: trio.MemorySendChannel[MemberEvent] | None = None) -> None:
        """`events_send`, if given, receives every membership event in order (the driver
        awaits it in a task of its own, so a slow consumer never stalls gossip).

        A transport that knows its datagram limit (`max_datagram_payload`, as
        TcpTransport) is checked against max_packet_size here, once, rather than every
        packet failing later."""
        room = getattr(transport, "max_datagram_payload", None)
        if room is not None and core.cfg.max_packet_size > room:
            raise LocalUsageError(
                f"GossipConfig.max_packet_size ({core.cfg.max_packet_size}) is over the "
                f"{room} bytes a datagram of this transport carries (NetConfig."
                f"max_datagram_size minus the seal): lower max_packet_size")
        self.core = core
        self.transport = transport
        self._events_send = events_send
        self._subscribers: list[trio.MemorySendChannel[MemberEvent]] = []
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._nursery: trio.Nursery | None = None

    # ---- the node's API ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run gossip until cancelled, or until the transport is closed or crashes."""
        forward = self.subscribe() if self._events_send is not None else None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if forward is not None:
                    nursery.start_soon(self._forward_events, forward)
                nursery.start_soon(self._datagram_loop)
                self.core.tick(trio.current_time())
                task_status.started()
                await self._main_loop()
        finally:
            self._nursery = None
            for ch in self._subscribers:
                ch.close()

    def subscribe(self) -> trio.MemoryReceiveChannel[MemberEvent]:
        """A new, unbounded stream of every membership event from now on."""
        send, receive = trio.open_memory_channel[MemberEvent](math.inf)
        self._subscribers.append(send)
        return receive

    def join(self, seeds: Iterable[Address]) -> None:
        """Exchange full state with each seed address (as many times as you like: extra
        seeds from discovery are simply more contacts)."""
        self.core.join(list(seeds), trio.current_time())
        self._kick()

    async def leave(self, timeout: float | None = None) -> bool:
        """Announce a graceful leave and wait until it was gossiped (or `timeout`, default
        the config's leave_timeout). True when it was; close the transport afterwards."""
        self.core.leave(trio.current_time())
        self._kick()
        with trio.move_on_after(self.core.cfg.leave_timeout if timeout is None else timeout):
            while not self.core.leave_complete():
                await self._progress.wait()
        return self.core.leave_complete()

    def set_local_load(self, queue_length: int, running_tasks: int) -> None:
        """This node's queue length and running tasks (gossiped at a bounded rate)."""
        self.core.set_local_load(queue_length, running_tasks, trio.current_time())
        self._kick()

    def set_local_resources(self, resources: dict[str, float]) -> None:
        """Advertise new resources (e.g. {"CPU": 8.0, "gpu": 1.0})."""
        self.core.set_local_resources(resources, trio.current_time())
        self._kick()

    def view(self) -> dict[NodeId, Member]:
        """Every known member, this node included, in whatever state."""
        return self.core.view()

    def member(self, node: NodeId) -> Member | None:
        return self.core.member(node)

    def live_members(self) -> list[Member]:
        """Members currently alive or suspect (a suspect may still refute), this one too."""
        return [m for m in self.core.view().values() if m.state in (State.ALIVE, State.SUSPECT)]

    # ---- input from the node's routers -------------------------------------------------

    def handle_datagram(self, src: Address, payload: bytes) -> None:
        """Feed one datagram; a malformed one is logged and dropped."""
        try:
            msgs = decode_packet(payload)
        except ProtocolError as exc:
            log_dropped(src, f"bad gossip datagram: {exc}")
            return
        now = trio.current_time()
        for msg in msgs:
            self._receive(src, msg, now)
        self._kick()

    async def handle_stream(self, conn: Connection,
                            first: bytes | PushPull | None = None) -> None:
        """Serve one incoming push-pull on `conn` and close it. `first` is the request if
        the node's router already read it (as bytes or decoded); otherwise it is read
        here. A peer that misbehaves is logged and dropped; this never raises for it."""
        peer = conn.peer
        try:
            with trio.fail_after(self.core.cfg.stream_timeout):
                request = first if first is not None else await conn.receive()
                msg = request if isinstance(request, PushPull) else decode_stream(request)
                self._check_sender(msg, peer.node_id)
                reply = self._serve_push_pull(peer.address, msg)
                if reply is None:
                    return
                self._kick()
                await conn.send(encode_stream(reply))
        except ProtocolError as exc:
            log_dropped(peer.address, f"bad gossip push-pull: {exc}", peer.node_id)
        except (*_LINK_ERRORS, trio.TooSlowError) as exc:
            log.debug("push-pull from %s failed: %r", peer.address, exc)
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()

    # ---- internals ---------------------------------------------------------------------

    @staticmethod
    def _check_sender(msg: PushPull, node_id: NodeId) -> None:
        if msg.sender != node_id:
            raise RemoteProtocolError(f"push-pull claims to come from {msg.sender}, but the "
                                      f"connection is authenticated as {node_id}")

    def _receive(self, src: Address, msg: Message, now: float) -> bool:
        """Feed one decoded message to the core. One that breaks the core (a bug, or input
        the decoder's checks let through) is logged and dropped: it must never stop gossip."""
        try:
            self.core.receive(src, msg, now)
        except Exception as exc:
            self._core_failed(src, msg, exc)
            return False
        return True

    def _serve_push_pull(self, src: Address, msg: PushPull) -> PushPull | None:
        """The core's answer to an incoming push-pull (None: the request broke it)."""
        try:
            return self.core.handle_push_pull(src, msg, trio.current_time())
        except Exception as exc:
            self._core_failed(src, msg, exc)
            return None

    @staticmethod
    def _core_failed(src: Address, msg: Message, exc: Exception) -> None:
        log_dropped(src, f"gossip {type(msg).__name__} broke the membership core: "
                         f"{type(exc).__name__}: {exc}")
        log.debug("membership core failure", exc_info=exc)

    def _kick(self) -> None:
        self._wake.set()

    def _transport_gone(self, exc: BaseException) -> None:
        log.info("gossip of %s stopped: its transport is gone (%r)", self.core.me.short, exc)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _main_loop(self) -> None:
        core = self.core
        while True:
            deadline = core.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            core.tick(trio.current_time())
            await self._flush()
            self._progress.set()
            self._progress = trio.Event()

    async def _flush(self) -> None:
        for ev in self.core.events():
            for ch in list(self._subscribers):
                try:
                    ch.send_nowait(ev)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._subscribers.remove(ch)
        for send in self.core.outbox():
            if send.stream:
                assert self._nursery is not None and isinstance(send.msgs[0], PushPull)
                self._nursery.start_soon(self._push_pull, send.to, send.msgs[0])
                continue
            try:
                data = encode_packet(send.msgs)
            except LocalProtocolError as exc:
                log.error("gossip datagram to %s not sent: %s", send.to, exc)
                continue
            try:
                await self.transport.send_datagram(send.to, data)
            except LocalProtocolError as exc:  # over the transport's datagram limit
                log.error("gossip datagram to %s not sent: %s (lower max_packet_size)",
                          send.to, exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._transport_gone(exc)
                return

    async def _datagram_loop(self) -> None:
        try:
            while True:
                src, payload = await self.transport.receive_datagram()
                self.handle_datagram(src, payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._transport_gone(exc)

    async def _push_pull(self, address: Address, msg: PushPull) -> None:
        """One outgoing exchange; failures are normal (dead members, seeds not up yet)."""
        with trio.move_on_after(self.core.cfg.stream_timeout):
            try:
                conn = await self.transport.connect(address)
            except (*_LINK_ERRORS, ProtocolError, OverflowError, ValueError) as exc:
                # OverflowError, ValueError: an address no socket takes (port, NUL, IDNA)
                log.debug("push-pull to %s: no connection (%r)", address, exc)
                return
            try:
                await conn.send(encode_stream(msg))
                reply = decode_stream(await conn.receive())
                self._check_sender(reply, conn.peer.node_id)
            except ProtocolError as exc:
                log_dropped(address, f"bad gossip push-pull reply: {exc}", conn.peer.node_id)
                return
            except _LINK_ERRORS as exc:
                log.debug("push-pull to %s failed: %r", address, exc)
                return
            finally:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
            if self._receive(address, reply, trio.current_time()):
                self._kick()

    async def _forward_events(self, events: trio.MemoryReceiveChannel[MemberEvent]) -> None:
        assert self._events_send is not None
        try:
            async for ev in events:
                await self._events_send.send(ev)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("membership event consumer went away")


async def run_gossip(core: Membership, transport: Transport,
                     events_send: trio.MemorySendChannel[MemberEvent] | None = None, *,
                     task_status: trio.TaskStatus[GossipDriver] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    """Run a `GossipDriver` for `core`; `task_status.started(driver)` hands the driver back
    (for `join`, `leave`, `handle_stream` and the view)."""
    driver = GossipDriver(core, transport, events_send)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        task_status.started(driver)
