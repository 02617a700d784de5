"""The set of live members, with O(1) random picks, and a lazily shuffled probe lap.

A gossip round, a push-pull and an indirect probe each pick a few random members among
possibly thousands; building a list of all of them for every pick made each of those
O(n), and a 1,000-node cluster spent most of its time there. Members sit in slots: add,
remove, membership and random picks are O(1) (picks draw slots and skip empty ones).

The slots may start from a shared `Snapshot` of a converged cluster: a simulation of
10,000 nodes then holds one copy of the member list, not 10,000, and each node keeps
only what changed since (removed members, members added after).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from p2pexec.ids import NodeId


@dataclass(frozen=True)
class Snapshot:
    """Members shared by many sets (never changed once built)."""

    members: tuple[NodeId, ...]
    index: dict[NodeId, int]

    @classmethod
    def of(cls, members: Sequence[NodeId]) -> Snapshot:
        members = tuple(members)
        return cls(members, {node: i for i, node in enumerate(members)})


_EMPTY = Snapshot((), {})


class LiveSet:
    """Distinct node ids in slots: the shared snapshot's, then this set's own."""

    __slots__ = ("_base", "_gone", "_holes", "_index", "_items")

    def __init__(self, base: Snapshot = _EMPTY) -> None:
        self._base = base
        self._gone: set[NodeId] = set()
        """Snapshot members no longer in the set."""
        self._items: list[NodeId | None] = []
        """Members added here; None where one was removed (until `compact`)."""
        self._index: dict[NodeId, int] = {}
        self._holes = 0

    def __len__(self) -> int:
        return len(self._base.members) - len(self._gone) + len(self._index)

    def __contains__(self, node: object) -> bool:
        return node in self._index or (node in self._base.index and node not in self._gone)

    def __iter__(self) -> Iterator[NodeId]:
        gone = self._gone
        for node in self._base.members:
            if node not in gone:
                yield node
        for item in self._items:
            if item is not None:
                yield item

    def add(self, node: NodeId) -> None:
        if node in self._base.index:
            self._gone.discard(node)
        elif node not in self._index:
            self._index[node] = len(self._items)
            self._items.append(node)

    def discard(self, node: NodeId) -> None:
        i = self._index.pop(node, None)
        if i is not None:
            self._items[i] = None
            self._holes += 1
        elif node in self._base.index:
            self._gone.add(node)
            if len(self._gone) > len(self._base.members) // 2:
                self._own_everything()

    # ---- slots --------------------------------------------------------------------------

    @property
    def slots(self) -> int:
        """Slots in use, members or empty: `slot(i)` takes 0 <= i < slots."""
        return len(self._base.members) + len(self._items)

    def slot(self, i: int) -> NodeId | None:
        """The member in slot i (None for an empty one). Slots keep their member until
        `compact`, so a walk over them (a probe lap) sees each member once."""
        base = self._base.members
        if i < len(base):
            node = base[i]
            return None if node in self._gone else node
        i -= len(base)
        return self._items[i] if i < len(self._items) else None

    def compact(self) -> None:
        """Drop empty slots (moves members to other slots: call it between laps)."""
        if self._holes:
            self._items = [item for item in self._items if item is not None]
            self._index = {node: i for i, node in enumerate(self._items)}  # type: ignore[misc]
            self._holes = 0

    def _own_everything(self) -> None:
        """Most of the snapshot is gone: copy what is left and stop sharing it."""
        kept = [node for node in self._base.members if node not in self._gone]
        self._base, self._gone = _EMPTY, set()
        items = kept + [item for item in self._items if item is not None]
        self._items = list(items)
        self._index = {node: i for i, node in enumerate(items)}
        self._holes = 0

    # ---- random picks ------------------------------------------------------------------

    def choice(self, rng: random.Random) -> NodeId:
        """One member, uniformly (the set must not be empty)."""
        slots = self.slots
        while True:
            node = self.slot(rng.randrange(slots))
            if node is not None:
                return node

    def sample(self, rng: random.Random, k: int,
               accept: Callable[[NodeId], bool] = lambda node: True) -> list[NodeId]:
        """Up to `k` distinct members for which `accept` holds, uniformly: random slots
        first (4k of them), then, if too few passed, a scan of all members."""
        slots = self.slots
        chosen: list[NodeId] = []
        for i in rng.sample(range(slots), min(slots, 4 * k)):
            node = self.slot(i)
            if node is not None and accept(node):
                chosen.append(node)
                if len(chosen) == k:
                    return chosen
        if slots <= 4 * k:
            return chosen  # every slot was tried
        taken = set(chosen)
        rest = [node for node in self if node not in taken and accept(node)]
        return chosen + rng.sample(rest, min(k - len(chosen), len(rest)))


class Lap:
    """A uniformly shuffled walk over slots 0..n-1, drawn one slot at a time (a lazy
    Fisher-Yates: memory grows with the draws, not with n). SWIM's round-robin probing
    walks the live members in a fresh random order each lap."""

    __slots__ = ("_left", "_moved", "_rng")

    def __init__(self, n: int, rng: random.Random) -> None:
        self._left = n
        self._moved: dict[int, int] = {}
        self._rng = rng

    def __bool__(self) -> bool:
        return self._left > 0

    def next(self) -> int:
        """The next slot (the lap must not be over)."""
        j = self._rng.randrange(self._left)
        self._left -= 1
        last = self._left
        value = self._moved.pop(j, j)
        if j != last:
            self._moved[j] = self._moved.pop(last, last)
        return value
