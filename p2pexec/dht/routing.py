"""Kademlia's routing table: 256 k-buckets by XOR distance, each with a replacement cache.

Sans-IO: the table never sends anything. When a newcomer finds its bucket full, `seen`
returns the bucket's least recently seen contact for the caller to ping: a contact that
answers stays (long-lived contacts are the likeliest to stay up, the paper's
observation), one that does not is replaced by the most recently seen newcomer.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from dataclasses import dataclass, field

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
    """Who we know, by XOR distance from `own` (see module docstring)."""

    def __init__(self, own: NodeId, k: int, now: float = 0.0) -> None:
        self.own = own
        self.k = k
        self._own_int = int.from_bytes(own.raw, "big")
        self.buckets = [Bucket(used=now) for _ in range(BUCKETS)]

    def _index(self, node_raw: bytes) -> int:
        return (int.from_bytes(node_raw, "big") ^ self._own_int).bit_length() - 1

    def bucket_of(self, node: NodeId) -> Bucket:
        return self.buckets[self._index(node.raw)]

    def seen(self, contact: Contact, now: float) -> Contact | None:
        """`contact` is alive (it spoke to us, or gossip says so). Returns the contact to
        ping when its bucket is full and no ping is out yet; the newcomer waits in the
        replacement cache."""
        node = contact.node
        if node == self.own:
            return None
        bucket = self.bucket_of(node)
        if node in bucket.live:
            bucket.live[node] = contact  # the address may have changed
            bucket.live.move_to_end(node)
            if bucket.pinging == node:
                bucket.pinging = None  # it spoke: that answers the ping
            return None
        if len(bucket.live) < self.k:
            bucket.live[node] = contact
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

    def ping_answered(self, node: NodeId) -> None:
        """The pinged contact is alive: it stays, as most recently seen."""
        bucket = self.bucket_of(node)
        if bucket.pinging == node:
            bucket.pinging = None
        if node in bucket.live:
            bucket.live.move_to_end(node)

    def failed(self, node: NodeId) -> Contact | None:
        """`node` did not answer (or gossip says it is gone): drop it and promote the most
        recently seen replacement, which is returned."""
        bucket = self.bucket_of(node)
        if bucket.pinging == node:
            bucket.pinging = None
        bucket.replacements.pop(node, None)
        if bucket.live.pop(node, None) is None or not bucket.replacements:
            return None
        _, promoted = bucket.replacements.popitem(last=True)
        bucket.live[promoted.node] = promoted
        return promoted

    def get(self, node: NodeId) -> Contact | None:
        if node == self.own:
            return None
        return self.bucket_of(node).live.get(node)

    def __contains__(self, node: object) -> bool:
        return isinstance(node, NodeId) and self.get(node) is not None

    def __len__(self) -> int:
        return sum(len(bucket.live) for bucket in self.buckets)

    def contacts(self) -> list[Contact]:
        return [contact for bucket in self.buckets for contact in bucket.live.values()]

    def closest(self, target: bytes, n: int, exclude: NodeId | None = None) -> list[Contact]:
        """The `n` live contacts closest to `target`, closest first."""
        key = int.from_bytes(target, "big")
        return heapq.nsmallest(
            n, (c for c in self.contacts() if c.node != exclude),
            key=lambda c: int.from_bytes(c.node.raw, "big") ^ key)

    def used(self, target: bytes, now: float) -> None:
        """A lookup for `target` ran: its bucket needs no refresh for a while."""
        if target != self.own.raw:
            self.buckets[self._index(target)].used = now

    def to_refresh(self, now: float, interval: float, rng: random.Random) -> list[bytes]:
        """A random id in the range of every non-empty bucket no lookup used for
        `interval` seconds (marked used now)."""
        targets = []
        for index, bucket in enumerate(self.buckets):
            if bucket.live and now - bucket.used >= interval:
                bucket.used = now
                offset = (1 << index) | rng.getrandbits(index) if index else 1
                targets.append((self._own_int ^ offset).to_bytes(KEY_SIZE, "big"))
        return targets

    def validate(self) -> None:
        """The table's invariants (tests call it after every step)."""
        seen: set[NodeId] = set()
        for index, bucket in enumerate(self.buckets):
            assert len(bucket.live) <= self.k, "a bucket holds at most k live contacts"
            assert len(bucket.replacements) <= self.k
            for node in [*bucket.live, *bucket.replacements]:
                assert node != self.own, "a node never stores itself"
                assert self._index(node.raw) == index, "every contact is in its own bucket"
            assert not set(bucket.live) & set(bucket.replacements)
            assert bucket.pinging is None or bucket.pinging in bucket.live
            assert not seen & set(bucket.live)
            seen |= set(bucket.live)
