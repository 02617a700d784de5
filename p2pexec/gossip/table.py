"""The member table and its merge rules: pure, small, and order-independent.

Every field of a row is the maximum of what was heard, each under a total order, so any
interleaving (and any duplication) of the same updates yields the same table:

- status: (incarnation, state) with ALIVE < SUSPECT < DEAD < LEFT at one incarnation. A
  suspicion or death overrides "alive" at its own incarnation; only the node itself can
  refute it, by announcing "alive" at a higher incarnation. A graceful leave beats a death
  at the same incarnation, so a node that left is never turned into a failure.
- identity (name, address, resources): from the `Alive` with the highest incarnation
  (ties broken by the values themselves, so even conflicting claims converge).
- load: from the `LoadUpdate` with the highest version.

A row can exist without identity (only a suspicion or death was heard about it yet): it is
kept so the order of arrival does not matter, but it is not shown as a member, and the core
reaps it after reap_time if no `Alive` ever comes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from p2pexec.gossip.messages import Alive, Dead, Left, LoadUpdate, MemberUpdate, State, Suspect
from p2pexec.ids import NodeId
from p2pexec.net.transport import Address


@dataclass(frozen=True, slots=True)
class Identity:
    """What a node says about itself in `Alive`: how to name and reach it, what it offers."""

    incarnation: int
    name: str
    address: Address
    resources: tuple[tuple[str, float], ...]

    def key(self) -> tuple:
        """Total order used to pick one identity among conflicting ones."""
        return (self.incarnation, self.address, self.name, self.resources)


@dataclass(frozen=True, slots=True)
class Load:
    """A member's load sample: tasks waiting, tasks running, and the sample's version."""

    queue_length: int = 0
    running_tasks: int = 0
    version: int = 0

    def key(self) -> tuple[int, int, int]:
        return (self.version, self.queue_length, self.running_tasks)


@dataclass(frozen=True, slots=True)
class Row:
    """Everything merged about one node."""

    node: NodeId
    incarnation: int
    state: State
    identity: Identity | None = None
    load: Load = Load()

    @property
    def status(self) -> tuple[int, State]:
        return (self.incarnation, self.state)


def status_of(update: MemberUpdate) -> tuple[int, State] | None:
    """The (incarnation, state) an update claims, or None for load updates."""
    if isinstance(update, Alive):
        return (update.incarnation, State.ALIVE)
    if isinstance(update, Suspect):
        return (update.incarnation, State.SUSPECT)
    if isinstance(update, Dead):
        return (update.incarnation, State.DEAD)
    if isinstance(update, Left):
        return (update.incarnation, State.LEFT)
    return None


def merge(row: Row | None, update: MemberUpdate) -> Row:
    """The row after `update`: the join of what `row` knew and what `update` says."""
    if row is None:
        row = Row(node=update.node, incarnation=-1, state=State.ALIVE)
    status = status_of(update)
    if status is not None and status > row.status:
        row = Row(row.node, status[0], status[1], row.identity, row.load)
    if isinstance(update, Alive):
        ident = Identity(update.incarnation, update.name, update.address,
                         tuple(sorted(update.resources.items())))
        if row.identity is None or ident.key() > row.identity.key():
            row = Row(row.node, row.incarnation, row.state, ident, row.load)
    if isinstance(update, LoadUpdate):
        load = Load(update.queue_length, update.running_tasks, update.version)
        if load.key() > row.load.key():
            row = Row(row.node, row.incarnation, row.state, row.identity, load)
    return row


T = TypeVar("T")

_MADE: dict[tuple[int, Callable], tuple[Mapping, list, dict]] = {}
"""What `MemberTable.records` made of each shared base (few bases: one per simulation)."""


class MemberTable:
    """Rows keyed by node id; `apply` is the only way they change (plus `remove` for reaping).

    It may sit on a shared base (`share`): rows of a converged cluster that many tables
    read and none writes; this table then keeps only what differs from it."""

    def __init__(self) -> None:
        self._base: Mapping[NodeId, Row] = {}
        self._rows: dict[NodeId, Row] = {}
        self._gone: set[NodeId] = set()
        """Base rows removed here."""
        self._extra = 0
        """Rows here whose node is not in the base."""

    @property
    def shared(self) -> bool:
        """Whether this table reads a shared base (`share`)."""
        return bool(self._base)

    def share(self, base: Mapping[NodeId, Row]) -> None:
        """Read `base` under this table's rows (it must not have any beyond its own)."""
        self._base = base
        self._gone = set()
        self._extra = sum(1 for node in self._rows if node not in base)

    def apply(self, update: MemberUpdate) -> tuple[Row | None, Row]:
        """Merge one update; returns (row before, row after) so callers can see what changed."""
        old = self.get(update.node)
        new = merge(old, update)
        if new != old:
            self._put(new)
        return old, new

    def _put(self, row: Row) -> None:
        node = row.node
        if node in self._base:
            self._gone.discard(node)
        elif node not in self._rows:
            self._extra += 1
        self._rows[node] = row

    def get(self, node: NodeId) -> Row | None:
        row = self._rows.get(node)
        if row is None and node not in self._gone:
            return self._base.get(node)
        return row

    def remove(self, node: NodeId) -> None:
        if self._rows.pop(node, None) is not None and node not in self._base:
            self._extra -= 1
        if node in self._base:
            self._gone.add(node)

    def records(self, make: Callable[[Row], T]) -> tuple[T, ...]:
        """`make(row)` of every row with identity (a full-state exchange). On a shared
        base, the base's part is made once for all tables and copied, so a table of
        10,000 rows costs a copy plus what changed here, not 10,000 calls."""
        if not self._base:
            return tuple(make(row) for row in self._rows.values() if row.identity is not None)
        key = (id(self._base), make)
        cached = _MADE.get(key)
        if cached is None or cached[0] is not self._base:
            if len(_MADE) >= 16:
                _MADE.clear()
            made = [make(row) if row.identity is not None else None
                    for row in self._base.values()]
            cached = _MADE[key] = (self._base, made, {node: i for i, node in
                                                      enumerate(self._base)})
        _, base_made, position = cached
        out = list(base_made)
        for node in self._gone:
            out[position[node]] = None
        extra = []
        for node, row in self._rows.items():
            value = make(row) if row.identity is not None else None
            i = position.get(node)
            if i is not None:
                out[i] = value
            elif value is not None:
                extra.append(value)
        return tuple(filter(None, out)) + tuple(extra)  # made values are never falsy

    def rows(self) -> dict[NodeId, Row]:
        """A copy of every row (including those without identity)."""
        return {row.node: row for row in self}

    def __len__(self) -> int:
        return len(self._base) - len(self._gone) + self._extra

    def __iter__(self) -> Iterator[Row]:
        rows, gone = self._rows, self._gone
        for node, row in self._base.items():
            if node not in rows and node not in gone:
                yield row
        yield from rows.values()
