"""SWIM + Lifeguard membership as a sans-IO state machine.

`Membership` holds every rule and no I/O: the driver (or a test, or the stepper) tells it the
time, hands it received messages, and drains what to send (`outbox`), what happened
(`events`) and when to be woken next (`next_deadline`). Nothing here awaits, reads a clock
or uses the global random module, so a seeded run replays exactly.

Protocol, following hashicorp/memberlist:
- every probe period, ping the next member of a shuffled round-robin list; no ack within
  the probe timeout -> ask `indirect_checks` others to ping it (they nack if it stays
  silent); no ack by the end of the period -> suspect it;
- a suspicion is gossiped; the suspect refutes with a higher incarnation, otherwise its
  timer (Lifeguard: long, shortened by independent confirmations) declares it dead;
- local health (Lifeguard): missed acks and missing nacks raise an awareness score that
  stretches this node's probe timeout and probe period, so a struggling node accuses less;
- updates are piggybacked on probes and on gossip rounds, each sent
  retransmit_limit(n) times; periodic push-pull exchanges the whole table over a stream;
- a graceful leave is announced as `Left`, which beats a death at the same incarnation;
- a node that learns it was suspected announces a higher incarnation; a restarted
  process starts in a higher life (the top bits of its incarnation: `LIFE_SHIFT`), and
  its peers report the old process `FAILED` and the new one `JOINED` (memberlist sees
  no restart that is faster than its failure detection);
- a remote table saying "dead" only makes us suspect (memberlist mergeState), and every
  reconnect_interval we push-pull with one dead member (Serf's reconnect), which is how
  the two sides of a healed partition find each other again.

Where this differs from memberlist, and why:
- A newly suspected member is probed next (once per suspicion), with the suspicion placed
  before the ping: its ack then carries its refutation straight back, or our failed probe
  is an independent confirmation that shortens the Lifeguard timer. A member told of a
  suspicion it already refuted repeats its Alive (same incarnation). Together these cut
  false positives under heavy loss (simulations/gossip_figures.py).
- A suspicion heard at a higher incarnation than the one being timed starts a fresh timer:
  the old suspicion was refuted and must not turn into a death at the new incarnation.
- A push-pull (not a join) from a member we hold dead is the other side of a healing
  partition: the live members it holds dead are told so in one datagram
  each, not suspected (see `_merge_remote`).
- Gossip rounds are skipped while nothing is pending and run at once when news arrives
  after a quiet spell, then every gossip_interval: updates spread at network speed rather
  than one tick per hop; each is still sent retransmit_limit(n) times.
"""

from __future__ import annotations

import itertools
import logging
import math
import operator
import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from p2pexec.errors import LocalUsageError
from p2pexec.gossip.broadcast import BroadcastQueue
from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.liveset import Lap, LiveSet, Snapshot
from p2pexec.gossip.messages import (
    LIFE_SHIFT,
    MAX_COUNTER,
    MAX_LIFE,
    Ack,
    Alive,
    Dead,
    IndirectPing,
    Left,
    LoadUpdate,
    MemberRecord,
    MemberUpdate,
    Message,
    Nack,
    Ping,
    PushPull,
    State,
    Suspect,
    check_address,
    check_counter,
    check_resources,
    life_of,
)
from p2pexec.gossip.suspicion import Awareness, Suspicion
from p2pexec.gossip.table import Load, MemberTable, Row, status_of
from p2pexec.gossip.wire import PACKET_OVERHEAD, encoded_size
from p2pexec.ids import NodeId
from p2pexec.net.transport import Address

LIVE = (State.ALIVE, State.SUSPECT)

log = logging.getLogger("p2pexec.gossip")


def _bump(counter: int) -> int:
    """counter + 1, held below MAX_COUNTER: peers refuse larger counters, and only a
    hostile peer's claim of the largest one can bring us there (it then goes unrefuted)."""
    return min(counter + 1, MAX_COUNTER - 1)


@dataclass(frozen=True, slots=True)
class Send:
    """Something for the driver to send to `to`: a datagram carrying `msgs` in order, or,
    when `stream`, one push-pull exchange over a connection whose reply goes to `receive`."""

    to: Address
    msgs: tuple[Message, ...]
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Member:
    """One member as this node sees it (the public view)."""

    node_id: NodeId
    name: str
    address: Address
    state: State
    incarnation: int
    resources: dict[str, float]
    load: Load
    last_heard: float | None
    """When this node last got a message straight from it (None: never, or it is us)."""
    is_self: bool = False


class EventKind(Enum):
    """What changed about a member."""

    JOINED = "joined"      # newly alive (first seen, or back after dead/left)
    UPDATED = "updated"    # still alive; name, address or resources changed
    SUSPECT = "suspect"    # stopped answering probes; may still refute
    ALIVE = "alive"        # refuted a suspicion
    FAILED = "failed"      # declared dead: its tasks and objects should be recovered
    LEFT = "left"          # left gracefully


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: EventKind
    member: Member
    time: float
    origin: NodeId | None = None
    """For a suspicion or failure: the node that first declared it (this one, when its
    own probe or timer did)."""


@dataclass(slots=True)
class _Probe:
    target: NodeId
    address: Address
    seq: int
    direct_deadline: float
    end: float
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    requester: Address
    seq: int
    nack: bool
    deadline: float


@dataclass(slots=True)
class _Timers:
    probe: float = math.inf
    gossip: float = math.inf
    push_pull: float = math.inf
    reconnect: float = math.inf
    reap: float = math.inf
    load: float = 0.0
    started: bool = False
    seeds: list[Address] = field(default_factory=list)


class Membership:
    """The membership protocol of one node. See the module docstring for the rules.

    Construct with this node's id and the address others reach it at; call `tick(now)` at
    or after `next_deadline()`, `receive` for every message, and drain `outbox()` and
    `events()` after each call.
    """

    def __init__(self, node_id: NodeId, address: Address, cfg: GossipConfig,
                 rng: random.Random, *, name: str = "",
                 resources: dict[str, float] | None = None, life: int = 0) -> None:
        """`life`: how many times this node's process has started before (its data dir
        counts them); its incarnations start at `life << LIFE_SHIFT`."""
        try:
            if not 0 <= life <= MAX_LIFE:
                raise ValueError(f"life {life} is outside 0..{MAX_LIFE}")
            check_address(address)
            check_resources(resources or {})
        except ValueError as exc:
            raise LocalUsageError(f"cannot start membership: {exc}") from None
        self.me = node_id
        self.address = address
        self.cfg = cfg
        self._check_fits(name or node_id.short, address, resources or {})
        self._rng = rng
        self._name = name or node_id.short
        self._resources = dict(resources or {})
        self._incarnation = life << LIFE_SHIFT
        self._table = MemberTable()
        self._queue = BroadcastQueue(cfg.max_packet_size - PACKET_OVERHEAD)
        self._awareness = Awareness(cfg)
        self._suspicions: dict[NodeId, Suspicion] = {}
        self._last_heard: dict[NodeId, float] = {}
        self._changed_at: dict[NodeId, float] = {}
        self._live = LiveSet()                # other visible alive/suspect members
        self._dead: dict[NodeId, None] = {}   # other visible dead (not left) members
        self._told: dict[NodeId, int] = {}
        """Members told that the other side of a healing partition holds them dead, and
        at which incarnation (see `_merge_remote`)."""
        self._reapable: dict[NodeId, None] = {}  # tombstones and rows without identity
        self._relays: dict[int, _Relay] = {}
        self._probe: _Probe | None = None
        self._lap: Lap | None = None          # this lap of round-robin probing
        self._probe_soon: dict[NodeId, None] = {}  # newly suspected: probe them next
        self._seq = 0
        self._t = _Timers()
        self._outbox: list[Send] = []
        self._events: list[MemberEvent] = []
        self._leaving = False
        self._pending_load: tuple[int, int] | None = None
        self._announce()

    # ---- queries -----------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def awareness(self) -> int:
        """Local health score: 0 healthy, up to awareness_max_multiplier - 1."""
        return self._awareness.score

    @property
    def leaving(self) -> bool:
        return self._leaving

    def num_live(self) -> int:
        """Alive or suspect members, this node included: the n of the config formulas."""
        return len(self._live) + 1

    def live_members(self) -> Collection[NodeId]:
        """The other members this node sees alive or suspect (no copy: for simulations
        that check thousands of views)."""
        return self._live

    def view(self) -> dict[NodeId, Member]:
        """Every known member (this node included), whatever its state."""
        return {node: self._member(row) for node, row in self._table.rows().items()
                if row.identity is not None}

    def member(self, node: NodeId) -> Member | None:
        row = self._table.get(node)
        return None if row is None or row.identity is None else self._member(row)

    def rows(self) -> dict[NodeId, Row]:
        """The raw merged table (for tests and debugging)."""
        return self._table.rows()

    def pending_broadcasts(self) -> list[MemberUpdate]:
        return self._queue.pending()

    def leave_complete(self) -> bool:
        """True once our `Left` has been gossiped retransmit_limit(n) times, or nobody is
        left to tell: the driver may then shut the transport down."""
        return self._leaving and ((self.me, "m") not in self._queue or not self._live)

    def outbox(self) -> list[Send]:
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[MemberEvent]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        """The earliest time `tick` has work to do (None before the first call)."""
        if not self._t.started:
            return None
        t = self._t
        times = [t.gossip if len(self._queue) else math.inf]
        if not self._leaving:
            times += [t.probe, t.push_pull, t.reconnect, t.reap]
        if self._pending_load is not None:
            times.append(t.load)
        p = self._probe
        if p is not None:
            times.append(p.end if p.indirect_sent else p.direct_deadline)
        times += [r.deadline for r in self._relays.values()]
        times += [s.deadline for s in self._suspicions.values()]
        return min(times)

    def validate(self) -> None:
        """Invariants of the whole core (tests call it after every step)."""
        mine = self._table.get(self.me)
        assert mine is not None and mine.identity is not None, "we always know ourselves"
        assert self.me not in self._live and self.me not in self._dead
        shown = 0
        for row in self._table:
            if row.node == self.me:
                continue
            visible = row.identity is not None
            assert (row.node in self._live) == (visible and row.state in LIVE), row
            assert (row.node in self._dead) == (visible and row.state == State.DEAD), row
            assert (row.node in self._reapable) == \
                (not visible or row.state in (State.DEAD, State.LEFT)), row
            shown += visible and row.state in LIVE
        assert shown == len(self._live) == self.num_live() - 1
        for node, suspicion in self._suspicions.items():
            row = self._table.get(node)
            assert row is not None and row.status == (suspicion.incarnation, State.SUSPECT), \
                f"a suspicion timer for {node.short} whose row is {row}"
        if self._probe is not None:
            assert not self._leaving and self._probe.target != self.me

    # ---- commands from the node --------------------------------------------------------

    def join(self, seeds: Iterable[Address], now: float) -> None:
        """Exchange full state with each seed (and keep them to retry while alone)."""
        self._start(now)
        for seed in seeds:
            if seed == self.address:
                continue
            if seed not in self._t.seeds:
                self._t.seeds.append(seed)
            self._outbox.append(Send(seed, (self._local_state(join=True),), stream=True))

    def adopt(self, rows: Mapping[NodeId, Row], members: Snapshot, now: float) -> None:
        """Start from the table a cluster converged to instead of learning it by joining:
        `rows` by node (ours included) and `members`, the live ones among them. Both are
        read, never changed, so thousands of cores (a simulation) share one copy and set
        up in O(1) each; this core keeps only what changes from then on. The rows must
        all be alive (a converged table). Only for a fresh core; no events, nothing
        sent, and our own first Alive is not gossiped when the table has it (the members
        know it already)."""
        if len(self._table) > 1 or self._live:
            raise LocalUsageError("adopt() is for a fresh core that knows only itself")
        self._start(now)
        self._table.share(rows)
        self._live = LiveSet(members)
        self._live.discard(self.me)
        # as a member of this cluster for a while would: the next push-pull somewhere in
        # the period for its size (a node that just started staggers over the base one)
        self._t.push_pull = now + self._rng.uniform(0, self.cfg.push_pull_period(self.num_live()))
        mine = rows.get(self.me)
        if mine is not None and mine.identity is not None \
                and mine.status == (self._incarnation, State.ALIVE):
            self._queue.discard((self.me, "m"))

    def leave(self, now: float) -> None:
        """Announce a graceful leave; keep gossiping until `leave_complete()`."""
        self._start(now)
        if self._leaving:
            return
        self._leaving = True
        self._probe = None
        self._apply_self(Left(self.me, self._incarnation))

    def set_local_load(self, queue_length: int, running_tasks: int, now: float) -> None:
        """Record this node's load; it is gossiped at most every load_update_interval."""
        try:
            check_counter("queue_length", queue_length)
            check_counter("running_tasks", running_tasks)
        except ValueError as exc:
            raise LocalUsageError(f"bad local load: {exc}") from None
        self._start(now)
        current = self._table.get(self.me)
        if current is not None and current.load.version > 0 and \
                (current.load.queue_length, current.load.running_tasks) == \
                (queue_length, running_tasks):
            self._pending_load = None
            return
        self._pending_load = (queue_length, running_tasks)
        if now >= self._t.load:
            self._publish_load(now)

    def set_local_resources(self, resources: dict[str, float], now: float) -> None:
        """Advertise new resources: a new incarnation, like memberlist's UpdateNode."""
        try:
            check_resources(resources)
        except ValueError as exc:
            raise LocalUsageError(f"cannot advertise resources {resources!r}: {exc}") from None
        self._check_fits(self._name, self.address, resources)
        self._start(now)
        self._resources = dict(resources)
        self._incarnation = _bump(self._incarnation)
        self._announce()

    # ---- input -------------------------------------------------------------------------

    def receive(self, src: Address, msg: Message, now: float) -> None:
        """Handle one message that arrived from address `src`."""
        self._start(now)
        if isinstance(msg, Ping):
            if msg.target == self.me:
                self._heard(msg.sender, now)
                self._send(src, [Ack(msg.seq, self.me)])
        elif isinstance(msg, IndirectPing):
            self._heard(msg.sender, now)
            seq = self._next_seq()
            deadline = now + self.cfg.nack_fraction * self.cfg.probe_timeout
            self._relays[seq] = _Relay(src, msg.seq, msg.nack, deadline)
            self._send(msg.target_address, [Ping(seq, msg.target, self.me)])
        elif isinstance(msg, Ack):
            self._heard(msg.sender, now)
            relay = self._relays.pop(msg.seq, None)
            if relay is not None:
                self._send(relay.requester, [Ack(relay.seq, msg.sender)])
            elif self._probe is not None and msg.seq == self._probe.seq:
                probe, self._probe = self._probe, None
                self._awareness.apply(-1)
                row = self._table.get(probe.target)
                if probe.indirect_sent and row is not None and row.state == State.SUSPECT:
                    # It answered through a helper, so our direct ping (which carried the
                    # suspicion) may never have reached it, nor our gossip if we were the
                    # one cut off: tell it straight, so it refutes before our timer ends.
                    self._send(probe.address, [Suspect(probe.target, row.incarnation,
                                                       self.me)], piggyback=False)
        elif isinstance(msg, Nack):
            if self._probe is not None and msg.seq == self._probe.seq:
                self._probe.nacks += 1
        elif isinstance(msg, PushPull):
            self._heard(msg.sender, now)
            self._merge_remote(msg, now)
        else:
            incarnation = self._incarnation
            self._apply(msg, now)
            if self._incarnation != incarnation:
                # We outbid a suspicion or death that `src` passed on: tell it straight,
                # so its timer stops even if our gossip of it is lost among many updates
                # (after a partition heals, every node suspects dozens at once).
                self._send(src, [self._alive()], piggyback=False)

    def handle_push_pull(self, src: Address, msg: PushPull, now: float) -> PushPull:
        """Serve an incoming push-pull: merge the remote table, answer with ours."""
        self.receive(src, msg, now)
        return self._local_state(join=False)

    def tick(self, now: float) -> None:
        """Do whatever is due at `now`: probe phases, suspicion timeouts, gossip, sync."""
        self._start(now)
        t, cfg = self._t, self.cfg
        p = self._probe
        if p is not None and not p.indirect_sent and now >= p.direct_deadline:
            self._send_indirect(p)
        if p is not None and now >= p.end:
            self._probe = None
            self._probe_failed(p, now)
        if not self._leaving and now >= t.probe:
            self._start_probe(now)
        for seq, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[seq]
                if relay.nack:
                    self._send(relay.requester, [Nack(relay.seq, self.me)])
        for node, s in list(self._suspicions.items()):
            if now >= s.deadline:
                del self._suspicions[node]
                row = self._table.get(node)
                if row is not None and row.status == (s.incarnation, State.SUSPECT):
                    self._apply(Dead(node, s.incarnation, self.me), now)
        if now >= t.gossip:
            if len(self._queue):
                self._gossip(now)
            t.gossip += cfg.gossip_interval
            if t.gossip <= now:
                t.gossip = now + cfg.gossip_interval
        if self._pending_load is not None and now >= t.load:
            self._publish_load(now)
        if self._leaving:
            return
        if now >= t.push_pull:
            t.push_pull = now + cfg.push_pull_period(self.num_live())
            target = self._random_live_address()
            if target is None and t.seeds:
                target = self._rng.choice(t.seeds)
            if target is not None:
                self._outbox.append(Send(target, (self._local_state(join=False),), stream=True))
        if now >= t.reconnect:
            t.reconnect = now + cfg.reconnect_interval
            dead = list(self._dead)
            if dead:
                row = self._table.get(self._rng.choice(dead))
                if row is not None and row.identity is not None:
                    self._outbox.append(Send(row.identity.address,
                                             (self._local_state(join=False),), stream=True))
        if now >= t.reap:
            t.reap = now + cfg.push_pull_interval
            self._reap(now)

    # ---- internals: time and bookkeeping -----------------------------------------------

    def _start(self, now: float) -> None:
        t = self._t
        if t.started:
            return
        t.started = True
        cfg, rng = self.cfg, self._rng
        t.probe = now + rng.uniform(0, cfg.probe_interval)
        t.gossip = now + rng.uniform(0, cfg.gossip_interval)
        t.push_pull = now + rng.uniform(0, cfg.push_pull_interval)
        t.reconnect = now + rng.uniform(0, cfg.reconnect_interval)
        t.reap = now + cfg.push_pull_interval

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _heard(self, node: NodeId, now: float) -> None:
        if node in self._live or node in self._dead:
            self._last_heard[node] = now

    def _member(self, row: Row) -> Member:
        ident = row.identity
        assert ident is not None
        return Member(row.node, ident.name, ident.address, row.state, row.incarnation,
                      dict(ident.resources), row.load, self._last_heard.get(row.node),
                      row.node == self.me)

    def _address_of(self, node: NodeId) -> Address | None:
        row = self._table.get(node)
        return None if row is None or row.identity is None else row.identity.address

    def _random_live_address(self) -> Address | None:
        if not self._live:
            return None
        return self._address_of(self._live.choice(self._rng))

    # ---- internals: sending ------------------------------------------------------------

    def _send(self, to: Address, msgs: list[Message], piggyback: bool = True) -> None:
        """A datagram: `msgs` first, then (with `piggyback`) as many pending updates as
        fit."""
        if piggyback:
            budget = (self.cfg.max_packet_size - PACKET_OVERHEAD
                      - sum(encoded_size(m) for m in msgs))
            msgs += self._queue.take(budget, 0, self.cfg.retransmit_limit(self.num_live()))
        self._outbox.append(Send(to, tuple(msgs)))

    def _check_fits(self, name: str, address: Address, resources: dict[str, float]) -> None:
        """Our own Alive must fit in one packet, or no one would hear of us by gossip."""
        size = encoded_size(Alive(self.me, MAX_COUNTER - 1, name, address, dict(resources)))
        room = self.cfg.max_packet_size - PACKET_OVERHEAD
        if size > room:
            raise LocalUsageError(
                f"our Alive (name {name[:40]!r}, {len(resources)} resources) is {size} "
                f"bytes and does not fit in a gossip packet ({room} bytes of "
                f"max_packet_size): advertise fewer or shorter resource names")

    def _broadcast(self, upd: MemberUpdate) -> None:
        key = (upd.node, "l" if isinstance(upd, LoadUpdate) else "m")
        size = encoded_size(upd)
        if not self._queue.enqueue(key, upd, size):
            log.warning("gossip update %s about node %s is %d bytes, over the %d-byte room "
                        "of a packet (max_packet_size): not piggybacked, push-pull still "
                        "carries it", type(upd).__name__, upd.node.short, size,
                        self._queue.max_size)

    def _gossip(self, now: float) -> None:
        horizon = now - self.cfg.gossip_to_the_dead_time
        live = self._live
        dead = [n for n in self._dead if self._changed_at.get(n, -math.inf) >= horizon]
        total = len(live) + len(dead)
        # uniform over live and recently dead members: draw positions, then as many
        # distinct live members as positions fell on them
        picks = self._rng.sample(range(total), min(self.cfg.gossip_nodes, total))
        chosen = live.sample(self._rng, sum(1 for i in picks if i < len(live)))
        chosen += [dead[i - len(live)] for i in picks if i >= len(live)]
        limit = self.cfg.retransmit_limit(self.num_live())
        budget = self.cfg.max_packet_size - PACKET_OVERHEAD
        for node in chosen:
            msgs = self._queue.take(budget, 0, limit)
            if not msgs:
                break
            address = self._address_of(node)
            if address is not None:
                self._outbox.append(Send(address, tuple(msgs)))

    def _local_state(self, join: bool) -> PushPull:
        return PushPull(self.me, join, self._table.records(_record))

    # ---- internals: probing ------------------------------------------------------------

    def _next_target(self) -> NodeId | None:
        """A newly suspected member first (once per suspicion), else round-robin over a
        shuffled list of live members, reshuffled each lap."""
        while self._probe_soon:
            node = next(iter(self._probe_soon))
            del self._probe_soon[node]
            row = self._table.get(node)
            if node in self._live and row is not None and row.state == State.SUSPECT:
                return node
        for _ in range(2):
            lap = self._lap
            while lap:
                node = self._live.slot(lap.next())
                if node is not None:
                    return node
            self._live.compact()
            self._lap = Lap(self._live.slots, self._rng)
        return None

    def _start_probe(self, now: float) -> None:
        self._t.probe = now + self._awareness.scale(self.cfg.probe_interval)
        target = self._next_target()
        if target is None:
            return
        row = self._table.get(target)
        assert row is not None and row.identity is not None
        seq = self._next_seq()
        self._probe = _Probe(target, row.identity.address, seq,
                             now + self._awareness.scale(self.cfg.probe_timeout), self._t.probe)
        msgs: list[Message] = [Ping(seq, target, self.me)]
        suspect = row.state == State.SUSPECT
        if suspect:
            # give it the news first, so that the ack it sends back carries its refutation
            msgs.insert(0, Suspect(target, row.incarnation, self.me))
        # a suspect is likely dead: pending updates sent there would use up their few
        # retransmits unheard (with three members, a suspicion and its confirmation could
        # both be spent on the dead one, so no timer ever shortened)
        self._send(row.identity.address, msgs, piggyback=not suspect)

    def _send_indirect(self, p: _Probe) -> None:
        p.indirect_sent = True
        table = self._table
        chosen = self._live.sample(
            self._rng, self.cfg.indirect_checks,
            lambda n: n != p.target and table.get(n).state == State.ALIVE)  # type: ignore[union-attr]
        for node in chosen:
            address = self._address_of(node)
            assert address is not None
            self._send(address, [IndirectPing(p.seq, p.target, p.address, self.me, True)])
        p.expected_nacks = len(chosen)

    def _probe_failed(self, p: _Probe, now: float) -> None:
        missing = p.expected_nacks - p.nacks if p.expected_nacks else 1
        self._awareness.apply(missing)
        row = self._table.get(p.target)
        if row is not None and row.state in LIVE:
            self._apply(Suspect(p.target, row.incarnation, self.me), now)

    # ---- internals: the member table ---------------------------------------------------

    def _alive(self) -> Alive:
        return Alive(self.me, self._incarnation, self._name, self.address,
                     dict(self._resources))

    def _announce(self) -> None:
        self._apply_self(self._alive())

    def _apply_self(self, upd: MemberUpdate) -> None:
        self._table.apply(upd)
        self._broadcast(upd)

    def _publish_load(self, now: float) -> None:
        assert self._pending_load is not None
        row = self._table.get(self.me)
        version = _bump(row.load.version if row is not None else 0)
        self._apply_self(LoadUpdate(self.me, version, *self._pending_load))
        self._pending_load = None
        self._t.load = now + self.cfg.load_update_interval

    def _refute(self, seen: int) -> None:
        """Someone thinks we are suspect, dead or gone: outbid them (Lifeguard: and count it
        as a sign of our own poor health)."""
        # (a claim about a later life of ours, which only a hostile peer makes, moves us
        # into it: our peers then take us for restarted, better than for dead)
        self._incarnation = _bump(max(self._incarnation, seen))
        self._awareness.apply(1)
        self._announce()

    def _about_me(self, upd: MemberUpdate) -> None:
        if isinstance(upd, LoadUpdate):
            row = self._table.get(self.me)
            if row is not None and \
                    (upd.version, upd.queue_length, upd.running_tasks) > row.load.key():
                # a sample from an earlier life of this node: outbid it with the current one
                self._apply_self(LoadUpdate(self.me, _bump(upd.version), row.load.queue_length,
                                            row.load.running_tasks))
            return
        if self._leaving:
            return
        if isinstance(upd, Alive):
            if upd.incarnation > self._incarnation:
                self._refute(upd.incarnation)
        elif upd.incarnation >= self._incarnation:
            self._refute(upd.incarnation)
        elif not isinstance(upd, Left) and (self.me, "m") not in self._queue:
            # someone still acts on a suspicion we refuted already (it missed our Alive,
            # and would declare us dead when its timer runs out): repeat the Alive
            self._announce()

    def _apply(self, upd: MemberUpdate, now: float) -> None:
        """Merge a gossiped update, re-gossip it if it was news, and react to the change."""
        if upd.node == self.me:
            self._about_me(upd)
            return
        old, new = self._table.apply(upd)
        origin = upd.origin if isinstance(upd, (Suspect, Dead)) else None
        if isinstance(upd, Suspect):
            s = self._suspicions.get(upd.node)
            if s is not None and old is not None and old.status == new.status \
                    and new.status == status_of(upd) and s.confirm(upd.origin):
                self._broadcast(upd)  # Lifeguard: spread confirmations so others shorten too
        if old == new:
            return
        if isinstance(upd, LoadUpdate):
            if old is None or old.load != new.load:
                self._broadcast(upd)
        elif new.status == status_of(upd) and (old is None or old.status != new.status):
            self._broadcast(upd)
        self._transition(old, new, now, origin)

    def _transition(self, old: Row | None, new: Row, now: float, origin: NodeId | None) -> None:
        node = new.node
        if new.identity is None or new.state in (State.DEAD, State.LEFT):
            self._reapable[node] = None
        else:
            self._reapable.pop(node, None)
        if old is None or old.status != new.status:
            self._changed_at[node] = now
        if new.state == State.SUSPECT:
            s = self._suspicions.get(node)
            if s is None or s.incarnation != new.incarnation:
                # a suspicion at a higher incarnation means the old one was refuted (we
                # missed the refutation): the member gets a fresh timer to refute again
                self._suspicions[node] = Suspicion(self.cfg, self.num_live(),
                                                   origin or self.me, new.incarnation, now)
                # probe it next: our ping tells it about the suspicion, its ack brings back
                # its refutation, or our failed probe becomes an independent confirmation
                self._probe_soon[node] = None
        else:
            self._suspicions.pop(node, None)
        if new.identity is None:
            return
        self._live.discard(node)
        self._dead.pop(node, None)
        if new.state in LIVE:
            self._live.add(node)
        elif new.state == State.DEAD:
            self._dead[node] = None
        prior = old if old is not None and old.identity is not None else None
        kind = _event_kind(prior, new)
        if prior is not None and prior.state in LIVE and new.state in LIVE \
                and life_of(new.incarnation) > life_of(prior.incarnation):
            # its process restarted before anyone declared it failed: the old one is
            # gone with what it ran and held, on the new process's own word
            self._events.append(MemberEvent(EventKind.FAILED, self._member(prior), now, node))
            kind = EventKind.JOINED
        if kind is not None:
            self._events.append(MemberEvent(kind, self._member(new), now, origin))

    def _merge_remote(self, pp: PushPull, now: float) -> None:
        """Merge a full table. A remote "dead" only makes us suspect (memberlist mergeState):
        the member gets a chance to refute before we believe it.

        Except from a sender we hold dead, other than by a join (a restarted process's
        table is new): its table is the other side of a partition that is healing, whose
        "dead" are the members it could not reach, ours among them. Suspecting them all
        would be hundreds of suspicions per node at once (and their refutations), more
        than gossip spreads in a suspicion's time: at 1,000 nodes, thousands of live
        members declared failed. Such a member is only told, in one datagram, that the
        other side holds it dead; its refutation spreads as any Alive does, and nobody's
        timer runs meanwhile."""
        sender = self._table.get(pp.sender)
        across = not pp.join and sender is not None and sender.state == State.DEAD
        members = pp.members
        if self._table.shared:
            # a record that is the very one made from a row we hold says nothing new (cores
            # of one process share rows: a simulation of thousands of nodes; a real node's
            # records come off the wire, so it skips this)
            ours = set(map(id, self._table.records(_record)))
            members = tuple(itertools.compress(
                members, map(operator.not_, map(ours.__contains__, map(id, members)))))
        for r in members:
            known = self._table.get(r.node)
            if known is not None and r.state == State.ALIVE and _knows(known, r):
                continue  # nothing new (most rows of most exchanges): skip the merge
            alive = Alive(r.node, r.incarnation, r.name, r.address, r.resources)
            if r.node == self.me:
                self._about_me(alive if r.state == State.ALIVE else
                               Suspect(self.me, r.incarnation, pp.sender))
                continue
            if r.state != State.ALIVE and (known is None or known.identity is None):
                continue  # do not learn of members through their obituaries
            self._apply(alive, now)
            if r.state in (State.SUSPECT, State.DEAD) and across:
                self._tell_held_dead(r.node, r.incarnation, pp.sender)
            elif r.state in (State.SUSPECT, State.DEAD):
                self._apply(Suspect(r.node, r.incarnation, pp.sender), now)
            elif r.state == State.LEFT:
                self._apply(Left(r.node, r.incarnation), now)
            if r.load_version:
                self._apply(LoadUpdate(r.node, r.load_version, r.queue_length,
                                       r.running_tasks), now)

    def _tell_held_dead(self, node: NodeId, incarnation: int, holder: NodeId) -> None:
        """Send live member `node` the suspicion `holder`'s side holds at `incarnation`
        (once per incarnation), so that it refutes; see `_merge_remote`."""
        row = self._table.get(node)
        if row is None or row.state not in LIVE or row.incarnation > incarnation \
                or self._told.get(node) == incarnation:
            return
        address = self._address_of(node)
        if address is not None:
            self._told[node] = incarnation
            self._send(address, [Suspect(node, incarnation, holder)], piggyback=False)

    def _reap(self, now: float) -> None:
        """Forget tombstones (dead or left) and rows no Alive ever came for (heard of only
        through load or suspicion) once reap_time has passed since their last change.
        Hidden rows must be kept for a while, so the order updates arrive in does not
        matter, but not forever: made-up node ids would grow the table without bound."""
        horizon = now - self.cfg.reap_time
        for node in list(self._reapable):
            if self._changed_at.get(node, now) <= horizon:
                self._table.remove(node)
                for d in (self._dead, self._changed_at, self._last_heard, self._suspicions,
                          self._probe_soon, self._reapable, self._told):
                    d.pop(node, None)


_RECORDS: dict[int, tuple[Row, MemberRecord]] = {}
_MAX_RECORDS = 1 << 17


def _record(row: Row) -> MemberRecord:
    """A row as push-pull sends it. Rows are immutable and change rarely, so each is
    built (and checked) once, not at every exchange: cached by identity (hashing a row
    by value costs as much as building it), dropped wholesale when the cache is full.
    Cores of one process that share rows (a simulation) then also share records."""
    cached = _RECORDS.get(id(row))
    if cached is not None and cached[0] is row:
        return cached[1]
    ident = row.identity
    assert ident is not None
    record = MemberRecord(row.node, ident.name, ident.address, row.incarnation, row.state,
                          dict(ident.resources), row.load.version, row.load.queue_length,
                          row.load.running_tasks)
    if len(_RECORDS) >= _MAX_RECORDS:
        _RECORDS.clear()
    _RECORDS[id(row)] = (row, record)
    return record


def _knows(row: Row, record: MemberRecord) -> bool:
    """Whether merging the alive `record` would leave `row` as it is: same alive status,
    same identity, a load sample at least as new."""
    ident = row.identity
    return (row.state == State.ALIVE and row.incarnation == record.incarnation
            and ident is not None and ident.incarnation == record.incarnation
            and ident.name == record.name and ident.address == record.address
            and len(ident.resources) == len(record.resources)
            and all(record.resources.get(k) == v for k, v in ident.resources)
            and row.load.key() >= (record.load_version, record.queue_length,
                                   record.running_tasks))


def _event_kind(old: Row | None, new: Row) -> EventKind | None:
    """The event a visible change from `old` (None: not visible before) to `new` makes."""
    before = old.state if old is not None else None
    after = new.state
    if after in LIVE and before not in LIVE:
        return EventKind.JOINED
    if before == State.ALIVE and after == State.SUSPECT:
        return EventKind.SUSPECT
    if before == State.SUSPECT and after == State.ALIVE:
        return EventKind.ALIVE
    if before in LIVE and after == State.DEAD:
        return EventKind.FAILED
    if after == State.LEFT and before is not None and before != State.LEFT:
        return EventKind.LEFT
    if after in LIVE and old is not None and old.identity is not None \
            and new.identity is not None and _described(old) != _described(new):
        return EventKind.UPDATED
    return None


def _described(row: Row) -> tuple:
    ident = row.identity
    assert ident is not None
    return (ident.name, ident.address, ident.resources)
