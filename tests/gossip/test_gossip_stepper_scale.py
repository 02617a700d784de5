"""50-node clusters on the deterministic stepper: the issue's correctness scenarios, fast
and exactly replayable. (The same scenarios through the trio driver on SimNetwork are in
test_gossip_driver_simnet.py.)"""

from __future__ import annotations

from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.core import EventKind
from p2pexec.gossip.messages import State
from p2pexec.gossip.stepper import Stepper

N = 50
LAN = GossipConfig.lan()


def converged(n: int = N, seed: int = 1, loss: float = 0.0) -> Stepper:
    sim = Stepper(n, LAN, seed=seed, loss=loss)
    sim.join_all()
    sim.run_for(20.0)
    for i in range(n):
        assert sim.states(i) == {m.node_id: State.ALIVE for m in sim.nodes}, i
    return sim


def failures(sim: Stepper, about=None) -> list[tuple[int, object, float]]:
    return [(n.index, e.member.node_id, e.time) for n in sim.nodes for e in n.events
            if e.kind == EventKind.FAILED and (about is None or e.member.node_id == about)]


def test_a_crash_is_seen_by_every_live_node_within_the_suspicion_bound():
    sim = converged()
    victim = sim.nodes[17]
    t0 = sim.now
    sim.crash(17)
    sim.run_for(LAN.failure_detection_bound(N) + 1)
    seen = {i: t - t0 for i, node, t in failures(sim, victim.node_id)}
    assert sorted(seen) == [i for i in range(N) if i != 17]
    assert max(seen.values()) <= LAN.failure_detection_bound(N)
    assert failures(sim) == failures(sim, victim.node_id)  # nobody else was declared dead


def test_no_live_node_is_declared_dead_with_five_percent_loss_over_ten_minutes():
    sim = converged(loss=0.05, seed=2)
    sim.run_for(600.0)
    assert failures(sim) == []
    suspicions = sum(e.kind == EventKind.SUSPECT for n in sim.nodes for e in n.events)
    assert suspicions > 0  # loss did cause suspicions: refutation is what kept them alive


def test_partition_halves_mark_each_other_dead_and_reconverge_after_healing():
    sim = converged(seed=3)
    left, right = list(range(N // 2)), list(range(N // 2, N))
    sim.partition([left, right])
    # every member of the other half is dead everywhere after 85-125 s (seeds 1-5): half
    # of each node's probes fail, so Lifeguard stretches its probe interval up to 8x
    sim.run_for(180.0)
    for i in range(N):
        mine, other = (left, right) if i in left else (right, left)
        states = sim.states(i)
        assert {states[sim.nodes[j].node_id] for j in mine} == {State.ALIVE}
        assert {states[sim.nodes[j].node_id] for j in other} == {State.DEAD}
    sim.heal()
    sim.run_for(120.0)
    everyone = {m.node_id: State.ALIVE for m in sim.nodes}
    assert [sim.states(i) == everyone for i in range(N)] == [True] * N


def test_a_node_that_leaves_gracefully_is_never_reported_failed():
    sim = converged(seed=4)
    leaver = sim.nodes[5]
    sim.leave(5)
    sim.run_for(2.0)
    sim.crash(5)  # the process exits after its leave was gossiped
    sim.run_for(120.0)
    assert failures(sim) == []
    lefts = {n.index for n in sim.nodes for e in n.events
             if e.kind == EventKind.LEFT and e.member.node_id == leaver.node_id}
    assert lefts == set(range(N)) - {5}
    assert {sim.states(i)[leaver.node_id] for i in range(N) if i != 5} == {State.LEFT}


def test_a_restarted_node_returns_with_a_new_incarnation():
    sim = converged(seed=5)
    node = sim.nodes[9]
    sim.crash(9)
    sim.run_for(60.0)
    assert {sim.states(i)[node.node_id] for i in range(N) if i != 9} == {State.DEAD}
    sim.restart(9, seeds=[0])
    sim.run_for(10.0)
    assert node.core.incarnation > 0
    assert {sim.states(i)[node.node_id] for i in range(N)} == {State.ALIVE}
    assert all(m.core.member(node.node_id).incarnation == node.core.incarnation
               for m in sim.nodes)


def test_load_spreads_to_every_member():
    sim = converged(seed=6)
    sim.set_load(3, queue_length=12, running_tasks=2)
    sim.run_for(5.0)
    loads = {(m.core.member(sim.nodes[3].node_id).load.queue_length,
              m.core.member(sim.nodes[3].node_id).load.running_tasks) for m in sim.nodes}
    assert loads == {(12, 2)}


def test_a_seeded_run_replays_exactly():
    def run() -> list:
        sim = Stepper(12, GossipConfig.local(), seed=9, loss=0.1)
        sim.join_all()
        sim.run_for(5.0)
        sim.crash(4)
        sim.run_for(30.0)
        return [(n.index, e.kind, e.member.node_id, e.time) for n in sim.nodes for e in n.events]

    first = run()
    assert first == run()
    for i in range(12):  # simulated time never runs backwards for any node
        times = [t for n, _, _, t in first if n == i]
        assert times == sorted(times)


def test_with_three_members_a_crash_is_confirmed_and_detected_at_the_minimum_timeout():
    """The two survivors confirm each other's suspicion, so neither waits out the
    unconfirmed maximum (18 s here): a suspicion gossiped to the dead member alone, or
    piggybacked on probes of it, once used up every retransmit in 1 run of 8."""
    local = GossipConfig.local()
    bound = 3 * local.probe_interval + local.suspicion_min(3) + 1.0
    slowest = 0.0
    for seed in range(30):
        sim = Stepper(3, local, seed=seed)
        sim.join_all()
        sim.run_until(10.0)
        sim.crash(2)
        t0 = sim.now
        sim.run_for(local.suspicion_max(3) + 5)
        seen = {i: t - t0 for i, _node, t in failures(sim, sim.nodes[2].node_id)}
        assert sorted(seen) == [0, 1], seed
        slowest = max(slowest, *seen.values())
    assert slowest <= bound, (slowest, bound)
