"""One iterative Kademlia lookup as a sans-IO state machine.

The lookup keeps a shortlist ordered by XOR distance to its target. `want` hands out
up to alpha contacts to query among the k closest not yet asked; each answer adds the
contacts it names; the lookup ends when the k closest contacts that did not fail have
all answered, when a value lookup receives records, or at its deadline. Timeouts are
the owner's business (`Dht` calls `failed` for a query that timed out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from p2pexec.dht.messages import Contact, Record
from p2pexec.dht.routing import distance
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

    def add(self, contacts: list[Contact], hop: int) -> None:
        """Contacts learned `hop` rounds in (never ourselves, never twice)."""
        for contact in contacts:
            if contact.node != self.own and contact.node not in self.candidates:
                self.candidates[contact.node] = _Candidate(
                    contact, distance(contact.node.raw, self.target), hop)

    def _closest_alive(self) -> list[_Candidate]:
        alive = [c for c in self.candidates.values() if c.state is not _State.FAILED]
        alive.sort(key=lambda c: c.distance)
        return alive[:self.k]

    @property
    def in_flight(self) -> int:
        return sum(1 for c in self.candidates.values() if c.state is _State.ASKED)

    def want_queries(self) -> list[Contact]:
        """Contacts to ask now (marked asked): the closest new ones among the k closest,
        keeping at most alpha in flight."""
        if self.done:
            return []
        room = self.alpha - self.in_flight
        chosen = []
        for candidate in self._closest_alive():
            if room <= 0:
                break
            if candidate.state is _State.NEW:
                candidate.state = _State.ASKED
                chosen.append(candidate.contact)
                room -= 1
        return chosen

    def answered(self, node: NodeId, contacts: list[Contact], records: list[Record]) -> None:
        candidate = self.candidates.get(node)
        if candidate is None or candidate.state is not _State.ASKED:
            return
        candidate.state = _State.ANSWERED
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

    def expire(self) -> None:
        """The deadline passed: end with what has been learned."""
        if not self.done:  # once timed out, stays so (a second expire must not undo it)
            self.timed_out = True
        for candidate in self.candidates.values():
            if candidate.state is _State.ASKED:
                candidate.state = _State.FAILED

    @property
    def done(self) -> bool:
        if self.timed_out or (self.want is Want.VALUE and self.records):
            return True
        return all(c.state is _State.ANSWERED for c in self._closest_alive())

    def result(self) -> LookupResult:
        answered = [c for c in self._closest_alive() if c.state is _State.ANSWERED]
        states = [c.state for c in self.candidates.values()]
        return LookupResult(
            self.target, self.want, tuple(c.contact for c in answered),
            tuple(self.records[p] for p in sorted(self.records)), self.hops,
            sum(1 for s in states if s is not _State.NEW), states.count(_State.FAILED),
            self.timed_out)
