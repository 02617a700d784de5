"""The cluster part of a node: transport, connection router, membership, discovery.

`ClusterService.run` composes, in one nursery:

- the `TcpTransport` (TLS 1.3 + token proof) bound to the configured host and port;
- the connection router, which owns `transport.serve` and dispatches each incoming
  connection by the codec range of its first message's type (gossip 32-63 goes to the
  gossip driver; later layers add theirs with `add_stream_service`; anything else is
  logged in one line and dropped);
- the `GossipDriver` (SWIM + Lifeguard), advertising this node's resources;
- discovery (mDNS and `--peer` seeds): every candidate not already a live member is handed
  to `gossip.join`, so a peer that was declared dead during a partition is rejoined when
  discovery re-reports it;
- load publishing: the node's queue length and running tasks, sampled every
  `load_update_interval` and gossiped when they change;
- one log line per membership event.

Shutting down (the node's nursery is cancelled: Ctrl-C, SIGTERM, end of the driver) is a
graceful leave: the services keep running under a shield while `gossip.leave` spreads the
news (bounded by the gossip config's `leave_timeout`), then discovery sends its mDNS
goodbyes and the transport closes.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from p2pexec.config import ClusterConfig
from p2pexec.dht.core import Dht
from p2pexec.dht.driver import DhtDriver
from p2pexec.dht.messages import Contact, DhtPing, FindNode, FindValue, Store
from p2pexec.dht.records import RecordSigner
from p2pexec.errors import LocalUsageError, ProtocolError, RemoteProtocolError
from p2pexec.gossip.core import EventKind, Member, MemberEvent, Membership
from p2pexec.gossip.driver import GossipDriver
from p2pexec.gossip.messages import MAX_LIFE, PushPull, State
from p2pexec.net.codec import PROTOCOL_MAX, Codec, code_of, log_dropped
from p2pexec.net.discovery import (
    Announcement,
    DiscoveredPeer,
    advertised_addresses,
    run_discovery,
    validate_name,
)
from p2pexec.net.rpc import RpcNode
from p2pexec.net.security import ClusterKeys, NodeIdentity
from p2pexec.net.tcp import TcpTransport
from p2pexec.net.transport import (
    WILDCARD_HOSTS,
    Address,
    Connection,
    Peer,
    Transport,
    format_address,
)

log = logging.getLogger("p2pexec.cluster")

LoadSampler = Callable[[], tuple[int, int]]
"""Returns (queue_length, running_tasks) of this node right now."""
StreamService = Callable[[Connection, Any], Awaitable[None]]
"""Serves one incoming connection, given its already decoded first message."""
DiscoveryRunner = Callable[..., Awaitable[None]]
"""`run_discovery(config, me, found, *, task_status)`: reports candidate peers on `found`."""
GOSSIP_CODES = range(32, 64)
"""The gossip package's range of message type codes (see `net.codec`)."""
RPC_CODES = range(2, 6)
"""The RPC envelopes (`net.messages` Request to Cancel): a connection that opens with one
carries calls between nodes (the DHT's, and any service's added with
`add_request_handler`)."""
_DHT_REQUESTS = (FindNode, FindValue, Store, DhtPing)

_LIVE = (State.ALIVE, State.SUSPECT)
_EVENT_LEVELS = {EventKind.UPDATED: logging.DEBUG}


def member_dict(member: Member, now: float) -> dict[str, Any]:
    """One member as `p2pexec status --json` and `px.nodes()` show it."""
    return {
        "name": member.name,
        "id": member.node_id.hex,
        "short_id": member.node_id.short,
        "address": None if member.address is None else format_address(member.address),
        "state": member.state.name.lower(),
        "resources": dict(member.resources),
        "load": {"queue_length": member.load.queue_length,
                 "running_tasks": member.load.running_tasks},
        "last_heard": None if member.last_heard is None else max(0.0, now - member.last_heard),
        "incarnation": member.incarnation,
    }


def _refuse(conn: Connection, first: Any) -> None:
    log_dropped(conn.peer.address, f"opened a connection with {type(first).__name__}, which "
                                   f"no service on this node accepts", conn.peer.node_id)


LIFE_FILE = "life"
"""In the data dir: how many times a node with its key has started (minus one)."""


def next_life(data_dir: Path) -> int:
    """This start's life: one more than the last start's, kept in the data dir next to
    the node key (which keeps the node id across restarts). Written whole (a temporary
    file renamed over it); a file that cannot be read starts again at 0 with a warning."""
    path = Path(data_dir) / LIFE_FILE
    try:
        life = int(path.read_text()) + 1
    except FileNotFoundError:
        life = 0
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): counting this node's restarts from 0 again; "
                    "peers may miss that it restarted", path, exc)
        life = 0
    life = min(max(life, 0), MAX_LIFE)
    tmp = path.with_name(f".{LIFE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(str(life))
    os.replace(tmp, path)
    return life


class ClusterService:
    """Joins this node to its cluster and keeps its membership view (see module doc)."""

    def __init__(self, config: ClusterConfig, name: str, resources: dict[str, float],
                 load: LoadSampler, *, transport: Transport | None = None,
                 discovery: DiscoveryRunner = run_discovery,
                 rng: random.Random | None = None,
                 identity: NodeIdentity | None = None, life: int | None = None) -> None:
        """`transport` defaults to TCP+TLS on the configured host and port (the node key in
        the data dir); a simulation passes a `SimNetwork` transport and the `identity`
        (node key) its node id was made from, which signs this node's DHT records.
        `discovery` runs mDNS and the seeds (`net.discovery.run_discovery`'s signature).
        `life`: how many times this node's process started before (gossip tells peers a
        restart by it); None counts it in the data dir with the default transport, and
        is 0 with one a simulation passes."""
        validate_name(name)
        self.config = config
        self.name = name
        self.resources = dict(resources)
        self._load = load
        self._discovery = discovery
        self._rng = rng or random.Random()
        self.cluster_id = ClusterKeys(config.token).cluster_id
        self.transport: Transport = transport or TcpTransport.create(
            config.data_dir, config.token, config.net, host=config.host, port=config.port)
        self.node_id = self.transport.local.node_id
        identity = identity or getattr(self.transport, "identity", None)
        if identity is None:
            raise LocalUsageError("this node's transport has no node key: pass `identity` "
                                  "(the key signs the node's DHT records)")
        if identity.node_id != self.node_id:
            raise LocalUsageError("the identity given is not the transport's node key")
        self._signer = RecordSigner(identity.private_key)
        if life is None:
            life = next_life(config.data_dir) if transport is None else 0
        self.life = life
        self.rpc = RpcNode(self.transport, on_request=self._on_request,
                           on_message=self._on_message, config=config.net)
        self._request_handlers: dict[type, Callable[[Peer, Any], Any]] = {}
        self._message_handlers: dict[type, Callable[[Peer, Any], None]] = {}
        self.dht: DhtDriver | None = None
        """Kademlia over the cluster's connections (valid once running)."""
        self._stream_services: list[tuple[range, StreamService]] = []
        self.gossip: GossipDriver | None = None
        self.address: Address | None = None
        """Where other nodes reach this one (valid once running)."""
        self._codec = Codec(config.net.limits)
        self._services = trio.CancelScope()

    # ---- the node's API ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve, gossip and discover until cancelled, then leave gracefully.
        `task_status.started(address)` once listening and gossiping."""
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(self._run_services)
                assert self.address is not None
                task_status.started(self.address)
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await self._leave()
                    self._services.cancel()

    def add_stream_service(self, codes: range, serve: StreamService) -> None:
        """Incoming connections whose first message has a type code in `codes` go to
        `serve(connection, first_message)` (gossip owns 32-63 and is added at start)."""
        self._stream_services.append((codes, serve))

    def add_request_handler(self, kinds: tuple[type, ...],
                            handler: Callable[[Peer, Any], Any]) -> None:
        """Requests (RPC calls from peers) whose body is one of `kinds` are answered by
        `handler(peer, body)`, inline in the connection's reader: it must be quick."""
        for kind in kinds:
            self._request_handlers[kind] = handler

    def add_message_handler(self, kinds: tuple[type, ...],
                            handler: Callable[[Peer, Any], None]) -> None:
        """One-way messages from peers of these types go to `handler(peer, message)`,
        inline in the connection's reader (quick, no await)."""
        for kind in kinds:
            self._message_handlers[kind] = handler

    def _on_message(self, peer: Peer, msg: Any) -> None:
        handler = self._message_handlers.get(type(msg))
        if handler is None:
            raise RemoteProtocolError(f"this node takes no one-way {type(msg).__name__}")
        handler(peer, msg)

    def _on_request(self, peer: Peer, body: Any) -> Any:
        handler = self._request_handlers.get(type(body))
        if handler is None:
            raise RemoteProtocolError(f"this node takes no {type(body).__name__} request")
        return handler(peer, body)

    def subscribe(self) -> trio.MemoryReceiveChannel[MemberEvent]:
        """Every membership event from now on (joined, suspect, alive, failed, left...)."""
        if self.gossip is None:
            raise trio.ClosedResourceError("the cluster service is not running")
        return self.gossip.subscribe()

    def members(self) -> list[dict[str, Any]]:
        """The membership view, this node first, then by name and id; [] before start."""
        if self.gossip is None:
            return []
        now = trio.current_time()
        view = self.gossip.view().values()
        ordered = sorted(view, key=lambda m: (not m.is_self, m.name, m.node_id.hex))
        return [member_dict(m, now) for m in ordered]

    # ---- services ----------------------------------------------------------------------

    async def _run_services(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
        cfg = self.config
        try:
            with self._services:
                async with trio.open_nursery() as nursery:
                    try:
                        host, port = await self.transport.bind()
                    except OSError as exc:
                        raise LocalUsageError(
                            f"cannot listen on {format_address((cfg.host, cfg.port))}: "
                            f"{exc.strerror or exc} (nodes on one machine need distinct "
                            f"--port values)") from exc
                    advertised = cfg.advertise_host or (
                        advertised_addresses(host, cfg.discovery_config().interfaces)[0]
                        if host in WILDCARD_HOSTS else host)
                    self.address = (advertised, port)
                    core = Membership(self.node_id, self.address, cfg.gossip, self._rng,
                                      name=self.name, resources=self.resources,
                                      life=self.life)
                    self.gossip = GossipDriver(core, self.transport)
                    self.add_stream_service(GOSSIP_CODES, self._serve_gossip)
                    events = self.gossip.subscribe()
                    membership = self.gossip.subscribe()
                    await nursery.start(self.rpc.run)
                    self.dht = DhtDriver(Dht(Contact(self.node_id, self.address), cfg.dht,
                                             random.Random(self._rng.getrandbits(64)),
                                             self._signer, trio.current_time()), self.rpc)
                    await nursery.start(self.dht.run)
                    self.add_request_handler(_DHT_REQUESTS, self.dht.handle_request)
                    self.add_stream_service(RPC_CODES, self.rpc.adopt)
                    nursery.start_soon(self._feed_dht, self.dht, membership)
                    await nursery.start(self.gossip.run)
                    await nursery.start(self.transport.serve, self._route)
                    nursery.start_soon(self._log_events, events)
                    nursery.start_soon(self._publish_load)
                    found_send, found_recv = trio.open_memory_channel[DiscoveredPeer](64)
                    me = Announcement((host, port), self.node_id, self.cluster_id, self.name,
                                      PROTOCOL_MAX)
                    await nursery.start(self._discovery, cfg.discovery_config(), me,
                                        found_send)
                    nursery.start_soon(self._join_found, found_recv)
                    # from here on only our own `_services.cancel()` stops the services, so
                    # a cancelled node can still gossip its leave
                    self._services.shield = True
                    task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.transport.aclose()

    async def _leave(self) -> None:
        gossip = self.gossip
        if gossip is None or not self._services.shield:
            return
        timeout = self.config.gossip.leave_timeout
        if await gossip.leave(timeout):
            log.info("left the cluster")
        else:
            log.warning("leave not confirmed by any member within %.1f s; they will "
                        "detect our absence", timeout)

    async def _route(self, conn: Connection) -> None:
        """Dispatch one authenticated incoming connection by its first message."""
        peer = conn.peer
        with trio.move_on_after(self.config.first_message_timeout) as waited:
            try:
                first = await conn.receive()
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                return
        if waited.cancelled_caught:
            log_dropped(peer.address, f"sent nothing for {self.config.first_message_timeout:g} s "
                                      f"after connecting", peer.node_id)
            return
        try:
            msg = self._codec.decode(first)
        except ProtocolError as exc:
            log_dropped(peer.address, f"bad first message: {exc}", peer.node_id)
            return
        code = code_of(msg)
        for codes, serve in self._stream_services:
            if code in codes:
                await serve(conn, msg)
                return
        _refuse(conn, msg)

    async def _serve_gossip(self, conn: Connection, first: Any) -> None:
        """Gossip streams are push-pull syncs; any other gossip message is refused."""
        assert self.gossip is not None
        if isinstance(first, PushPull):
            await self.gossip.handle_stream(conn, first=first)
        else:
            _refuse(conn, first)

    async def _join_found(self, found: trio.MemoryReceiveChannel[DiscoveredPeer]) -> None:
        """Hand each discovered candidate that is not a live member to gossip."""
        assert self.gossip is not None
        async for peer in found:
            if not self._is_live(peer):
                log.debug("contacting %s at %s (%s)", peer.name, format_address(peer.address),
                          peer.source)
                self.gossip.join([peer.address])

    def _is_live(self, peer: DiscoveredPeer) -> bool:
        assert self.gossip is not None
        for member in self.gossip.view().values():
            same = (member.node_id == peer.node_id if peer.node_id is not None
                    else member.address == peer.address)
            if same and (member.is_self or member.state in _LIVE):
                return True
        return False

    async def _publish_load(self) -> None:
        assert self.gossip is not None
        last: tuple[int, int] | None = None
        while True:
            sample = self._load()
            if sample != last:
                self.gossip.set_local_load(*sample)
                last = sample
            await trio.sleep(self.config.gossip.load_update_interval)

    @staticmethod
    async def _feed_dht(dht: DhtDriver, events: trio.MemoryReceiveChannel[MemberEvent]
                        ) -> None:
        """Membership is the DHT's liveness: live members route, departed ones do not."""
        async for ev in events:
            member = ev.member
            if member.is_self:
                continue
            if ev.kind in (EventKind.JOINED, EventKind.UPDATED, EventKind.ALIVE):
                dht.member_alive(member.node_id, member.address)
            elif ev.kind in (EventKind.FAILED, EventKind.LEFT):
                dht.member_gone(member.node_id)

    async def _log_events(self, events: trio.MemoryReceiveChannel[MemberEvent]) -> None:
        async for ev in events:
            m = ev.member
            if m.is_self:
                continue
            log.log(_EVENT_LEVELS.get(ev.kind, logging.INFO), "member %s: %s (%s) at %s",
                    ev.kind.value, m.name, m.node_id.short, format_address(m.address))
