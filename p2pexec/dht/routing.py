"""Kademlia's routing table: 256 k-buckets by XOR distance, each with a replacement cache.

Sans-IO: the table never sends anything. When a newcomer finds its bucket full, `seen`
returns the bucket's least recently seen contact for the caller to ping: a contact that
answers stays (long-lived contacts are the likeliest to stay up, the paper's
observation), one that does not is replaced by the most recently seen newcomer.
"""

from __future__ import annotations

import random
from bisect import insort
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import overload

from p2pexec.dht.messages import KEY_SIZE, Contact
from p2pexec.ids import NodeId

BUCKETS = KEY_SIZE * 8


def distance(a: bytes, b: bytes) -> int:
    """XOR distance of two ids (or keys) as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


@dataclass(slots=True)
class Bucket:
    """Contacts whose distance from us has its highest set bit at this bucket's index."""

    live: OrderedDict[NodeId, Contact] = field(default_factory=OrderedDict)
    """Least recently seen first."""
    replacements: OrderedDict[NodeId, Contact] = field(default_factory=OrderedDict)
    """Newcomers that found the bucket full, most recent last; at most k."""
    pinging: NodeId | None = None
    """The least recently seen contact we asked to prove it is alive, if any."""
    used: float = 0.0
    """When a lookup last went through this bucket's range (for refresh)."""


class RoutingTable:
    """Who we know, by XOR distance from `own` (see module docstring).

    Buckets are created when first touched (a node's contacts fall in the farthest few,
    about log2 of the cluster size of the 256): `buckets` still reads as the list of all
    256, by index. Beside them, every live contact is indexed by its id as an integer,
    for `get` and `closest`."""

    def __init__(self, own: NodeId, k: int, now: float = 0.0) -> None:
        self.own = own
        self.k = k
        self._own_int = int.from_bytes(own.raw, "big")
        self._created = now
        self._buckets: dict[int, Bucket] = {}
        self._indices: list[int] = []
        """The indices of the buckets created so far, ascending."""
        self._live: dict[int, Contact] = {}
        """Every live contact (of all buckets), by its id as an integer."""

    @property
    def buckets(self) -> Sequence[Bucket]:
        """All 256 buckets, by index (reading one creates it)."""
        return _Buckets(self)

    def _bucket(self, index: int) -> Bucket:
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = Bucket(used=self._created)
            insort(self._indices, index)
        return bucket

    def _index(self, node_raw: bytes) -> int:
        return (int.from_bytes(node_raw, "big") ^ self._own_int).bit_length() - 1

    def bucket_of(self, node: NodeId) -> Bucket:
        return self._bucket(self._index(node.raw) % BUCKETS)

    def seen(self, contact: Contact, now: float) -> Contact | None:
        """`contact` is alive (it spoke to us, or gossip says so). Returns the contact to
        ping when its bucket is full and no ping is out yet; the newcomer waits in the
        replacement cache."""
        node = contact.node
        raw = node.raw
        if raw == self.own.raw:
            return None
        as_int = int.from_bytes(raw, "big")
        bucket = self._bucket((as_int ^ self._own_int).bit_length() - 1)
        if node in bucket.live:
            bucket.live[node] = self._live[as_int] = contact  # the address may have changed
            bucket.live.move_to_end(node)
            if bucket.pinging == node:
                bucket.pinging = None  # it spoke: that answers the ping
            return None
        if len(bucket.live) < self.k:
            bucket.live[node] = self._live[as_int] = contact
            bucket.replacements.pop(node, None)
            return None
        bucket.replacements[node] = contact
        bucket.replacements.move_to_end(node)
        while len(bucket.replacements) > self.k:
            bucket.replacements.popitem(last=False)
        if bucket.pinging is not None:
            return None
        oldest = next(iter(bucket.live.values()))
        bucket.pinging = oldest.node
        return oldest

    def _existing_index(self, node: NodeId) -> int | None:
        """The index of `node`'s bucket if it was created (None for our own id)."""
        index = self._index(node.raw)
        return index if index in self._buckets else None  # (our own id: -1)

    def ping_answered(self, node: NodeId) -> None:
        """The pinged contact is alive: it stays, as most recently seen."""
        index = self._existing_index(node)
        if index is None:
            return
        bucket = self._buckets[index]
        if bucket.pinging == node:
            bucket.pinging = None
        if node in bucket.live:
            bucket.live.move_to_end(node)

    def failed(self, node: NodeId) -> Contact | None:
        """`node` did not answer (or gossip says it is gone): drop it and promote the most
        recently seen replacement, which is returned."""
        index = self._existing_index(node)
        if index is None:
            return None
        bucket = self._buckets[index]
        if bucket.pinging == node:
            bucket.pinging = None
        bucket.replacements.pop(node, None)
        if bucket.live.pop(node, None) is None:
            return None
        del self._live[int.from_bytes(node.raw, "big")]
        if not bucket.replacements:
            return None
        _, promoted = bucket.replacements.popitem(last=True)
        bucket.live[promoted.node] = self._live[int.from_bytes(promoted.node.raw, "big")] = (
            promoted)
        return promoted

    def get(self, node: NodeId) -> Contact | None:
        return self._live.get(int.from_bytes(node.raw, "big"))  # (never our own id)

    def __contains__(self, node: object) -> bool:
        return isinstance(node, NodeId) and self.get(node) is not None

    def __len__(self) -> int:
        return len(self._live)

    def contacts(self) -> list[Contact]:
        buckets = self._buckets
        return [contact for index in self._indices
                for contact in buckets[index].live.values()]

    def closest(self, target: bytes, n: int, exclude: NodeId | None = None) -> list[Contact]:
        """The `n` live contacts closest to `target`, closest first."""
        if n <= 0:
            return []
        live = self._live
        key = int.from_bytes(target, "big")
        # All of them, by distance: ids as integers, so the sort's key is int.__xor__ (in
        # C), cheaper than walking the buckets for the few dozen to hundreds a table holds.
        ranked = sorted(live, key=key.__xor__)
        if exclude is not None:
            skip = int.from_bytes(exclude.raw, "big")
            if skip in live:
                ranked.remove(skip)
        return [live[as_int] for as_int in ranked[:n]]

    def used(self, target: bytes, now: float) -> None:
        """A lookup for `target` ran: its bucket needs no refresh for a while."""
        if target != self.own.raw:
            self._bucket(self._index(target)).used = now

    def to_refresh(self, now: float, interval: float, rng: random.Random) -> list[bytes]:
        """A random id in the range of every non-empty bucket no lookup used for
        `interval` seconds (marked used now)."""
        targets = []
        for index in self._indices:  # ascending, like the list of all 256 (empty: skipped)
            bucket = self._buckets[index]
            if bucket.live and now - bucket.used >= interval:
                bucket.used = now
                offset = (1 << index) | rng.getrandbits(index) if index else 1
                targets.append((self._own_int ^ offset).to_bytes(KEY_SIZE, "big"))
        return targets

    def validate(self) -> None:
        """The table's invariants (tests call it after every step)."""
        seen: set[NodeId] = set()
        assert self._indices == sorted(self._buckets)
        for index in self._indices:
            bucket = self._buckets[index]
            assert 0 <= index < BUCKETS
            assert len(bucket.live) <= self.k, "a bucket holds at most k live contacts"
            assert len(bucket.replacements) <= self.k
            for node in [*bucket.live, *bucket.replacements]:
                assert node != self.own, "a node never stores itself"
                assert self._index(node.raw) == index, "every contact is in its own bucket"
            assert not set(bucket.live) & set(bucket.replacements)
            assert bucket.pinging is None or bucket.pinging in bucket.live
            assert not seen & set(bucket.live)
            seen |= set(bucket.live)
        assert self._live == {int.from_bytes(c.node.raw, "big"): c
                              for c in self.contacts()}, "the index matches the buckets"


class _Buckets(Sequence[Bucket]):
    """`RoutingTable.buckets`: the 256 buckets by index, created as they are read."""

    __slots__ = ("_table",)

    def __init__(self, table: RoutingTable) -> None:
        self._table = table

    def __len__(self) -> int:
        return BUCKETS

    @overload
    def __getitem__(self, index: int) -> Bucket: ...

    @overload
    def __getitem__(self, index: slice) -> list[Bucket]: ...

    def __getitem__(self, index: int | slice) -> Bucket | list[Bucket]:
        if isinstance(index, slice):
            return [self[i] for i in range(BUCKETS)[index]]
        if not -BUCKETS <= index < BUCKETS:
            raise IndexError("bucket index out of range")
        return self._table._bucket(index % BUCKETS)
