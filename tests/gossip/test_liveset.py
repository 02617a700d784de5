"""LiveSet: O(1) membership and random picks, checked against a plain set."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from p2pexec.gossip.liveset import LiveSet
from p2pexec.ids import NodeId

IDS = [NodeId(bytes([i]) * 32) for i in range(40)]


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 39)), max_size=200))
def test_liveset_behaves_as_a_set(operations: list[tuple[bool, int]]) -> None:
    live, model = LiveSet(), set()
    for add, i in operations:
        if add:
            live.add(IDS[i])
            model.add(IDS[i])
        else:
            live.discard(IDS[i])
            model.discard(IDS[i])
        assert len(live) == len(model) and set(live) == model
        slots = [live.slot(k) for k in range(live.slots)]
        assert sorted(n.raw for n in slots if n is not None) == sorted(n.raw for n in model)
        assert all((node in live) == (node in model) for node in IDS)


@given(st.integers(0, 40), st.integers(1, 5), st.integers(0, 2**32), st.integers(1, 7))
def test_sample_is_distinct_accepted_and_as_large_as_it_can_be(
        size: int, k: int, seed: int, modulus: int) -> None:
    live = LiveSet()
    for node in IDS[:size]:
        live.add(node)
    accepted = {node for i, node in enumerate(IDS[:size]) if i % modulus == 0}
    chosen = live.sample(random.Random(seed), k, accepted.__contains__)
    assert len(chosen) == len(set(chosen)) == min(k, len(accepted))
    assert set(chosen) <= accepted


def test_picks_are_uniform_enough() -> None:
    live = LiveSet()
    for node in IDS[:10]:
        live.add(node)
    live.discard(IDS[3])
    rng = random.Random(1)
    counts = {node: 0 for node in live}
    for _ in range(9000):
        counts[live.choice(rng)] += 1
    assert IDS[3] not in counts and min(counts.values()) > 850
