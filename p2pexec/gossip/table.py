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

from collections.abc import Iterator
from dataclasses import dataclass

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


class MemberTable:
    """Rows keyed by node id; `apply` is the only way they change (plus `remove` for reaping)."""

    def __init__(self) -> None:
        self._rows: dict[NodeId, Row] = {}

    def apply(self, update: MemberUpdate) -> tuple[Row | None, Row]:
        """Merge one update; returns (row before, row after) so callers can see what changed."""
        old = self._rows.get(update.node)
        new = merge(old, update)
        if new != old:
            self._rows[update.node] = new
        return old, new

    def get(self, node: NodeId) -> Row | None:
        return self._rows.get(node)

    def adopt(self, row: Row) -> None:
        """Take `row` as it is, over anything known: for starting from a table another
        node converged to (`Membership.adopt`), never for news from the network."""
        self._rows[row.node] = row

    def remove(self, node: NodeId) -> None:
        self._rows.pop(node, None)

    def rows(self) -> dict[NodeId, Row]:
        """A copy of every row (including those without identity)."""
        return dict(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows.values())
