"""The iterative lookup over a synthetic network, driven by a plain loop.

The network is 200 random ids. Each node knows the others through a k-bucket table of
its own (filled from the global list in a random order, so far buckets hold only k of
their nodes) and answers a query with the k contacts closest to the target that it
knows. The loop plays the DHT core: it sends what `want_queries` hands out and delivers
the answers (or failures) in a random order, checking the lookup's promises on the way.
"""

import functools
import hashlib
import random

from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pexec.dht.lookup import Lookup, Want
from p2pexec.dht.messages import Contact
from p2pexec.dht.records import RecordSigner
from p2pexec.dht.routing import RoutingTable, distance
from p2pexec.ids import NodeId

K = 8
ALPHA = 3
N = 200
_rng = random.Random(2024)
NODES = [NodeId(_rng.randbytes(32)) for _ in range(N)]
OWN = NODES[0]
"""The node that runs the lookups: it is in the network, so others name it in answers."""
CONTACTS = {node: Contact(node, ("10.1.0.1", 7000 + i)) for i, node in enumerate(NODES)}
SIGNER = RecordSigner(ed25519.Ed25519PrivateKey.generate())
OTHER_SIGNER = RecordSigner(ed25519.Ed25519PrivateKey.generate())


def _tables() -> dict[NodeId, RoutingTable]:
    rng = random.Random(5)
    tables = {}
    for node in NODES:
        table = RoutingTable(node, K)
        order = list(NODES)
        rng.shuffle(order)
        for other in order:
            table.seen(CONTACTS[other], 0.0)  # a full bucket keeps its first k
        tables[node] = table
    return tables


TABLES = _tables()


@functools.cache
def answers(target: bytes) -> dict[NodeId, list[Contact]]:
    """What each node answers to a FIND for `target`."""
    return {node: table.closest(target, K) for node, table in TABLES.items()}


def true_closest(target: bytes, among=NODES) -> list[Contact]:
    others = [n for n in among if n != OWN]
    return [CONTACTS[n] for n in sorted(others, key=lambda n: distance(n.raw, target))][:K]


def new_lookup(target: bytes, want=Want.NODES, start=None) -> Lookup:
    lookup = Lookup(target, want, OWN, K, ALPHA, deadline=5.0)
    lookup.add(start if start is not None else TABLES[OWN].closest(target, K), 1)
    return lookup


def drive(lookup: Lookup, rng: random.Random, fail=frozenset(), records=None,
          max_steps=None):
    """Run `lookup` to its end (or for `max_steps` deliveries); the nodes asked in order.
    `records` maps a node to the records it returns with its contacts."""
    asked: list[NodeId] = []
    pending: list[Contact] = []
    steps = 0
    while not lookup.done:
        new = lookup.want_queries()
        for c in new:
            assert c.node != OWN, "never queries itself"
            assert c.node not in asked, f"asked {c.node} twice"
            asked.append(c.node)
        pending += new
        assert lookup.in_flight == len(pending) <= ALPHA
        assert pending, "not done, yet nothing to wait for"
        if max_steps is not None and steps == max_steps:
            return asked, pending
        steps += 1
        c = pending.pop(rng.randrange(len(pending)))
        if c.node in fail:
            lookup.failed(c.node)
        else:
            found = (records or {}).get(c.node, [])
            lookup.answered(c.node, answers(lookup.target)[c.node], found)
    assert lookup.want_queries() == []
    return asked, pending


def random_target(seed: int) -> bytes:
    return hashlib.sha256(b"target %d" % seed).digest()


def test_network_is_not_trivial():
    """Our own table misses most of the k closest of a random target: it takes hops."""
    target = random_target(0)
    assert TABLES[OWN].closest(target, K) != true_closest(target)
    assert len(TABLES[OWN]) < N - 1


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.randoms(use_true_random=False))
def test_converges_to_exactly_the_true_k_closest_when_everyone_answers(seed, rng):
    target = random_target(seed)
    lookup = new_lookup(target)
    asked, _ = drive(lookup, rng)
    result = lookup.result()
    assert list(result.contacts) == true_closest(target)
    assert result.target == target and result.records == ()
    assert not result.timed_out and result.failed == 0
    assert result.hops >= 1 and result.hops <= 6
    assert result.queried == len(asked) < N // 2  # a lookup asks a few nodes, not all


def test_lookup_for_a_node_id_finds_that_node_first():
    target = NODES[57].raw
    lookup = new_lookup(target)
    drive(lookup, random.Random(1))
    result = lookup.result()
    assert result.contacts[0] == CONTACTS[NODES[57]]
    assert list(result.contacts) == true_closest(target)


def test_lookup_of_own_id_never_returns_ourselves():
    lookup = new_lookup(OWN.raw)
    drive(lookup, random.Random(2))
    assert list(lookup.result().contacts) == true_closest(OWN.raw)
    assert OWN not in lookup.candidates


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.randoms(use_true_random=False),
       st.sets(st.integers(1, N - 1), max_size=60))
def test_failed_nodes_are_left_out_of_the_result(seed, rng, failing):
    target = random_target(seed)
    fail = frozenset(NODES[i] for i in failing)
    lookup = new_lookup(target)
    asked, pending = drive(lookup, rng, fail=fail)
    result = lookup.result()
    got = [c.node for c in result.contacts]
    assert not set(got) & fail
    assert got == sorted(got, key=lambda n: distance(n.raw, target))
    assert set(got) <= set(asked)
    delivered = set(asked) - {c.node for c in pending}
    assert result.failed == len(fail & delivered)
    # the k closest of everyone it heard of that did not fail, each of them answered
    heard = [n for n in lookup.candidates if n not in fail]
    assert list(result.contacts) == true_closest(target, among=heard)
    if not fail & set(asked):
        assert list(result.contacts) == true_closest(target)


def test_all_start_contacts_failing_ends_empty():
    target = random_target(3)
    start = TABLES[OWN].closest(target, K)
    lookup = new_lookup(target, start=start)
    asked, _ = drive(lookup, random.Random(3), fail=frozenset(c.node for c in start))
    assert sorted(asked) == sorted(c.node for c in start)
    result = lookup.result()
    assert result.contacts == () and result.failed == K and result.queried == K
    assert not result.timed_out


def test_lookup_with_no_contacts_is_done_at_once():
    lookup = new_lookup(random_target(4), start=[])
    assert lookup.done and lookup.want_queries() == []
    assert lookup.result().contacts == ()


def test_first_round_asks_the_alpha_closest_known():
    target = random_target(5)
    start = TABLES[OWN].closest(target, K)
    lookup = new_lookup(target, start=list(reversed(start)))
    assert lookup.want_queries() == start[:ALPHA]
    assert lookup.want_queries() == []  # alpha in flight already
    lookup.failed(start[1].node)
    assert lookup.want_queries() == [start[ALPHA]]
    assert lookup.in_flight == ALPHA


def test_answers_from_nodes_not_asked_are_ignored():
    target = random_target(6)
    lookup = new_lookup(target)
    first = lookup.want_queries()
    stranger = next(n for n in NODES if n not in lookup.candidates and n != OWN)
    lookup.answered(stranger, [CONTACTS[NODES[1]]], [])
    assert stranger not in lookup.candidates
    lookup.answered(first[0].node, answers(target)[first[0].node], [])
    before = dict(lookup.candidates)
    lookup.answered(first[0].node, [CONTACTS[n] for n in NODES[1:50]], [])  # again
    assert dict(lookup.candidates) == before
    lookup.failed(first[0].node)  # a late failure does not undo an answer
    assert lookup.result().queried == ALPHA and lookup.result().failed == 0


def test_value_lookup_ends_with_the_first_reply_carrying_records():
    target = random_target(7)
    record = SIGNER.sign(target, 1, b"where it is")
    other_key = OTHER_SIGNER.sign(random_target(8), 1, b"not this key")
    holders = {c.node for c in true_closest(target)}
    # every node returns a record for another key: that does not end the lookup
    records = {n: [other_key] for n in NODES}
    for n in holders:
        records[n] = [record, other_key]
    # start from the far half of the space, so no holder is among the first asked
    far = bytes([target[0] ^ 0x80]) + target[1:]
    start = TABLES[OWN].closest(far, K)
    assert not {c.node for c in start} & holders
    lookup = new_lookup(target, want=Want.VALUE, start=start)
    asked, pending = drive(lookup, random.Random(9), records=records)
    result = lookup.result()
    assert result.records == (record,)
    assert not result.timed_out and result.hops >= 2
    assert lookup.done and lookup.want_queries() == []
    # it stopped at the first holder that answered: that is the last node it heard from
    answered = [n for n in asked if n not in {c.node for c in pending}]
    assert answered[-1] in holders
    assert not set(answered[:-1]) & holders


def test_value_lookup_without_records_runs_to_the_k_closest():
    target = random_target(10)
    lookup = new_lookup(target, want=Want.VALUE)
    drive(lookup, random.Random(10), records={})
    result = lookup.result()
    assert result.records == () and list(result.contacts) == true_closest(target)


def test_node_lookup_ignores_records():
    target = random_target(11)
    record = SIGNER.sign(target, 1, b"x")
    lookup = new_lookup(target, want=Want.NODES)
    drive(lookup, random.Random(11), records={n: [record] for n in NODES})
    result = lookup.result()
    assert result.records == () and list(result.contacts) == true_closest(target)


def test_expire_ends_the_lookup_timed_out_with_nothing_in_flight():
    target = random_target(12)
    lookup = new_lookup(target)
    asked, pending = drive(lookup, random.Random(12), max_steps=4)
    assert pending and not lookup.done
    lookup.expire()
    assert lookup.done and lookup.timed_out and lookup.in_flight == 0
    assert lookup.want_queries() == []
    result = lookup.result()
    assert result.timed_out
    assert result.failed == len(pending)  # the queries still out count as failed
    assert not {c.node for c in result.contacts} & {c.node for c in pending}
    assert result.queried == len(asked)
    answered = set(asked) - {c.node for c in pending}
    assert result.contacts and {c.node for c in result.contacts} <= answered
    assert len(result.contacts) < K  # some of the k closest known were never asked
    # a late answer after the deadline changes nothing
    lookup.answered(pending[0].node, answers(target)[pending[0].node], [])
    assert lookup.result() == result
    # nor does the deadline passing again
    lookup.expire()
    assert lookup.timed_out and lookup.done and lookup.want_queries() == []
    assert lookup.result() == result


def test_expire_after_convergence_is_not_a_timeout():
    target = random_target(13)
    lookup = new_lookup(target)
    drive(lookup, random.Random(13))
    converged = lookup.result()
    lookup.expire()
    assert lookup.done and not lookup.timed_out
    assert lookup.result().contacts == converged.contacts


def test_hops_count_the_longest_chain_of_referrals():
    """x1 and x2 were known at the start (hop 1); x1 names y (hop 2), y names z (hop 3).
    x2 answering last does not make the lookup a one-hop one."""
    target = random_target(14)
    by_distance = sorted(NODES[1:], key=lambda n: distance(n.raw, target))
    z, y, x1, x2 = (CONTACTS[n] for n in by_distance[:4])
    lookup = Lookup(target, Want.NODES, OWN, K, ALPHA, deadline=5.0)
    lookup.add([x1, x2], 1)
    assert lookup.want_queries() == [x1, x2]
    lookup.answered(x1.node, [y], [])
    assert lookup.want_queries() == [y]
    lookup.answered(y.node, [z, x1], [])
    assert lookup.want_queries() == [z]
    lookup.answered(z.node, [], [])
    assert lookup.hops == 3 and not lookup.done  # x2 is still out
    lookup.answered(x2.node, [], [])
    assert lookup.done
    result = lookup.result()
    assert result.hops == 3 and result.contacts == (z, y, x1, x2) and result.queried == 4


def _brute_force(lookup: Lookup) -> tuple[list, int, bool]:
    """The shortlist, in-flight count and `done` recomputed from `candidates` alone (the
    lookup keeps them incrementally)."""
    alive = sorted((c for c in lookup.candidates.values() if c.state.name != "FAILED"),
                   key=lambda c: c.distance)[:K]
    in_flight = sum(1 for c in lookup.candidates.values() if c.state.name == "ASKED")
    done = lookup.timed_out or (lookup.want is Want.VALUE and bool(lookup.records)) or all(
        c.state.name == "ANSWERED" for c in alive)
    return alive, in_flight, done


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.randoms(use_true_random=False), st.integers(0, K),
       st.floats(0, 1), st.integers(0, 60))
def test_incremental_shortlist_matches_brute_force(seed, rng, known, fail_rate,
                                                    expire_after):
    """Answers, failures (up to all: the shortlist runs dry), late replies, contacts
    added directly (also once it is done) and an expiry in a random order: after every
    step the lookup's shortlist, in-flight count and `done` are what a full re-sort of
    its candidates gives."""
    target = random_target(seed)
    fail = {n for n in NODES if rng.random() < fail_rate}
    lookup = new_lookup(target, start=TABLES[OWN].closest(target, K)[:known])
    pending: list[Contact] = []
    dry = 0
    for step in range(300):
        alive, in_flight, done = _brute_force(lookup)
        assert lookup._closest_alive() == alive
        assert lookup.in_flight == in_flight and lookup.done == done
        if step == expire_after:
            lookup.expire()
            continue
        if step % 7 == 6:  # a contact learned on the side
            lookup.add([CONTACTS[rng.choice(NODES)]], 1)
            continue
        pending += lookup.want_queries()
        if not pending:  # done, or nothing left to ask: learn a few more on the side
            if dry == 3:
                break
            dry += 1
            lookup.add([CONTACTS[rng.choice(NODES)]], 1)
            continue
        c = pending.pop(rng.randrange(len(pending)))
        if c.node in fail:
            lookup.failed(c.node)
        else:
            lookup.answered(c.node, answers(target)[c.node], [])
    alive, in_flight, done = _brute_force(lookup)
    assert lookup._closest_alive() == alive and lookup.in_flight == in_flight
    assert lookup.done == done
    assert list(lookup.result().contacts) == [c.contact for c in alive
                                              if c.state.name == "ANSWERED"]
