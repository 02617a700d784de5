"""A deterministic discrete-event runner of many `Membership` cores: no trio, no sockets.

It plays the driver's role for N cores at once: delivers datagrams after a latency (with
jitter and random loss), runs push-pull exchanges as request and reply, wakes each core at
its deadline, and crashes, restarts, partitions or heals nodes on command. Every random
choice comes from one seeded `random.Random`, so a run replays exactly. It is what the
property tests and `simulations/gossip_figures.py` use; the trio driver over
`p2pexec.testing.SimNetwork` covers the real I/O path.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from dataclasses import dataclass, field

from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.core import MemberEvent, Membership
from p2pexec.gossip.messages import PushPull, State
from p2pexec.gossip.wire import encode_packet, encode_stream
from p2pexec.ids import NodeId
from p2pexec.net.transport import Address


@dataclass
class SimNode:
    """One simulated machine: its current core and what it saw and sent."""

    index: int
    node_id: NodeId
    address: Address
    core: Membership
    up: bool = True
    events: list[MemberEvent] = field(default_factory=list)
    bytes_sent: int = 0
    wake: float | None = None


_WAKE, _DGRAM, _STREAM_REQ, _STREAM_REP = range(4)


class Stepper:
    """N cores on a simulated LAN. Times are seconds from 0."""

    def __init__(self, n: int, cfg: GossipConfig, *, seed: int = 0, latency: float = 0.0005,
                 jitter: float = 0.0005, loss: float = 0.0, count_bytes: bool = True,
                 resources: dict[str, float] | None = None) -> None:
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.count_bytes = count_bytes
        self._resources = dict(resources if resources is not None else {"CPU": 2.0})
        self._heap: list[tuple[float, int, int, tuple]] = []
        self._counter = itertools.count()
        self._group: dict[int, int] = {}
        self.nodes: list[SimNode] = []
        self.by_address: dict[Address, SimNode] = {}
        self.messages_delivered = 0
        for _ in range(n):
            self.add_node()

    # ---- building the cluster ----------------------------------------------------------

    def _new_core(self, node_id: NodeId, address: Address, incarnation: int = 0) -> Membership:
        return Membership(node_id, address, self.cfg, random.Random(self.rng.getrandbits(64)),
                          name=address[0], resources=self._resources, incarnation=incarnation)

    def add_node(self) -> SimNode:
        """A new machine, not yet joined to anyone."""
        i = len(self.nodes)
        node_id = NodeId(hashlib.sha256(f"sim-node-{i}".encode()).digest())
        address = (f"sim{i}", 7946)
        node = SimNode(i, node_id, address, self._new_core(node_id, address))
        self.nodes.append(node)
        self.by_address[address] = node
        self._poke(node)
        return node

    def join(self, i: int, seeds: list[int]) -> None:
        node = self.nodes[i]
        node.core.join([self.nodes[s].address for s in seeds], self.now)
        self._after(node)

    def join_all(self, seed: int = 0) -> None:
        """Every node joins through node `seed`, all at the current time."""
        for node in self.nodes:
            if node.index != seed:
                self.join(node.index, [seed])

    def crash(self, i: int) -> None:
        self.nodes[i].up = False

    def restart(self, i: int, seeds: list[int]) -> None:
        """The machine comes back with a fresh process (incarnation 0) and rejoins."""
        node = self.nodes[i]
        node.core = self._new_core(node.node_id, node.address)
        node.up = True
        node.wake = None
        self.join(i, seeds)

    def leave(self, i: int) -> None:
        node = self.nodes[i]
        node.core.leave(self.now)
        self._after(node)

    def set_load(self, i: int, queue_length: int, running_tasks: int) -> None:
        node = self.nodes[i]
        node.core.set_local_load(queue_length, running_tasks, self.now)
        self._after(node)

    def partition(self, groups: list[list[int]]) -> None:
        """Messages flow only within a group; nodes in no group keep group 0."""
        self._group = {i: g + 1 for g, members in enumerate(groups) for i in members}

    def heal(self) -> None:
        self._group = {}

    # ---- running -----------------------------------------------------------------------

    def run_until(self, t: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t:
            at, _, kind, payload = heapq.heappop(heap)
            self.now = at
            if kind == _WAKE:
                node, due = payload
                if node.wake != due or not node.up:
                    continue
                node.wake = None
                node.core.tick(at)
                self._after(node)
            elif kind == _DGRAM:
                node, src, msgs = payload
                if not node.up or not self._reachable(self.by_address[src], node):
                    continue
                self.messages_delivered += 1
                for msg in msgs:
                    node.core.receive(src, msg, at)
                self._after(node)
            elif kind == _STREAM_REQ:
                node, src, msg = payload
                if not node.up or not self._reachable(self.by_address[src], node):
                    continue
                reply = node.core.handle_push_pull(src, msg, at)
                self._after(node)
                self._count(node, encode_stream(reply))
                self._schedule(at + self._delay(), _STREAM_REP,
                               (self.by_address[src], node.address, reply))
            else:
                node, src, msg = payload
                if not node.up or not self._reachable(self.by_address[src], node):
                    continue
                node.core.receive(src, msg, at)
                self._after(node)
        self.now = max(self.now, t)

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    # ---- inspection --------------------------------------------------------------------

    def states(self, i: int) -> dict[NodeId, State]:
        """What node i believes about every member it knows (itself included)."""
        return {n: m.state for n, m in self.nodes[i].core.view().items()}

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if n.up]

    # ---- internals ---------------------------------------------------------------------

    def _reachable(self, a: SimNode, b: SimNode) -> bool:
        return self._group.get(a.index, 0) == self._group.get(b.index, 0)

    def _delay(self) -> float:
        return self.latency + self.rng.random() * self.jitter

    def _schedule(self, at: float, kind: int, payload: tuple) -> None:
        heapq.heappush(self._heap, (at, next(self._counter), kind, payload))

    def _count(self, node: SimNode, data: bytes) -> None:
        node.bytes_sent += len(data)

    def _poke(self, node: SimNode) -> None:
        """Make sure the core gets a first tick (it then reports real deadlines)."""
        node.wake = self.now
        self._schedule(self.now, _WAKE, (node, self.now))

    def _after(self, node: SimNode) -> None:
        """Drain a core after it ran: record events, put its sends in flight, re-arm it."""
        core = node.core
        for ev in core.events():
            node.events.append(ev)
        for send in core.outbox():
            target = self.by_address.get(send.to)
            if send.stream:
                msg = send.msgs[0]
                assert isinstance(msg, PushPull)
                if self.count_bytes:
                    self._count(node, encode_stream(msg))
                if target is not None:
                    self._schedule(self.now + self._delay(), _STREAM_REQ,
                                   (target, node.address, msg))
                continue
            if self.count_bytes:
                self._count(node, encode_packet(send.msgs))
            if target is None or self.rng.random() < self.loss:
                continue
            self._schedule(self.now + self._delay(), _DGRAM, (target, node.address, send.msgs))
        due = core.next_deadline()
        if due is not None and due != node.wake:
            node.wake = due
            # a deadline already past (e.g. a gossip round due since a quiet spell) runs now:
            # simulated time never goes backwards
            self._schedule(max(due, self.now), _WAKE, (node, due))
