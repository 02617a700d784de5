"""Gossip, DHT and scheduler cores of a small mesh together on the stepper, under random
reordering (jitter), datagram loss, partitions, crashes and restarts chosen by
Hypothesis; every core's invariants checked after every step, and every result exactly
once at the end.

The stepper runs each node's `Membership`, `Dht` and `Scheduler` (with the stealing
policy), so a step here is whatever the cores do in the simulated time a rule lets pass:
steals, grants, results, suspicions, failures and the `PeerGone`s they cause.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from p2pexec.gossip.config import GossipConfig
from p2pexec.testing.stepper import ClusterStepper
from p2pexec.testing.task_stepper import TaskLayer

NODES = 5
NODE = st.integers(0, NODES - 1)


def duration(task_id: bytes) -> float:
    """From 50 ms to 10 s: long ones are still running when a partition or loss makes
    a thief declare their owner failed."""
    return 0.05 + (task_id[-1] % 8) ** 2 / 5


class MeshMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**16), jitter=st.sampled_from([0.0, 0.002, 0.02]),
                loss=st.sampled_from([0.0, 0.05, 0.3]))
    def start(self, seed: int, jitter: float, loss: float) -> None:
        """Loss makes false failure verdicts: a thief that declares a live owner failed
        drops its tasks, and the owner's held checks must run them again."""
        self.sim = ClusterStepper(NODES, gossip=GossipConfig.lan(), seed=seed,
                                  jitter=jitter)
        self.sim.loop.loss = loss
        self.sim.converge()
        self.tasks = TaskLayer(self.sim, duration=duration)
        self.owners: dict[bytes, tuple[int, int]] = {}
        """Result id -> (owner, the owner's life when it submitted)."""

    @precondition(lambda self: hasattr(self, "sim"))
    @rule(node=NODE, count=st.integers(1, 30))
    def submit(self, node: int, count: int) -> None:
        if self.sim.is_up(node):
            for object_id in self.tasks.submit(node, count):
                self.owners[object_id] = (node, self.tasks.lives[node])

    @precondition(lambda self: hasattr(self, "sim"))
    @rule(seconds=st.sampled_from([0.01, 0.2, 1.0, 5.0]))
    def advance(self, seconds: float) -> None:
        self.sim.run_for(seconds)

    @precondition(lambda self: hasattr(self, "sim") and len(self.sim.up_nodes()) > 2)
    @rule(node=NODE)
    def crash(self, node: int) -> None:
        if self.sim.is_up(node):
            self.sim.crash(node)

    @precondition(lambda self: hasattr(self, "sim"))
    @rule(node=NODE)
    def restart(self, node: int) -> None:
        """A crashed node comes back, possibly before anyone declared it gone: tasks its
        old process had stolen must run again all the same."""
        up = self.sim.up_nodes()
        if not self.sim.is_up(node) and up:
            self.sim.restart(node, up[:1])

    @precondition(lambda self: hasattr(self, "sim"))
    @rule(cut=st.sets(NODE, min_size=1, max_size=NODES - 1),
          seconds=st.sampled_from([0.05, 0.5, 5.0, 30.0]))
    def partition(self, cut: set[int], seconds: float) -> None:
        """A partition, healed after `seconds` (the longer ones outlast suspicions: each
        side declares the other failed)."""
        self.sim.partition([sorted(cut)])
        self.sim.run_for(seconds)
        self.sim.heal()

    @invariant()
    def cores_are_consistent(self) -> None:
        if not hasattr(self, "sim"):
            return
        for i in self.sim.up_nodes():
            self.sim.gossip.nodes[i].core.validate()
            self.sim.dht.nodes[i].core.validate()
            self.tasks.nodes[i].core.validate()
        assert max(self.tasks.completions.values(), default=0) <= 1, "a result came twice"

    def teardown(self) -> None:
        """Healed and left alone, every task whose owner is still the process that
        submitted it gets its result, once."""
        if not hasattr(self, "sim"):
            return
        self.sim.heal()
        self.sim.loop.loss = 0.0
        waiting = [oid for oid, (owner, life) in self.owners.items()
                   if self.sim.is_up(owner) and self.tasks.lives[owner] == life]
        deadline = self.sim.now + 300
        while any(self.tasks.completions[oid] == 0 for oid in waiting):
            assert self.sim.now < deadline, "a result never reached its owner"
            self.sim.run_for(5.0)
        assert Counter(self.tasks.completions[oid] for oid in waiting) <= Counter(
            {1: len(waiting)})


MeshMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30,
                                         deadline=None)
test_gossip_dht_and_scheduler_cores_together = MeshMachine.TestCase


def test_tasks_a_thief_dropped_on_a_false_verdict_run_again_at_their_owner():
    """A 5 s partition of the owner: its four thieves declare it failed and drop its
    tasks, while the owner, whose own probes all fail, has not declared them all
    failed by the heal. Its held checks bring the dropped tasks back."""
    machine = MeshMachine()
    machine.start(seed=0, jitter=0.0, loss=0.0)
    machine.submit(0, 30)
    machine.advance(1.0)
    machine.partition({0}, 5.0)
    machine.teardown()
