"""One iterative Kademlia lookup as a sans-IO state machine.

The lookup keeps a shortlist ordered by XOR distance to its target. `want` hands out
up to alpha contacts to query among the k closest not yet asked; each answer adds the
contacts it names; the lookup ends when the k closest contacts that did not fail have
all answered, when a value lookup receives records, or at its deadline. Timeouts are
the owner's business (`Dht` calls `failed` for a query that timed out).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from enum import Enum

from p2pexec.dht.messages import Contact, Record
from p2pexec.ids import NodeId


class Want(Enum):
    NODES = "nodes"
    VALUE = "value"


class _State(Enum):
    NEW = 0
    ASKED = 1
    ANSWERED = 2
    FAILED = 3


@dataclass(slots=True)
class _Candidate:
    contact: Contact
    distance: int
    hop: int
    """Lookup rounds before this contact could be asked (1 for those we knew)."""
    state: _State = _State.NEW


@dataclass(frozen=True, slots=True)
class LookupResult:
    target: bytes
    want: Want
    contacts: tuple[Contact, ...]
    """The k closest contacts that answered, closest first."""
    records: tuple[Record, ...]
    hops: int
    """Sequential rounds of queries the answer took (0: answered from our own store)."""
    queried: int
    failed: int
    timed_out: bool
    """The deadline ended the lookup before it converged."""


@dataclass
class Lookup:
    target: bytes
    want: Want
    own: NodeId
    k: int
    alpha: int
    deadline: float
    candidates: dict[NodeId, _Candidate] = field(default_factory=dict)
    records: dict[NodeId, Record] = field(default_factory=dict)
    hops: int = 0
    timed_out: bool = False
    _alive: list[_Candidate] = field(init=False, repr=False, compare=False)
    """The candidates that did not fail, closest first (the shortlist)."""
    _alive_distances: list[int] = field(init=False, repr=False, compare=False)
    """Their distances, in the same order (for bisect)."""
    _asked: int = field(init=False, repr=False, compare=False)
    """How many candidates are in the ASKED state (queries in flight)."""
    _converged: bool | None = field(init=False, repr=False, compare=False)
    """Cache: whether the k closest alive candidates all answered (None: unknown)."""

    def __post_init__(self) -> None:
        self._alive = sorted((c for c in self.candidates.values()
                              if c.state is not _State.FAILED), key=_by_distance)
        self._alive_distances = [c.distance for c in self._alive]
        self._asked = sum(1 for c in self.candidates.values() if c.state is _State.ASKED)
        self._converged = None

    def add(self, contacts: list[Contact], hop: int) -> None:
        """Contacts learned `hop` rounds in (never ourselves, never twice)."""
        candidates = self.candidates
        alive, distances = self._alive, self._alive_distances
        own = self.own.raw
        target = int.from_bytes(self.target, "big")
        for contact in contacts:
            node = contact.node
            if node.raw != own and node not in candidates:
                gap = int.from_bytes(node.raw, "big") ^ target  # routing.distance
                candidate = candidates[node] = _Candidate(contact, gap, hop)
                at = bisect_right(distances, gap)
                distances.insert(at, gap)
                alive.insert(at, candidate)
                if at < self.k:
                    self._converged = None

    def _closest_alive(self) -> list[_Candidate]:
        return self._alive[:self.k]

    @property
    def in_flight(self) -> int:
        return self._asked

    def want_queries(self) -> list[Contact]:
        """Contacts to ask now (marked asked): the closest new ones among the k closest,
        keeping at most alpha in flight."""
        if self.done:
            return []
        room = self.alpha - self._asked
        chosen: list[Contact] = []
        if room <= 0:
            return chosen
        alive = self._alive
        for at in range(min(self.k, len(alive))):
            candidate = alive[at]
            if candidate.state is _State.NEW:
                candidate.state = _State.ASKED
                chosen.append(candidate.contact)
                room -= 1
                if room == 0:
                    break
        self._asked += len(chosen)
        return chosen

    def answered(self, node: NodeId, contacts: list[Contact], records: list[Record]) -> None:
        candidate = self.candidates.get(node)
        if candidate is None or candidate.state is not _State.ASKED:
            return
        candidate.state = _State.ANSWERED
        self._asked -= 1
        self._converged = None
        self.hops = max(self.hops, candidate.hop)
        self.add(contacts[:self.k], candidate.hop + 1)
        if self.want is Want.VALUE:
            for record in records:
                if record.key == self.target:
                    self.records[record.publisher] = record

    def failed(self, node: NodeId) -> None:
        candidate = self.candidates.get(node)
        if candidate is not None and candidate.state is _State.ASKED:
            candidate.state = _State.FAILED
            self._asked -= 1
            self._converged = None
            at = bisect_left(self._alive_distances, candidate.distance)
            del self._alive[at], self._alive_distances[at]

    def expire(self) -> None:
        """The deadline passed: end with what has been learned."""
        if not self.done:  # once timed out, stays so (a second expire must not undo it)
            self.timed_out = True
        if self._asked:
            for candidate in self._alive:
                if candidate.state is _State.ASKED:
                    candidate.state = _State.FAILED
            self._alive = [c for c in self._alive if c.state is not _State.FAILED]
            self._alive_distances = [c.distance for c in self._alive]
            self._asked = 0
            self._converged = None

    @property
    def done(self) -> bool:
        if self.timed_out or (self.want is Want.VALUE and self.records):
            return True
        if self._converged is None:
            alive = self._alive
            for at in range(min(self.k, len(alive))):  # (no slice: this runs per delivery)
                if alive[at].state is not _State.ANSWERED:
                    self._converged = False
                    break
            else:
                self._converged = True
        return self._converged

    def result(self) -> LookupResult:
        answered = [c for c in self._closest_alive() if c.state is _State.ANSWERED]
        states = [c.state for c in self.candidates.values()]
        return LookupResult(
            self.target, self.want, tuple(c.contact for c in answered),
            tuple(self.records[p] for p in sorted(self.records)), self.hops,
            sum(1 for s in states if s is not _State.NEW), states.count(_State.FAILED),
            self.timed_out)


def _by_distance(candidate: _Candidate) -> int:
    return candidate.distance
