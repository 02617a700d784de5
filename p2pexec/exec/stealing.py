"""Work stealing between nodes: the policy, sans-IO.

Ready tasks queue at the node they were submitted to (their owner). A node with CPUs to
spare and nothing ready (the thief) asks a peer whose gossiped load shows queued work (the
victim) for a batch; the victim decides what to give with a cost model in the spirit of
dask's: a task moves only when the time it would still wait here exceeds what moving it
costs (a round trip plus its large inputs over the wire). Nothing here needs a global
view: a thief knows its peers' last gossiped queue lengths, a victim knows its own queue.

`Thief` chooses victims (two random choices, the more loaded wins) and backs off from
victims that had nothing to give until their load changes; `batch_size` is the victim's
rule. Time and randomness are passed in.

Actors are the exception to pulling: an actor holds its node for its whole life, so its
owner places it at creation, on the least loaded node that fits (`Placement`), and pushes
it there; a node that finds it no longer fits hands it back. Work with a scheduling
strategy is pushed the same way, to the node its strategy names (`Placement.spread`
takes the live nodes in turn for SPREAD).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from p2pexec.exec.resources import CPU, covers
from p2pexec.ids import NodeId


@dataclass(frozen=True)
class StealConfig:
    batch_seconds: float = 0.05
    """Expected work a victim hands over per CPU of the thief in one grant: one steal
    then keeps a thief busy for about this long, so a steal's round trip (~1-3 ms on a
    LAN, through TLS and two event loops) costs at most a few percent of the work it
    brings. Bounded by half the victim's stealable queue (the classic rule that makes
    the queues of thief and victim even out instead of the work bouncing back)."""
    move_cost_seconds: float = 0.002
    """What moving one task costs before its inputs: its share of a steal round trip and
    the extra hop of its result back to the owner. A task whose expected wait at its
    owner is below this stays there (a no-op task queued behind a few others is cheaper
    to run where it is)."""
    bandwidth: float = 100 * 2**20
    """Bytes per second assumed for moving a task's large inputs to the thief: a low
    estimate of the object transfer rate measured between two nodes on loopback
    (185-256 MiB/s, benchmarks/bench_transfer.py) and well under gigabit Ethernet's."""
    unknown_task_seconds: float = 0.01
    """Expected run time of a function that has never finished here: long enough that a
    fresh burst spreads over the mesh, short enough that one wrong guess strands at most
    `batch_seconds` of work per thief CPU."""
    min_backoff: float = 0.002
    """Wait after a steal that brought nothing, doubling up to `max_backoff`; reset by
    any steal that brings work."""
    max_backoff: float = 0.25
    """Longest wait between two attempts of an idle thief: a victim's load spreads by
    gossip in about this time, so asking more often only meets the same stale view."""
    victim_quiet_seconds: float = 1.0
    """A victim that had nothing to give is not asked again for this long unless its
    gossiped load changes (a new sample version)."""
    request_timeout: float = 2.0
    """How long a thief waits for a grant before giving up on that victim."""
    check_interval: float = 10.0
    """Seconds between an owner's checks that the peers running its tasks still hold
    them (`Scheduler._check_held`); a task is asked about once it has been at its peer
    for a whole interval, so one a peer dropped runs again within two intervals. On a
    LAN a failure takes about as long to detect (suspicion 5-15 s), and a check costs
    one small message per peer that holds tasks."""


PLACEMENT = 0
"""The request id of a grant nobody asked for: actors their owner placed on the thief
(steal requests count from 1)."""

LOAD_FEED_INTERVAL = 0.1
"""Seconds between two looks at the peers' gossiped loads for placing actors: well under
the gossip interval, so a placement uses the newest sample this node has."""


@dataclass(frozen=True, slots=True)
class PeerLoad:
    """A peer as gossip shows it: where it is, what it runs and how much waits there."""

    node: NodeId
    address: tuple[str, int]
    queue_length: int
    version: int
    resources: dict[str, float] = field(default_factory=dict)
    cpus_in_use: int = 0
    """CPUs its running tasks and its actors hold (rounded up)."""


def batch_size(stealable: int) -> int:
    """Most tasks one grant may take: half the victim's stealable queue, at least one."""
    return max(1, (stealable + 1) // 2)


def worth_moving(wait_seconds: float, input_bytes: int, config: StealConfig) -> bool:
    """A task moves when it would wait longer here than moving it costs."""
    return wait_seconds > config.move_cost_seconds + input_bytes / config.bandwidth


class Thief:
    """Which peer an idle node asks for work, and when to stop asking (see module doc)."""

    def __init__(self, config: StealConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self._quiet: dict[NodeId, tuple[int, float]] = {}
        """Victims that had nothing: the load version they showed and until when."""
        self.backoff = config.min_backoff
        """How long to wait before the next attempt after one that brought nothing."""

    def choose(self, peers: Iterable[PeerLoad], now: float) -> PeerLoad | None:
        """Two random choices among peers showing queued work, the more loaded one wins;
        None when no peer looks worth asking."""
        candidates = [peer for peer in peers if peer.queue_length > 0
                      and not self._is_quiet(peer, now)]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(candidates, 2)
        return first if first.queue_length >= second.queue_length else second

    def _is_quiet(self, peer: PeerLoad, now: float) -> bool:
        quiet = self._quiet.get(peer.node)
        if quiet is None:
            return False
        version, until = quiet
        if peer.version != version or now >= until:
            del self._quiet[peer.node]
            return False
        return True

    def granted(self, victim: PeerLoad, tasks: int, now: float) -> None:
        """A steal from `victim` ended with `tasks` tasks (0: refused, failed or empty)."""
        if tasks:
            self.backoff = self.config.min_backoff
            self._quiet.pop(victim.node, None)
            return
        self._quiet[victim.node] = (victim.version, now + self.config.victim_quiet_seconds)
        self.backoff = min(self.config.max_backoff, self.backoff * 2)

    def nothing_to_steal(self) -> None:
        """No peer showed work: wait longer before looking again."""
        self.backoff = min(self.config.max_backoff, self.backoff * 2)

    def forget(self, node: NodeId) -> None:
        """A peer left or died."""
        self._quiet.pop(node, None)


class Placement:
    """Where a new actor goes: the node that would be least loaded with it (CPUs in use
    plus queued tasks, per CPU) among this one and the peers whose gossiped load shows
    room for it; this node on a tie. Gossip lags, so the actors placed on a peer since
    its last load sample count as its load until a newer sample arrives."""

    def __init__(self) -> None:
        self._peers: dict[bytes, PeerLoad] = {}
        self._placed: dict[bytes, float] = {}
        """Per peer: CPUs of the actors pushed to it since its last load sample."""
        self._seen: set[bytes] = set()
        """Every peer ever live: one missing from `_peers` now has died or left."""
        self._turns = 0
        """SPREAD placements made so far: where the round robin stands."""

    def update(self, peers: Iterable[PeerLoad]) -> None:
        """The live peers' loads as gossip has them now."""
        fresh = {peer.node.raw: peer for peer in peers}
        for node in list(self._placed):
            old, new = self._peers.get(node), fresh.get(node)
            if new is None or old is None or new.version != old.version:
                del self._placed[node]  # a newer sample counts them already
        self._peers = dict(sorted(fresh.items()))  # ties go to the smallest id
        self._seen.update(fresh)

    def forget(self, node: bytes) -> None:
        """A peer died or left: nothing goes there before gossip shows it live again."""
        self._peers.pop(node, None)
        self._placed.pop(node, None)

    def placed(self, node: bytes, cpus: float) -> None:
        self._placed[node] = self._placed.get(node, 0.0) + cpus

    def totals(self, node: bytes) -> dict[str, float] | None:
        """A live peer's resources (None: not a live member now)."""
        peer = self._peers.get(node)
        return None if peer is None else peer.resources

    def was_live(self, node: bytes) -> bool:
        """The peer has been a live member (so one not live now died or left, rather
        than not being heard of yet)."""
        return node in self._seen

    def spread(self, me: bytes, mine: dict[str, float], demand: dict[str, float]
               ) -> bytes | None:
        """SPREAD: the next node in turn (by id) among this one (`me`, offering `mine`)
        and the live peers whose totals cover `demand`, starting with this one; None
        when none does. Ray's SPREAD skips nodes busy now; gossiped loads lag and do not
        count the work pushed to a peer, so the turn ignores them."""
        nodes = sorted([node for node, peer in self._peers.items()
                        if covers(peer.resources, demand)]
                       + ([me] if covers(mine, demand) else []))
        if not nodes:
            return None
        start = nodes.index(me) if me in nodes else 0
        self._turns += 1
        return nodes[(start + self._turns - 1) % len(nodes)]

    def choose(self, demand: dict[str, float], cpus: float, in_use: float,
               queued: int) -> bytes | None:
        """The peer (raw id) to push an actor needing `demand` (`CPU` included, what it
        needs to be placed) to, or None to create it here, where `cpus` CPUs exist,
        `in_use` of them are taken and `queued` tasks wait."""
        need = demand.get(CPU, 0.0)
        if cpus <= 0:
            return None
        best, best_load = None, (in_use + queued + need) / cpus
        for node, peer in self._peers.items():
            total = peer.resources.get(CPU, 0.0)
            taken = peer.cpus_in_use + self._placed.get(node, 0.0)
            if total <= 0 or taken + need > total or not covers(peer.resources, demand):
                continue
            load = (taken + peer.queue_length + need) / total
            if load < best_load:
                best, best_load = node, load
        return best
