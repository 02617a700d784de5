"""An in-memory network implementing the `Transport` seam, for tests and simulations.

`SimNetwork` lets the real node code (gossip, DHT, executor) run on hundreds or thousands
of simulated machines in one process, with per-link latency, jitter, loss, duplication,
bandwidth, partitions and node crashes, all on trio's clock: under
`trio.testing.MockClock(autojump_threshold=0)` simulated seconds cost no real time.

    net = SimNetwork(seed=1, default_link=LinkSpec(latency=0.001, jitter=0.0005))
    a, b = net.add_node(), net.add_node()            # SimTransport each
    async with trio.open_nursery() as nursery:
        await nursery.start(b.serve, handler)
        conn = await a.connect(b.local.address)
        net.set_link(a.local.address, b.local.address, LinkSpec(latency=0.05, loss=0.2))
        cut = net.partition([a.local.address], [b.local.address]); ...; net.heal(cut)
        net.crash(b.local.address); b2 = net.restart(b.local.address)
        net.stats(a.local.address), net.total_stats()     # NodeStats counters

Semantics, chosen to be close to TCP/UDP on a LAN:
- A one-way delay is `latency + U(0, jitter) + size / bandwidth`; `latency` is a floor and
  `latency + jitter` a ceiling (plus transmission time). Stream messages on one
  connection never overtake each other (a later message waits for an earlier one) and
  share the link's bandwidth one after another; datagrams are independent and may
  reorder under jitter.
- `loss` and `duplicate` apply to datagrams only: streams are reliable while the link
  is up.
- `partition(a, b)` cuts both directions between two sets of addresses. Datagrams across
  it vanish (also those already in flight when they arrive). Open connections across it
  stall: messages sent meanwhile are held and delivered in order on `heal()`; if the
  partition lasts `stream_break_after` seconds both ends break with
  `trio.BrokenResourceError` (what TCP keepalive or a user timeout does). New connects
  across it fail with `TimeoutError` (an `OSError`) after `connect_timeout` seconds.
- `crash(address)` kills a node at once: everything its transport does afterwards
  raises `NodeCrashedError` (a `trio.BrokenResourceError`), including a running
  `serve()` (whose handlers are cancelled); its peers' connections break one latency
  later (a reset), or, when a partition hides the crash, at the partition's break timer
  or on heal; datagrams to it vanish. `restart(address)` gives a fresh transport at the
  same address, with the same node id unless told otherwise.
- Connecting to an address where nobody serves fails after one round trip with
  `ConnectionRefusedError` (an `OSError`).
- Connection handlers run in `serve()`'s nursery; a handler returning does not close its
  connection (trio's `serve_tcp` convention); closing the transport cancels them.
- A node receives datagrams from the moment it is added, serving or not.

Every random choice comes from one `random.Random` per source address, seeded from the
network seed and the address, so a node's traffic does not change when unrelated nodes
send in a different order. Nothing reads `time.*`: all times come from
`trio.current_time()`. There is no task per message: each inbox is a heap of
(arrival time, key, item) that its receiver drains, sleeping until the head is due.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import heapq
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from trio.lowlevel import (
    ParkingLot,
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
)

from p2pexec.errors import AuthenticationError, LocalProtocolError, LocalUsageError
from p2pexec.ids import NodeId
from p2pexec.net.security import NodeIdentity
from p2pexec.net.transport import Address, ConnectionHandler, Peer

SIM_PORT = 7946
"""Port of every address SimNetwork hands out (memberlist's default, for familiar logs)."""


class NodeCrashedError(trio.BrokenResourceError):
    """This node was crashed by `SimNetwork.crash`: it can no longer use the network."""


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """How one direction of a link between two nodes behaves."""

    latency: float = 0.001
    """Seconds of one-way delay every message pays at least."""
    jitter: float = 0.0
    """Extra one-way delay drawn uniformly from [0, jitter] per message."""
    loss: float = 0.0
    """Probability that a datagram is dropped (streams never lose messages)."""
    duplicate: float = 0.0
    """Probability that a datagram is delivered twice (each copy with its own delay)."""
    bandwidth: float = math.inf
    """Bytes per second; a message also pays size / bandwidth of transmission time."""

    def __post_init__(self) -> None:
        if not (self.latency >= 0 and self.jitter >= 0):
            raise LocalUsageError(f"latency and jitter must be >= 0, got {self}")
        if not (0 <= self.loss <= 1 and 0 <= self.duplicate <= 1):
            raise LocalUsageError(f"loss and duplicate are probabilities in [0, 1], got {self}")
        if not self.bandwidth > 0:
            raise LocalUsageError(f"bandwidth must be > 0 bytes/s, got {self}")


@dataclass(slots=True)
class NodeStats:
    """Traffic counters of one address (kept across crashes and restarts).

    Sent and dropped are counted at the sender, delivered when the receiver's application
    takes the message. A datagram still in flight, or queued at a receiver that never
    reads it, is neither delivered nor dropped.
    """

    datagrams_sent: int = 0
    datagrams_delivered: int = 0
    datagrams_dropped: int = 0
    """Lost to `loss`, to a partition, to a missing or crashed receiver or a full queue."""
    datagrams_duplicated: int = 0
    stream_messages_sent: int = 0
    stream_messages_delivered: int = 0
    bytes_sent: int = 0
    """Payload bytes of datagrams and stream messages (a duplicate counts once)."""
    bytes_delivered: int = 0
    connections_opened: int = 0
    """Connections this node opened successfully as a client."""

    def __add__(self, other: NodeStats) -> NodeStats:
        return NodeStats(*(getattr(self, f.name) + getattr(other, f.name)
                           for f in fields(self)))


class _State(enum.Enum):
    ALIVE = "alive"
    CLOSED = "closed"
    CRASHED = "crashed"


class _EndOfStream:
    """Marker queued after a connection's last message when its sender closed it."""


_EOF = _EndOfStream()


class _Inbox:
    """Items that become receivable at simulated times, and a failure with its own time.

    Items due strictly before the failure time are still handed out, then the failure is
    raised (data that arrived before a reset is readable). The receiver parks until the
    earliest of head time and failure time; pushing a new earliest item wakes it.
    """

    __slots__ = ("_fail", "_fail_at", "_heap", "_lot")

    def __init__(self) -> None:
        self._heap: list[tuple[float, Any, Any]] = []
        self._lot = ParkingLot()
        self._fail_at = math.inf
        self._fail: tuple[type[BaseException], str] = (trio.BrokenResourceError, "")

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, at: float, key: Any, item: Any) -> None:
        entry = (at, key, item)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry and self._lot:
            self._lot.unpark_all()

    def fail(self, at: float, exc_type: type[BaseException], message: str) -> None:
        """From time `at` on, `get` raises `exc_type(message)` (the earliest failure wins)."""
        if at < self._fail_at:
            self._fail_at = at
            self._fail = (exc_type, message)
            self._lot.unpark_all()

    def cancel_failure(self, at: float) -> None:
        """Forget the failure scheduled for `at`, if it is still the one in force."""
        if self._fail_at == at:
            self._fail_at = math.inf
            self._lot.unpark_all()

    def drain(self) -> list[Any]:
        """Remove and return every queued item, due or not."""
        items = [entry[2] for entry in self._heap]
        self._heap.clear()
        return items

    def raise_if_failed(self, now: float) -> None:
        if now >= self._fail_at:
            raise self._fail[0](self._fail[1])

    async def get(self) -> Any:
        heap = self._heap
        while True:
            now = trio.current_time()
            if heap and heap[0][0] <= now and heap[0][0] < self._fail_at:
                await checkpoint_if_cancelled()
                item = heap[0][2]
                if item is _EOF:  # stays queued: every later receive sees the end too
                    await cancel_shielded_checkpoint()
                    raise trio.EndOfChannel
                heapq.heappop(heap)
                await cancel_shielded_checkpoint()
                return item
            if now >= self._fail_at:
                await checkpoint()
                self.raise_if_failed(trio.current_time())
                continue
            with trio.move_on_at(min(heap[0][0] if heap else math.inf, self._fail_at)):
                await self._lot.park()


class SimConnection:
    """One end of a simulated reliable connection (implements `Connection`)."""

    __slots__ = ("_busy_until", "_closed", "_held", "_inbox", "_last_at", "_net", "_other",
                 "_owner", "_pair", "_peer", "_peer_closed_at", "_seq")

    def __init__(self, net: SimNetwork, owner: SimTransport, peer: Peer, pair: _Pair) -> None:
        self._net = net
        self._owner = owner
        self._peer = peer
        self._pair = pair
        self._other: SimConnection = self
        self._inbox = _Inbox()
        self._closed = False
        self._peer_closed_at = math.inf
        self._last_at = -math.inf
        self._busy_until = -math.inf
        self._seq = 0
        self._held: list[Any] | None = None

    def __repr__(self) -> str:
        return f"<SimConnection {self._owner.local.address} -> {self._peer.address}>"

    @property
    def peer(self) -> Peer:
        return self._peer

    async def send(self, message: bytes) -> None:
        """Queue one message; `trio.BrokenResourceError` once the link is gone."""
        await self.send_many([message])

    async def send_many(self, messages: list[bytes]) -> None:
        """Queue several messages, in order, at once."""
        await checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("this connection was closed")
        now = trio.current_time()
        self._inbox.raise_if_failed(now)
        if now >= self._peer_closed_at:
            raise trio.BrokenResourceError(f"{self._peer.address} closed the connection")
        self._net._stream_send(self, [bytes(m) for m in messages], now)
        await cancel_shielded_checkpoint()

    async def receive(self) -> bytes:
        """Next message; `EndOfChannel` after a clean close, `BrokenResourceError` when
        the link broke, `ClosedResourceError` once this end is closed."""
        message: bytes = await self._inbox.get()
        stats = self._net._address_state(self._owner.local.address).stats
        stats.stream_messages_delivered += 1
        stats.bytes_delivered += len(message)
        return message

    async def aclose(self) -> None:
        """Close this end; the peer reads what was already sent, then `EndOfChannel`."""
        self._close_now()
        await checkpoint()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.fail(-math.inf, trio.ClosedResourceError, "this connection was closed")
        self._net._end_closed(self)


class _Pair:
    """Both ends of a connection, as the network tracks it for partitions and crashes."""

    __slots__ = ("break_at", "client", "dead", "server", "stalled")

    def __init__(self) -> None:
        self.client: SimConnection
        self.server: SimConnection
        self.stalled = False
        self.dead = False
        self.break_at = math.inf

    def ends(self) -> tuple[SimConnection, SimConnection]:
        return self.client, self.server


class SimTransport:
    """One simulated node's network access (implements `Transport`)."""

    def __init__(self, net: SimNetwork, node_id: NodeId, address: Address,
                 identity: NodeIdentity | None = None) -> None:
        self._net = net
        self._local = Peer(node_id, address)
        self.identity = identity
        """The node key its id was made from (None for a node given a bare id): what
        signs the node's DHT records."""
        self._state = _State.ALIVE
        self._serving = False
        self._serve_scope: trio.CancelScope | None = None
        self._datagrams = _Inbox()
        self._accepts = _Inbox()
        self._pairs: set[_Pair] = set()

    def __repr__(self) -> str:
        return f"<SimTransport {self._local.node_id} at {self._local.address} {self._state.value}>"

    @property
    def local(self) -> Peer:
        return self._local

    @property
    def network(self) -> SimNetwork:
        return self._net

    @property
    def crashed(self) -> bool:
        return self._state is _State.CRASHED

    def _check_usable(self) -> None:
        if self._state is _State.CRASHED:
            raise NodeCrashedError(f"node {self._local.address} crashed")
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError(f"transport {self._local.address} was closed")

    async def bind(self) -> Address:
        """A simulated node's address is its own from the start."""
        await checkpoint()
        self._check_usable()
        return self._local.address

    async def serve(self, handler: ConnectionHandler, *,
                    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections, each handled in its own task, until closed or crashed."""
        self._check_usable()
        if self._serving:
            raise LocalUsageError(f"{self._local.address} is already serving")
        self._serving = True
        try:
            async with trio.open_nursery() as nursery:
                self._serve_scope = nursery.cancel_scope
                task_status.started(self._local.address)
                while True:
                    try:
                        conn = await self._accepts.get()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    nursery.start_soon(handler, conn)
                nursery.cancel_scope.cancel()
        finally:
            self._serving = False
            self._serve_scope = None
            for unaccepted in self._accepts.drain():
                unaccepted._close_now()
        if self._state is _State.CRASHED:  # a close returns quietly, a crash does not
            raise NodeCrashedError(f"node {self._local.address} crashed")

    async def connect(self, address: Address, expected: NodeId | None = None) -> SimConnection:
        """Open a connection after one simulated round trip."""
        await checkpoint_if_cancelled()
        self._check_usable()
        return await self._net._connect(self, address, expected)

    async def send_datagram(self, address: Address, payload: bytes) -> None:
        """Best effort; never raises for a dead or missing peer."""
        await checkpoint_if_cancelled()
        self._check_usable()
        if len(payload) > self._net.max_datagram_size:
            raise LocalProtocolError(f"datagram of {len(payload)} bytes exceeds the limit of "
                                     f"{self._net.max_datagram_size}; use a connection")
        self._net._send_datagram(self, address, bytes(payload))
        await cancel_shielded_checkpoint()

    async def receive_datagram(self) -> tuple[Address, bytes]:
        """Next datagram and the (listening) address of the node that sent it."""
        net = self._net
        while True:
            src, payload = await self._datagrams.get()
            if net._partitions and net._blocked(src, self._local.address):
                net._address_state(src).stats.datagrams_dropped += 1
                continue
            stats = net._address_state(self._local.address).stats
            stats.datagrams_delivered += 1
            stats.bytes_delivered += len(payload)
            return src, payload

    async def aclose(self) -> None:
        """Stop serving (handlers are cancelled) and close every connection cleanly."""
        if self._state is _State.ALIVE:
            self._state = _State.CLOSED
            for pair in list(self._pairs):
                for end in pair.ends():
                    if end._owner is self:
                        end._close_now()
            self._datagrams.fail(-math.inf, trio.ClosedResourceError, "transport closed")
            self._accepts.fail(-math.inf, trio.ClosedResourceError, "transport closed")
            if self._serve_scope is not None:
                self._serve_scope.cancel()
        await checkpoint()


@dataclass(frozen=True, slots=True, eq=False)
class Partition:
    """A cut between two sets of addresses, as returned by `SimNetwork.partition`."""

    side_a: frozenset[Address]
    side_b: frozenset[Address] | None
    """None: every address not in side_a, including nodes added later."""

    def cuts(self, x: Address, y: Address) -> bool:
        """Whether traffic between `x` and `y` (either direction) crosses this cut."""
        x_in_a = x in self.side_a
        y_in_a = y in self.side_a
        if self.side_b is None:
            return x_in_a != y_in_a
        return (x_in_a and y in self.side_b) or (y_in_a and x in self.side_b)


class _AddressState:
    """What belongs to an address rather than to one incarnation of its node."""

    __slots__ = ("rng", "seq", "stats")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seq = 0
        self.stats = NodeStats()


class SimNetwork:
    """A simulated LAN of `SimTransport`s; see the module docstring for its semantics."""

    def __init__(self, seed: int = 0, default_link: LinkSpec | None = None, *,
                 connect_timeout: float = 3.0, stream_break_after: float | None = 10.0,
                 max_datagram_size: int = 65_507, max_queued_datagrams: int = 65_536) -> None:
        """`connect_timeout`: seconds a connect across a partition takes to fail.
        `stream_break_after`: seconds a partition may stall an open connection before it
        breaks (None: stall until healed). `max_datagram_size`: bigger datagrams raise
        `LocalProtocolError` (the UDP limit by default). `max_queued_datagrams`: a
        receiver's datagram queue beyond which new ones are dropped (a socket buffer)."""
        self.seed = seed
        self.default_link = default_link if default_link is not None else LinkSpec()
        self.connect_timeout = connect_timeout
        self.stream_break_after = stream_break_after
        self.max_datagram_size = max_datagram_size
        self.max_queued_datagrams = max_queued_datagrams
        self._nodes: dict[Address, SimTransport] = {}
        self._addresses: dict[Address, _AddressState] = {}
        self._links: dict[tuple[Address, Address], LinkSpec] = {}
        self._partitions: list[Partition] = []
        self._pairs: set[_Pair] = set()
        self._next_host = 1

    # --- nodes ------------------------------------------------------------------------

    def add_node(self, node_id: NodeId | None = None, address: Address | None = None,
                 identity: NodeIdentity | None = None) -> SimTransport:
        """A new node. Without an address it gets the next free 10.x.y.z:7946; without a
        node id it gets a node key made from its address (deterministic, so a seeded
        run replays) and the id of that key."""
        if address is None:
            address = self._fresh_address()
        elif address in self._nodes and self._nodes[address]._state is _State.ALIVE:
            raise LocalUsageError(f"{address} is already taken by a running node")
        if node_id is None:
            if identity is None:
                seed = hashlib.sha256(f"{address[0]}:{address[1]}".encode()).digest()
                identity = NodeIdentity(ed25519.Ed25519PrivateKey.from_private_bytes(seed))
            node_id = identity.node_id
        transport = SimTransport(self, node_id, address, identity)
        self._nodes[address] = transport
        self._address_state(address)
        return transport

    def _fresh_address(self) -> Address:
        while True:
            n = self._next_host
            self._next_host += 1
            address = (f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", SIM_PORT)
            if address not in self._nodes:
                return address

    def transport(self, address: Address) -> SimTransport:
        """The current transport at `address` (alive, closed or crashed)."""
        return self._nodes[address]

    @property
    def addresses(self) -> list[Address]:
        """Addresses of every node that is neither crashed nor closed."""
        return [a for a, t in self._nodes.items() if t._state is _State.ALIVE]

    def crash(self, address: Address) -> None:
        """Kill the node at `address` now; see the module docstring for what breaks."""
        transport = self._nodes.get(address)
        if transport is None or transport._state is not _State.ALIVE:
            raise LocalUsageError(f"no running node at {address} to crash")
        transport._state = _State.CRASHED
        now = trio.current_time()
        message = f"node {address} crashed"
        for pair in list(transport._pairs):
            for end in pair.ends():
                if end._owner is transport:
                    end._inbox.fail(-math.inf, NodeCrashedError, message)
                elif not pair.stalled:
                    spec = self.link(address, end._owner.local.address)
                    end._inbox.fail(now + spec.latency, trio.BrokenResourceError,
                                    f"connection reset: {message}")
            pair.dead = True
            if not pair.stalled:  # else heal() resets the survivors
                self._forget(pair)
        transport._datagrams.fail(-math.inf, NodeCrashedError, message)
        transport._accepts.fail(-math.inf, NodeCrashedError, message)
        if transport._serve_scope is not None:
            transport._serve_scope.cancel()

    def restart(self, address: Address, node_id: NodeId | None = None) -> SimTransport:
        """A fresh transport at the address of a crashed or closed node. It keeps the old
        node id (its key survived on disk) unless `node_id` is given."""
        old = self._nodes.get(address)
        if old is None or old._state is _State.ALIVE:
            raise LocalUsageError(f"restart needs a crashed or closed node at {address}")
        if node_id is not None:
            return self.add_node(node_id, address)
        return self.add_node(old.local.node_id, address, old.identity)

    # --- links and partitions ---------------------------------------------------------

    def set_link(self, a: Address, b: Address, spec: LinkSpec, *,
                 both_ways: bool = True) -> None:
        """Use `spec` from `a` to `b` (and from `b` to `a` unless `both_ways=False`)."""
        self._links[(a, b)] = spec
        if both_ways:
            self._links[(b, a)] = spec

    def link(self, a: Address, b: Address) -> LinkSpec:
        """The spec in force from `a` to `b`."""
        return self._links.get((a, b), self.default_link)

    def partition(self, group_a: Iterable[Address],
                  group_b: Iterable[Address] | None = None) -> Partition:
        """Cut every link between `group_a` and `group_b` (default: everyone else, now
        and later), both directions, until `heal()` (all cuts) or `heal(cut)`. Cuts may
        overlap; a connection resumes once no remaining cut separates its ends."""
        side_a = frozenset(group_a)
        side_b = None if group_b is None else frozenset(group_b)
        if side_b is not None and side_a & side_b:
            raise LocalUsageError(f"{sorted(side_a & side_b)} are on both sides of the "
                                  "partition")
        now = trio.current_time()
        cut = Partition(side_a, side_b)
        self._partitions.append(cut)
        for pair in self._pairs:
            if pair.stalled or not cut.cuts(pair.client._owner.local.address,
                                            pair.server._owner.local.address):
                continue
            pair.stalled = True
            if self.stream_break_after is not None:
                pair.break_at = now + self.stream_break_after
            for end in pair.ends():
                end._held = []
                end._inbox.fail(pair.break_at, trio.BrokenResourceError,
                                "connection timed out: network partition")
        return cut

    def heal(self, cut: Partition | None = None) -> None:
        """Remove `cut` (default: every cut). Stalled connections no cut separates any more
        resume and deliver what was sent meanwhile, in order, unless they already broke."""
        if cut is None:
            self._partitions.clear()
        elif cut in self._partitions:
            self._partitions.remove(cut)
        else:
            raise LocalUsageError(f"{cut} is not in force (already healed?)")
        now = trio.current_time()
        for pair in list(self._pairs):
            if not pair.stalled or self._blocked(pair.client._owner.local.address,
                                                  pair.server._owner.local.address):
                continue
            pair.stalled = False
            if pair.dead or pair.break_at <= now:
                for end in pair.ends():
                    end._inbox.fail(now, trio.BrokenResourceError,
                                    "connection reset after a partition")
                pair.dead = True
                self._forget(pair)
                continue
            for end in pair.ends():
                end._inbox.cancel_failure(pair.break_at)
            pair.break_at = math.inf
            for end in pair.ends():
                held, end._held = end._held or [], None
                self._schedule_stream(end, held, now)

    def _blocked(self, a: Address, b: Address) -> bool:
        return any(p.cuts(a, b) for p in self._partitions)

    # --- statistics -------------------------------------------------------------------

    def stats(self, address: Address) -> NodeStats:
        """A snapshot of the counters of `address`."""
        return replace(self._address_state(address).stats)

    def total_stats(self) -> NodeStats:
        """The sum of every address's counters."""
        total = NodeStats()
        for state in self._addresses.values():
            total = total + state.stats
        return total

    # --- internals used by SimTransport and SimConnection -----------------------------

    def _address_state(self, address: Address) -> _AddressState:
        state = self._addresses.get(address)
        if state is None:
            state = _AddressState(random.Random(f"{self.seed}/{address[0]}:{address[1]}"))
            self._addresses[address] = state
        return state

    @staticmethod
    def _delay(spec: LinkSpec, rng: random.Random, size: int) -> float:
        delay = spec.latency
        if spec.jitter:
            delay += spec.jitter * rng.random()
        if size and spec.bandwidth != math.inf:
            delay += size / spec.bandwidth
        return delay

    async def _connect(self, client: SimTransport, address: Address,
                       expected: NodeId | None) -> SimConnection:
        now = trio.current_time()
        src = client.local.address
        if self._blocked(src, address):
            await trio.sleep(self.connect_timeout)
            raise TimeoutError(errno.ETIMEDOUT,
                               f"connect to {address} timed out (network partition)")
        rng = self._address_state(src).rng
        there = self._delay(self.link(src, address), rng, 0)
        round_trip = there + self._delay(self.link(address, src), rng, 0)
        server = self._nodes.get(address)
        if server is None or server._state is not _State.ALIVE or not server._serving:
            await trio.sleep(round_trip)
            raise ConnectionRefusedError(errno.ECONNREFUSED,
                                         f"{address} refused the connection: nobody serves there")
        if expected is not None and expected != server.local.node_id:
            await trio.sleep(round_trip)
            raise AuthenticationError(
                f"peer {address} is node {server.local.node_id}, not the expected {expected}; "
                "connection dropped (check the address or the pinned node id)")
        pair = _Pair()
        pair.client = SimConnection(self, client, server.local, pair)
        pair.server = SimConnection(self, server, client.local, pair)
        pair.client._other, pair.server._other = pair.server, pair.client
        self._pairs.add(pair)
        client._pairs.add(pair)
        server._pairs.add(pair)
        state = self._address_state(src)
        state.stats.connections_opened += 1
        server._accepts.push(now + there, (src, state.seq), pair.server)
        state.seq += 1
        try:
            await trio.sleep_until(now + round_trip)
            client._check_usable()
        except BaseException:
            pair.client._close_now()
            raise
        return pair.client

    def _stream_send(self, end: SimConnection, messages: list[bytes], now: float) -> None:
        stats = self._address_state(end._owner.local.address).stats
        stats.stream_messages_sent += len(messages)
        stats.bytes_sent += sum(map(len, messages))
        if end._held is not None:
            end._held.extend(messages)
        else:
            self._schedule_stream(end, messages, now)

    def _schedule_stream(self, end: SimConnection, items: list[Any], now: float) -> None:
        """Put messages (or the end marker) on the wire, never overtaking earlier ones."""
        src = end._owner.local.address
        spec = self.link(src, end._peer.address)
        rng = self._address_state(src).rng
        inbox = end._other._inbox
        for item in items:
            size = 0 if item is _EOF else len(item)
            start = now
            if size and spec.bandwidth != math.inf:
                start = max(now, end._busy_until)
                end._busy_until = start + size / spec.bandwidth
                start = end._busy_until
            at = start + spec.latency
            if spec.jitter:
                at += spec.jitter * rng.random()
            if at < end._last_at:
                at = end._last_at
            end._last_at = at
            inbox.push(at, end._seq, item)
            end._seq += 1
            if item is _EOF:
                end._other._peer_closed_at = at

    def _end_closed(self, end: SimConnection) -> None:
        pair = end._pair
        if pair.dead:
            return
        if end._held is not None:
            end._held.append(_EOF)
        else:
            self._schedule_stream(end, [_EOF], trio.current_time())
        if end._other._closed:
            self._forget(pair)

    def _forget(self, pair: _Pair) -> None:
        self._pairs.discard(pair)
        pair.client._owner._pairs.discard(pair)
        pair.server._owner._pairs.discard(pair)

    def _send_datagram(self, sender: SimTransport, address: Address, payload: bytes) -> None:
        src = sender.local.address
        state = self._address_state(src)
        stats = state.stats
        stats.datagrams_sent += 1
        stats.bytes_sent += len(payload)
        spec = self.link(src, address)
        rng = state.rng
        if spec.loss and rng.random() < spec.loss:
            stats.datagrams_dropped += 1
            return
        copies = 1
        if spec.duplicate and rng.random() < spec.duplicate:
            copies = 2
            stats.datagrams_duplicated += 1
        target = self._nodes.get(address)
        if target is None or target._state is not _State.ALIVE or (
                self._partitions and self._blocked(src, address)):
            stats.datagrams_dropped += copies
            return
        now = trio.current_time()
        for _ in range(copies):
            if len(target._datagrams) >= self.max_queued_datagrams:
                stats.datagrams_dropped += 1
                continue
            target._datagrams.push(now + self._delay(spec, rng, len(payload)),
                                   (src, state.seq), (src, payload))
            state.seq += 1
