"""Thousands of nodes' protocol cores on one simulated clock, wired as a node wires them.

Each node here is the sans-IO part of a production node: a gossip `Membership` and a
`Dht` with the same id, where membership events feed the DHT's routing (a member that
joins or comes back is routed through, one that fails or leaves is dropped), exactly as
`p2pexec.cluster` does. The per-protocol steppers (`gossip.stepper`, `dht.stepper`)
deliver each protocol's messages; here they share one `EventLoop`, so one seed replays
the whole run and one digest covers every delivery. No trio, no sockets: this is the
engine for clusters of 1,000 to 10,000 nodes, where whole nodes on `SimNetwork` are too
slow.
"""

from __future__ import annotations

from collections.abc import Callable

from p2pexec.dht.config import DhtConfig
from p2pexec.dht.stepper import DhtStepper
from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.core import EventKind, MemberEvent
from p2pexec.gossip.stepper import SimNode, Stepper
from p2pexec.ids import NodeId
from p2pexec.stepping import EventLoop, OnLoop

MemberWatcher = Callable[[int, MemberEvent], None]
"""Called with (observer index, event) for every membership change a node reports."""

_ROUTED = (EventKind.JOINED, EventKind.UPDATED, EventKind.ALIVE)
_DEPARTED = (EventKind.FAILED, EventKind.LEFT)


class ClusterStepper(OnLoop):
    """N nodes (gossip + DHT cores) on a simulated LAN. Times are seconds from 0."""

    def __init__(self, n: int, *, gossip: GossipConfig | None = None,
                 dht: DhtConfig | None = None, seed: int = 0, latency: float = 0.0005,
                 jitter: float = 0.0005, loss: float = 0.0,
                 resources: dict[str, float] | None = None) -> None:
        self.loop = EventLoop(seed, latency=latency, jitter=jitter, loss=loss)
        self.gossip = Stepper(0, gossip or GossipConfig.lan(), loop=self.loop,
                              count_bytes=False, resources=resources)
        self.gossip.on_events = self._membership_changed
        self.dht = DhtStepper(0, dht, view=0, detect_after=None, loop=self.loop)
        self.index: dict[NodeId, int] = {}
        self.watchers: list[MemberWatcher] = []
        self.started: list[Callable[[int], None]] = []
        """Called with a node's index when it comes back as a fresh process."""
        self.stopped: list[Callable[[int], None]] = []
        """Called with a node's index when it stops (crash, or the end of a leave)."""
        self._leaving: set[int] = set()
        for _ in range(n):
            self.add_node()

    def __len__(self) -> int:
        return len(self.gossip.nodes)

    def node_id(self, i: int) -> NodeId:
        return self.gossip.nodes[i].node_id

    def is_up(self, i: int) -> bool:
        return self.gossip.nodes[i].up

    def up_nodes(self) -> list[int]:
        return [node.index for node in self.gossip.nodes if node.up]

    # ---- building and faults ------------------------------------------------------------

    def add_node(self) -> int:
        """A new machine (its DHT key decides its id), not yet joined: its index."""
        dht_node = self.dht.add_node()
        node = self.gossip.add_node(dht_node.contact.node)
        self.index[node.node_id] = node.index
        return node.index

    def converge(self, dht_view: int = 40) -> None:
        """Start every node converged: the gossip cores share the table a cluster of all
        of them converges to, and each DHT learns its neighbours in id order and
        `dht_view` random members (gossip would feed it all of them; a partial view
        keeps set-up near O(n) at 10,000 nodes, and routing works with one). Where a
        simulated mass join costs O(n^2)."""
        self.gossip.converge()
        self.dht.know_neighbours(dht_view)

    def join(self, i: int, seeds: list[int]) -> None:
        self.gossip.join(i, seeds)

    def join_all(self, seed: int = 0) -> None:
        self.gossip.join_all(seed)

    def crash(self, i: int) -> None:
        """The machine stops at once: no leave, no answers."""
        self.gossip.crash(i)
        self.dht.nodes[i].up = False
        self._leaving.discard(i)
        for stopped in self.stopped:
            stopped(i)

    def restart(self, i: int, seeds: list[int]) -> None:
        """The machine comes back as a fresh process and joins through `seeds`."""
        self.dht.restart(i)
        self.gossip.restart(i, seeds)
        for started in self.started:
            started(i)

    def leave(self, i: int) -> None:
        """A graceful leave: the node gossips it, then stops once the news is out (or
        after the gossip config's leave_timeout), as a node's shutdown does."""
        self._leaving.add(i)
        self.gossip.leave(i)
        self._check_left(i, self.now + self.gossip.cfg.leave_timeout)

    # ---- running -----------------------------------------------------------------------

    # ---- internals ---------------------------------------------------------------------

    def _check_left(self, i: int, deadline: float) -> None:
        if i not in self._leaving:
            return  # crashed or restarted meanwhile
        node = self.gossip.nodes[i]
        if node.core.leave_complete() or self.now >= deadline:
            self._leaving.discard(i)
            self.crash(i)
            return
        self.loop.call_at(self.now + self.gossip.cfg.gossip_interval, self._check_left, i,
                          deadline)

    def _membership_changed(self, node: SimNode, events: list[MemberEvent]) -> None:
        """What `p2pexec.cluster` does with membership events: route the DHT by them."""
        for event in events:
            if event.member.is_self:
                continue
            other = self.index.get(event.member.node_id)
            if other is None:
                continue
            if event.kind in _ROUTED:
                self.dht.member_alive(node.index, other)
            elif event.kind in _DEPARTED:
                self.dht.member_gone(node.index, other)
            for watch in self.watchers:
                watch(node.index, event)
