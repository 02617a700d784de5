"""The merge rules: order-independent, idempotent, and SWIM's precedence."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pexec.gossip.messages import Alive, Dead, Left, LoadUpdate, State, Suspect
from p2pexec.gossip.table import Identity, Load, MemberTable, Row, merge
from p2pexec.ids import NodeId

NODES = [NodeId(bytes([i]) * 32) for i in range(1, 4)]

incarnations = st.integers(min_value=0, max_value=3)
nodes = st.sampled_from(NODES)
updates = st.one_of(
    st.builds(Alive, nodes, incarnations, st.sampled_from(["a", "b"]),
              st.tuples(st.sampled_from(["h1", "h2"]), st.integers(1, 2)),
              st.dictionaries(st.sampled_from(["CPU", "gpu"]), st.floats(0, 8), max_size=2)),
    st.builds(Suspect, nodes, incarnations, nodes),
    st.builds(Dead, nodes, incarnations, nodes),
    st.builds(Left, nodes, incarnations),
    st.builds(LoadUpdate, nodes, st.integers(0, 3), st.integers(0, 5), st.integers(0, 5)),
)


def table_after(seq) -> dict:
    table = MemberTable()
    for u in seq:
        table.apply(u)
    return table.rows()


@settings(max_examples=300)
@given(st.lists(updates, max_size=25), st.randoms(use_true_random=False))
def test_any_interleaving_of_the_same_updates_gives_the_same_table(seq, rnd):
    shuffled = list(seq)
    rnd.shuffle(shuffled)
    duplicated = shuffled + shuffled[: len(shuffled) // 2]
    assert table_after(seq) == table_after(shuffled) == table_after(duplicated)


@settings(max_examples=200)
@given(st.lists(updates, min_size=1, max_size=25))
def test_each_row_is_the_maximum_of_what_was_heard(seq):
    rows = table_after(seq)
    for node, row in rows.items():
        mine = [u for u in seq if u.node == node]
        statuses = [(u.incarnation, s) for u in mine for s in
                    [{Alive: State.ALIVE, Suspect: State.SUSPECT, Dead: State.DEAD,
                      Left: State.LEFT}.get(type(u))] if s is not None]
        if statuses:
            assert row.status == max(statuses)
        loads = [(u.version, u.queue_length, u.running_tasks) for u in mine
                 if isinstance(u, LoadUpdate)]
        assert row.load.key() == (max(loads) if loads else (0, 0, 0))


A = NODES[0]
B = NODES[1]
ALIVE0 = Alive(A, 0, "a", ("h1", 1), {"CPU": 2.0})


def test_suspicion_overrides_alive_only_at_or_above_its_incarnation():
    row = merge(merge(None, ALIVE0), Suspect(A, 0, B))
    assert (row.incarnation, row.state) == (0, State.SUSPECT)
    assert merge(row, Alive(A, 0, "a", ("h1", 1), {})).state == State.SUSPECT
    refuted = merge(row, Alive(A, 1, "a", ("h1", 1), {"CPU": 2.0}))
    assert refuted == Row(A, 1, State.ALIVE, Identity(1, "a", ("h1", 1), (("CPU", 2.0),)),
                          Load())


def test_leave_beats_death_at_the_same_incarnation_and_a_new_incarnation_returns():
    dead = merge(merge(None, ALIVE0), Dead(A, 0, B))
    left = merge(dead, Left(A, 0))
    assert left.state == State.LEFT
    assert merge(merge(merge(None, ALIVE0), Left(A, 0)), Dead(A, 0, B)).state == State.LEFT
    back = merge(left, Alive(A, 1, "a", ("h2", 2), {}))
    assert (back.state, back.incarnation, back.identity.address) == (State.ALIVE, 1, ("h2", 2))


def test_a_suspicion_heard_before_the_member_itself_keeps_the_row_hidden_until_alive_arrives():
    row = merge(None, Suspect(A, 2, B))
    assert (row.identity, row.status) == (None, (2, State.SUSPECT))
    row = merge(row, Alive(A, 1, "a", ("h1", 1), {}))
    assert row.status == (2, State.SUSPECT)
    assert row.identity == Identity(1, "a", ("h1", 1), ())


def test_load_keeps_the_highest_version():
    row = merge(merge(merge(None, ALIVE0), LoadUpdate(A, 3, 7, 1)), LoadUpdate(A, 2, 0, 0))
    assert row.load == Load(queue_length=7, running_tasks=1, version=3)


def test_random_orders_of_a_realistic_history_agree():
    history = [ALIVE0, Alive(B, 0, "b", ("h2", 1), {}), Suspect(A, 0, B), Dead(A, 0, B),
               Alive(A, 1, "a", ("h1", 1), {}), LoadUpdate(A, 1, 3, 2), Left(B, 0)]
    expected = table_after(history)
    rnd = random.Random(5)
    for _ in range(50):
        order = list(history)
        rnd.shuffle(order)
        assert table_after(order) == expected
    assert {n: (r.incarnation, r.state) for n, r in expected.items()} == {
        A: (1, State.ALIVE), B: (0, State.LEFT)}


others = st.sampled_from(NODES[1:])
core_updates = st.one_of(
    st.builds(Alive, others, incarnations, st.just("n"), st.just(("h1", 1)), st.just({})),
    st.builds(Suspect, others, incarnations, nodes),
    st.builds(Dead, others, incarnations, nodes),
    st.builds(Left, others, incarnations),
    st.builds(LoadUpdate, others, st.integers(0, 3), st.integers(0, 5), st.integers(0, 5)),
)


@settings(max_examples=150)
@given(st.lists(core_updates, max_size=20), st.randoms(use_true_random=False))
def test_the_membership_core_keeps_the_merge_order_independent(seq, rnd):
    """Through the whole core (timers, events, re-gossip), not just the table."""
    from p2pexec.gossip.config import GossipConfig
    from p2pexec.gossip.core import Membership

    def rows_after(order) -> dict:
        core = Membership(A, ("h0", 1), GossipConfig.lan(), random.Random(0))
        for u in order:
            core.receive(("h9", 9), u, 1.0)
        return {n: r for n, r in core.rows().items() if n != A}

    shuffled = list(seq)
    rnd.shuffle(shuffled)
    assert rows_after(seq) == rows_after(shuffled)
