"""Many DHT cores on the trio-free stepper: lookups with partial views, churn, deadlines."""

import hashlib
import math
import statistics

import pytest

from p2pexec.dht.config import DhtConfig
from p2pexec.dht.stepper import DhtStepper

N = 200


def key(i: int) -> bytes:
    return hashlib.sha256(b"key %d" % i).digest()


@pytest.fixture(scope="module")
def published():
    """200 nodes that each started knowing 20 others, and 60 records from 60 publishers."""
    stepper = DhtStepper(N, seed=7, view=20)
    stepper.run_for(5)
    results = [stepper.wait(i, stepper.publish(i, key(i), b"value %d" % i)) for i in range(60)]
    return stepper, results


def test_views_are_partial(published):
    stepper, _ = published
    sizes = [len(node.core.table) for node in stepper.nodes]
    assert max(sizes) < N - 1, "no node needs to know everyone"
    for node in stepper.nodes:
        node.core.validate()


def test_every_record_reaches_k_replicas_and_resolves_in_few_hops(published):
    stepper, results = published
    assert all(result.stored == stepper.config.k for result in results)
    hops = []
    for i in range(60):
        asker = (i * 37 + 11) % N
        found = stepper.wait(asker, stepper.find_value(asker, key(i)))
        assert found.error is None
        assert [r.value for r in found.result.records] == [b"value %d" % i]
        hops.append(found.result.hops)
    assert statistics.mean(hops) <= math.log2(N)
    assert max(hops) <= math.ceil(math.log2(N))


def test_find_node_returns_the_true_k_closest(published):
    stepper, _ = published
    target = key(999)
    found = stepper.wait(3, stepper.find_node(3, target))
    everyone = sorted((n.contact.node for n in stepper.nodes if n.index != 3),
                      key=lambda node: int.from_bytes(node.raw, "big") ^ int.from_bytes(
                          target, "big"))
    assert [c.node for c in found.result.contacts] == everyone[:stepper.config.k]


def test_records_survive_a_quarter_of_the_nodes_crashing():
    config = DhtConfig(republish_interval=30.0, record_ttl=90.0)
    stepper = DhtStepper(N, config, seed=3, view=20)
    stepper.run_for(5)
    for i in range(40):
        stepper.wait(i, stepper.publish(i, key(i), b"v"))
    crashed = set(stepper.rng.sample(range(N), N // 4))
    for index in crashed:
        stepper.crash(index)
    stepper.run_for(config.republish_interval + 10)  # deaths detected, one republish
    live = [node.index for node in stepper.live()]
    for i in range(40):
        asker = live[(i * 13) % len(live)]
        found = stepper.wait(asker, stepper.find_value(asker, key(i)))
        if i in crashed:  # its objects and actors died with it: so do its records
            assert found.error is not None and not found.result.records
        else:
            assert found.error is None, found.error
    for node in stepper.live():
        node.core.validate()
        held = {r.publisher for entries in node.core.store.by_key.values() for r in
                (e.record for e in entries.values())}
        assert not held & {stepper.nodes[i].contact.node for i in crashed}


@pytest.mark.parametrize(("nodes", "says"), [
    (4, "none of the 3 nodes asked answered"),  # one round of alpha queries
    (30, "before the lookup deadline"),  # 29 silent contacts take longer than the deadline
])
def test_a_lookup_whose_targets_all_time_out_ends_with_an_error_within_its_deadline(
        nodes, says):
    stepper = DhtStepper(nodes, seed=5, view=nodes - 1, detect_after=None)
    stepper.run_for(2)
    for index in range(1, nodes):
        stepper.crash(index)
    started = stepper.now
    found = stepper.wait(0, stepper.find_value(0, key(1)))
    assert found.error is not None and says in found.error
    assert not found.result.records
    assert stepper.now - started <= stepper.config.lookup_deadline + 1e-9


def test_the_same_seed_gives_the_same_trace():
    def run(seed):
        stepper = DhtStepper(40, seed=seed, view=10)
        stepper.run_for(3)
        stepper.wait(2, stepper.publish(2, key(1), b"x"))
        stepper.crash(5)
        stepper.run_for(5)
        stepper.wait(9, stepper.find_value(9, key(1)))
        return stepper.digest

    assert run(1) == run(1)
    assert run(1) != run(2)
