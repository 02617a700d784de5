"""A deterministic discrete-event runner of many `Membership` cores: no trio, no sockets.

It plays the driver's role for N cores at once: delivers datagrams after a latency (with
jitter and random loss), runs push-pull exchanges as request and reply, wakes each core at
its deadline, and crashes, restarts, partitions or heals nodes on command. Every random
choice comes from one seeded `random.Random` (`p2pexec.stepping.EventLoop`), so a run
replays exactly. It is what the property tests, `simulations/gossip_figures.py` and the
cluster stepper of `p2pexec.testing` use; the trio driver over
`p2pexec.testing.SimNetwork` covers the real I/O path.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.core import MemberEvent, Membership
from p2pexec.gossip.liveset import Snapshot
from p2pexec.gossip.messages import Message, PushPull, State
from p2pexec.gossip.table import Identity, Row
from p2pexec.gossip.wire import encode_packet, encode_stream
from p2pexec.ids import NodeId
from p2pexec.net.transport import Address
from p2pexec.stepping import EventLoop, OnLoop


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
    life: int = 0
    """How many times the machine's process has restarted."""


class Stepper(OnLoop):
    """N cores on a simulated LAN. Times are seconds from 0.

    With `loop`, the cores share another stepper's event loop (and its RNG, links and
    trace), so several protocols of the same nodes run on one simulated clock;
    `on_events` then sees what each node's core reported after every step."""

    def __init__(self, n: int, cfg: GossipConfig, *, seed: int = 0, latency: float = 0.0005,
                 jitter: float = 0.0005, loss: float = 0.0, count_bytes: bool = True,
                 resources: dict[str, float] | None = None, loop: EventLoop | None = None
                 ) -> None:
        self.cfg = cfg
        self.loop = loop or EventLoop(seed, latency=latency, jitter=jitter, loss=loss)
        self.rng = self.loop.rng
        self.count_bytes = count_bytes
        self._resources = dict(resources if resources is not None else {"CPU": 2.0})
        self.nodes: list[SimNode] = []
        self.by_address: dict[Address, SimNode] = {}
        self.messages_delivered = 0
        self.on_events = self._keep_events
        for _ in range(n):
            self.add_node()

    @property
    def loss(self) -> float:
        return self.loop.loss

    @loss.setter
    def loss(self, value: float) -> None:
        self.loop.loss = value

    # ---- building the cluster ----------------------------------------------------------

    def _new_core(self, node_id: NodeId, address: Address, life: int = 0) -> Membership:
        return Membership(node_id, address, self.cfg, random.Random(self.rng.getrandbits(64)),
                          name=address[0], resources=self._resources, life=life)

    def add_node(self, node_id: NodeId | None = None) -> SimNode:
        """A new machine, not yet joined to anyone."""
        i = len(self.nodes)
        node_id = node_id or NodeId(hashlib.sha256(f"sim-node-{i}".encode()).digest())
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

    def converge(self) -> None:
        """Every node starts from the table a cluster of all of them converges to (each
        alive at incarnation 0), one copy shared by all cores: O(n) in all, where a mass
        join costs O(n) rounds of push-pulls that carry the whole table."""
        resources = tuple(sorted(self._resources.items()))
        rows = {node.node_id: Row(node.node_id, 0, State.ALIVE,
                                  Identity(0, node.address[0], node.address, resources))
                for node in self.nodes}
        members = Snapshot.of(list(rows))
        for node in self.nodes:
            node.core.adopt(rows, members, self.now)
            self._after(node)

    def crash(self, i: int) -> None:
        self.nodes[i].up = False

    def restart(self, i: int, seeds: list[int]) -> None:
        """The machine comes back with a fresh process (its next life) and rejoins."""
        node = self.nodes[i]
        node.life += 1
        node.core = self._new_core(node.node_id, node.address, node.life)
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

    # ---- inspection --------------------------------------------------------------------

    def states(self, i: int) -> dict[NodeId, State]:
        """What node i believes about every member it knows (itself included)."""
        return {n: m.state for n, m in self.nodes[i].core.view().items()}

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if n.up]

    # ---- deliveries --------------------------------------------------------------------

    def _wake(self, node: SimNode, due: float) -> None:
        if node.wake != due or not node.up:
            return
        node.wake = None
        node.core.tick(self.loop.now)
        self._after(node)

    def _arrives(self, node: SimNode, source: SimNode) -> bool:
        """Whether a message from `source` reaches `node` now (and count it if so)."""
        if not node.up or not self.loop.reachable(source.index, node.index):
            return False
        self.messages_delivered += 1
        return True

    def _datagram(self, node: SimNode, source: SimNode, msgs: tuple[Message, ...]) -> None:
        if not self._arrives(node, source):
            return
        now = self.loop.now
        self.loop.note(source.index, node.index, msgs[0])
        for msg in msgs:
            node.core.receive(source.address, msg, now)
        self._after(node)

    def _push_pull(self, node: SimNode, source: SimNode, msg: PushPull) -> None:
        if not self._arrives(node, source):
            return
        self.loop.note(source.index, node.index, msg)
        reply = node.core.handle_push_pull(source.address, msg, self.loop.now)
        self._after(node)
        if self.count_bytes:
            self._count(node, encode_stream(reply))
        self.loop.call_later(self._push_pull_reply, source, node, reply)

    def _push_pull_reply(self, node: SimNode, source: SimNode, msg: PushPull) -> None:
        if not self._arrives(node, source):
            return
        self.loop.note(source.index, node.index, msg)
        node.core.receive(source.address, msg, self.loop.now)
        self._after(node)

    # ---- internals ---------------------------------------------------------------------

    def _count(self, node: SimNode, data: bytes) -> None:
        node.bytes_sent += len(data)

    def _keep_events(self, node: SimNode, events: list[MemberEvent]) -> None:
        node.events.extend(events)

    def _poke(self, node: SimNode) -> None:
        """Make sure the core gets a first tick (it then reports real deadlines)."""
        node.wake = self.now
        self.loop.call_at(self.now, self._wake, node, self.now)

    def _after(self, node: SimNode) -> None:
        """Drain a core after it ran: report its events, put its sends in flight, re-arm
        it."""
        core = node.core
        events = core.events()
        if events:
            self.on_events(node, events)
        loop = self.loop
        for send in core.outbox():
            target = self.by_address.get(send.to)
            if send.stream:
                msg = send.msgs[0]
                assert isinstance(msg, PushPull)
                if self.count_bytes:
                    self._count(node, encode_stream(msg))
                if target is not None:
                    loop.call_later(self._push_pull, target, node, msg)
                continue
            if self.count_bytes:
                self._count(node, encode_packet(send.msgs))
            if target is None or loop.lost():
                continue
            loop.call_later(self._datagram, target, node, send.msgs)
        due = core.next_deadline()
        if due is not None and due != node.wake:
            node.wake = due
            # a deadline already past (e.g. a gossip round due since a quiet spell) runs now:
            # simulated time never goes backwards
            loop.call_at(due, self._wake, node, due)
