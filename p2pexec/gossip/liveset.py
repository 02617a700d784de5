"""The set of live members, with O(1) random picks.

A gossip round, a push-pull and an indirect probe each pick a few random members among
possibly thousands; building a list of all of them for every pick made each of those
O(n), and a 1,000-node cluster spent most of its time there. Members sit in a list with
their positions in a dict: add, remove (swap with the last), membership and indexing
are O(1), and picks draw indexes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from p2pexec.ids import NodeId


class LiveSet:
    """Distinct node ids; iteration order is arbitrary (it changes on removal)."""

    __slots__ = ("_index", "_items")

    def __init__(self) -> None:
        self._items: list[NodeId] = []
        self._index: dict[NodeId, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, node: object) -> bool:
        return node in self._index

    def __iter__(self) -> Iterator[NodeId]:
        return iter(self._items)

    def __getitem__(self, i: int) -> NodeId:
        return self._items[i]

    def add(self, node: NodeId) -> None:
        if node not in self._index:
            self._index[node] = len(self._items)
            self._items.append(node)

    def discard(self, node: NodeId) -> None:
        i = self._index.pop(node, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._index[last] = i

    def choice(self, rng: random.Random) -> NodeId:
        """One member, uniformly (the set must not be empty)."""
        return self._items[rng.randrange(len(self._items))]

    def sample(self, rng: random.Random, k: int,
               accept: Callable[[NodeId], bool]) -> list[NodeId]:
        """Up to `k` distinct members for which `accept` holds, uniformly: random
        picks first (4k of them), then, if too few passed, a scan of all members."""
        items = self._items
        n = len(items)
        chosen: list[NodeId] = []
        for i in rng.sample(range(n), min(n, 4 * k)):
            if accept(items[i]):
                chosen.append(items[i])
                if len(chosen) == k:
                    return chosen
        if n <= 4 * k:
            return chosen  # every member was tried
        taken = set(chosen)
        rest = [node for node in items if node not in taken and accept(node)]
        return chosen + rng.sample(rest, min(k - len(chosen), len(rest)))
