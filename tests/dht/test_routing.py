"""The routing table: k-buckets by XOR distance, replacement caches and the LRU ping.

A Hypothesis state machine drives a small table (k = 3) with ids chosen to crowd a few
buckets (they share long prefixes with our own id), and compares it after every step
with a plain model of the Kademlia rules and with brute-force XOR sorting.
"""

import hashlib
import random
from collections import OrderedDict

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pexec.dht.messages import Contact
from p2pexec.dht.routing import BUCKETS, RoutingTable, distance
from p2pexec.ids import NodeId

K = 3
OWN = NodeId(hashlib.sha256(b"own node").digest())
OWN_INT = int.from_bytes(OWN.raw, "big")


def node_at(offset: int) -> NodeId:
    """The node at XOR distance `offset` from OWN (its bucket is offset.bit_length() - 1)."""
    return NodeId((OWN_INT ^ offset).to_bytes(32, "big"))


def bucket_index(node: NodeId) -> int:
    return distance(node.raw, OWN.raw).bit_length() - 1


def contact(node: NodeId, port: int = 7000) -> Contact:
    return Contact(node, ("10.0.0.1", port))


_rng = random.Random(7)
POOL = (
    # buckets 0..5 (1, 2, 4, 8, 16 and 23 possible ids): k = 3 overflows most of them
    [node_at(offset) for offset in range(1, 41)]
    # the two far buckets, where random ids land
    + [node_at((1 << 255) | _rng.getrandbits(255)) for _ in range(8)]
    + [node_at((1 << 254) | _rng.getrandbits(254)) for _ in range(6)]
    + [OWN]
)
pool_ids = st.sampled_from(POOL)
node_ids = st.one_of(pool_ids, st.binary(min_size=32, max_size=32).map(NodeId))
targets = st.one_of(st.sampled_from(POOL).map(lambda n: n.raw),
                    st.binary(min_size=32, max_size=32))


class ModelBucket:
    def __init__(self) -> None:
        self.live: OrderedDict[NodeId, Contact] = OrderedDict()  # least recently seen first
        self.replacements: OrderedDict[NodeId, Contact] = OrderedDict()  # most recent last
        self.pinging: NodeId | None = None


class RoutingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = RoutingTable(OWN, K)
        self.model: dict[int, ModelBucket] = {}
        self.now = 0.0

    def bucket(self, node: NodeId) -> ModelBucket:
        return self.model.setdefault(bucket_index(node), ModelBucket())

    def live_contacts(self) -> list[Contact]:
        return [c for b in self.model.values() for c in b.live.values()]

    def pinged(self) -> list[NodeId]:
        return sorted(b.pinging for b in self.model.values() if b.pinging is not None)

    @rule(node=node_ids, port=st.sampled_from([7000, 7001]), dt=st.floats(0, 5))
    def seen(self, node, port, dt):
        self._seen(node, port, dt)

    @rule(nodes=st.lists(pool_ids, min_size=1, max_size=8),
          port=st.sampled_from([7000, 7001]))
    def seen_several(self, nodes, port):
        """Gossip reports a batch of members: fills buckets, so newcomers have to wait."""
        for node in nodes:
            self._seen(node, port, 0.1)

    def _seen(self, node, port, dt):
        self.now += dt
        new = contact(node, port)
        got = self.table.seen(new, self.now)
        if node == OWN:
            assert got is None
            return
        b = self.bucket(node)
        if node in b.live:
            assert got is None
            b.live[node] = new
            b.live.move_to_end(node)
            if b.pinging == node:
                b.pinging = None  # the pinged contact spoke: that answers the ping
        elif len(b.live) < K:
            assert got is None
            b.live[node] = new
            b.replacements.pop(node, None)
        else:
            b.replacements[node] = new
            b.replacements.move_to_end(node)
            while len(b.replacements) > K:
                b.replacements.popitem(last=False)
            if b.pinging is None:
                # a full bucket asks for its least recently seen contact to be pinged ...
                lru = next(iter(b.live.values()))
                assert got == lru
                b.pinging = lru.node
            else:
                # ... once: while that ping is out, newcomers only wait
                assert got is None

    def _answer(self, node):
        self.table.ping_answered(node)
        if node == OWN:
            return
        b = self.bucket(node)
        if b.pinging == node:
            b.pinging = None
        if node in b.live:
            b.live.move_to_end(node)

    def _fail(self, node):
        got = self.table.failed(node)
        if node == OWN:
            assert got is None
            return
        b = self.bucket(node)
        if b.pinging == node:
            b.pinging = None
        b.replacements.pop(node, None)
        if b.live.pop(node, None) is None or not b.replacements:
            assert got is None
            return
        # the most recently seen replacement takes the freed place, as most recently seen
        _, promoted = b.replacements.popitem(last=True)
        assert got == promoted
        b.live[promoted.node] = promoted

    @rule(node=node_ids)
    def ping_answered(self, node):
        self._answer(node)

    @precondition(lambda self: self.pinged())
    @rule(pick=st.integers(0, 100))
    def pinged_contact_answers(self, pick):
        pinged = self.pinged()
        self._answer(pinged[pick % len(pinged)])

    @rule(node=node_ids)
    def failed(self, node):
        self._fail(node)

    @precondition(lambda self: self.pinged())
    @rule(pick=st.integers(0, 100))
    def pinged_contact_fails(self, pick):
        pinged = self.pinged()
        self._fail(pinged[pick % len(pinged)])

    @precondition(lambda self: any(b.replacements for b in self.model.values()))
    @rule(pick=st.integers(0, 1000))
    def waiting_replacement_fails(self, pick):
        waiting = sorted(n for b in self.model.values() for n in b.replacements)
        self._fail(waiting[pick % len(waiting)])

    @precondition(lambda self: self.live_contacts())
    @rule(pick=st.integers(0, 1000))
    def live_contact_fails(self, pick):
        live = sorted(c.node for c in self.live_contacts())
        self._fail(live[pick % len(live)])

    @rule(point=targets, n=st.integers(0, 12), exclude=st.none() | node_ids)
    def closest(self, point, n, exclude):
        key = int.from_bytes(point, "big")
        everyone = [c for c in self.live_contacts() if c.node != exclude]
        expected = sorted(everyone, key=lambda c: int.from_bytes(c.node.raw, "big") ^ key)
        assert self.table.closest(point, n, exclude=exclude) == expected[:n]

    @invariant()
    def matches_the_model(self):
        self.table.validate()
        for index, bucket in enumerate(self.table.buckets):
            assert len(bucket.live) <= K
            m = self.model.get(index, ModelBucket())
            assert list(bucket.live.items()) == list(m.live.items())
            assert list(bucket.replacements.items()) == list(m.replacements.items())
            assert bucket.pinging == m.pinging
            # newcomers wait only while the bucket is full
            assert not bucket.replacements or len(bucket.live) == K
        live = self.live_contacts()
        assert len(self.table) == len(live)
        assert OWN not in self.table and self.table.get(OWN) is None
        assert all(c.node != OWN for c in self.table.contacts())
        assert sorted(self.table.contacts(), key=lambda c: c.node) == sorted(
            live, key=lambda c: c.node)
        for c in live:
            assert c.node in self.table and self.table.get(c.node) == c
        for b in self.model.values():
            for node in b.replacements:
                assert node not in self.table

    @invariant()
    def closest_to_own_id_and_to_far_target(self):
        for target in (OWN.raw, bytes(32), b"\xff" * 32):
            key = int.from_bytes(target, "big")
            expected = sorted(self.live_contacts(),
                              key=lambda c: int.from_bytes(c.node.raw, "big") ^ key)
            assert self.table.closest(target, K) == expected[:K]
            assert self.table.closest(target, 1000) == expected


RoutingMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=60, deadline=None)
test_routing_table_state_machine = RoutingMachine.TestCase


def test_bucket_index_is_the_highest_differing_bit():
    table = RoutingTable(OWN, K)
    for offset, index in [(1, 0), (2, 1), (3, 1), (4, 2), (7, 2), (1 << 255, 255),
                          ((1 << 255) | 1, 255), (1 << 100, 100)]:
        node = node_at(offset)
        table.seen(contact(node), 0.0)
        assert node in table.buckets[index].live, (offset, index)
    assert len(table) == 8
    table.validate()


def test_full_bucket_pings_its_oldest_contact_once_and_keeps_it_when_it_answers():
    table = RoutingTable(OWN, 2)
    a, b, c, d = (node_at(off) for off in (4, 5, 6, 7))  # all in bucket 2
    assert table.seen(contact(a), 0.0) is None
    assert table.seen(contact(b), 1.0) is None
    assert table.seen(contact(c), 2.0) == contact(a)  # full: ping a, c waits
    assert table.seen(contact(d), 3.0) is None  # a ping is out already
    assert [x.node for x in table.contacts()] == [a, b]
    assert list(table.buckets[2].replacements) == [c, d]
    table.ping_answered(a)
    assert [x.node for x in table.contacts()] == [b, a]  # a stays, most recently seen
    assert c not in table and d not in table
    # the next newcomer asks for the new least recently seen: b
    e = node_at(1)  # bucket 0, not full, no ping
    assert table.seen(contact(e), 4.0) is None
    assert table.seen(contact(c), 5.0) == contact(b)
    table.validate()


def test_failed_ping_promotes_the_most_recent_replacement():
    table = RoutingTable(OWN, 2)
    a, b, c, d = (node_at(off) for off in (4, 5, 6, 7))
    table.seen(contact(a), 0.0)
    table.seen(contact(b), 0.0)
    assert table.seen(contact(c), 0.0) == contact(a)
    table.seen(contact(d), 0.0)
    table.seen(contact(c, 7001), 0.0)  # c seen again, at a new address: most recent now
    assert table.failed(a) == contact(c, 7001)
    assert [x.node for x in table.contacts()] == [b, c]
    assert list(table.buckets[2].replacements) == [d]
    assert table.buckets[2].pinging is None
    # no replacement left after d: a failed contact simply goes
    assert table.failed(b) == contact(d)
    assert table.failed(c) is None
    assert [x.node for x in table.contacts()] == [d]
    table.validate()


def test_own_id_is_never_stored():
    table = RoutingTable(OWN, K)
    assert table.seen(contact(OWN), 0.0) is None
    assert len(table) == 0 and OWN not in table
    assert table.failed(OWN) is None
    table.ping_answered(OWN)
    table.validate()


def test_to_refresh_names_an_id_in_each_stale_non_empty_bucket():
    table = RoutingTable(OWN, K, now=0.0)
    for offset in (1, 2, 9, 1 << 200, 1 << 255):
        table.seen(contact(node_at(offset)), 0.0)
    table.used(node_at(10).raw, 50.0)  # bucket 3 was used by a lookup at t=50
    got = table.to_refresh(100.0, 60.0, random.Random(3))
    assert sorted(bucket_index(NodeId(t)) for t in got) == [0, 1, 200, 255]
    assert table.to_refresh(100.0, 60.0, random.Random(3)) == []  # marked used now
    got = table.to_refresh(110.0, 60.0, random.Random(3))
    assert [bucket_index(NodeId(t)) for t in got] == [3]
    assert len(table.buckets) == BUCKETS


def test_buckets_read_as_the_list_of_all_256():
    """Buckets are made when first touched; `buckets` still reads like a list of 256."""
    table = RoutingTable(OWN, K, now=5.0)
    assert len(table.buckets) == BUCKETS and len(list(table.buckets)) == BUCKETS
    assert table.buckets[-1] is table.buckets[BUCKETS - 1]
    assert table.buckets[3] is table.buckets[3] is table.bucket_of(node_at(9))
    assert all(b.used == 5.0 and not b.live and b.pinging is None for b in table.buckets)
    assert len(table.buckets[250:]) == 6
    with pytest.raises(IndexError):
        table.buckets[BUCKETS]
    table.seen(contact(node_at(9)), 6.0)
    assert list(table.buckets[3].live) == [node_at(9)]
    table.validate()
