"""Partition and heal: the cluster splits in two halves (split brain), then heals.

At 10 s the nodes split into two halves that cannot reach each other for a third of the
run; each half declares the other failed. After the heal, dead members are found again
by Serf-style reconnects (a push-pull to a random dead member every reconnect_interval)
and anti-entropy: the run measures how long until every view is exact again.
"""

from __future__ import annotations

import random

from simulations.faults import Event, Heal, Partition
from simulations.invariants import Converges, FalsePositives, HealConverges, Invariant
from simulations.scenario import Params, Scenario, false_positive_budget

SPLIT_AT = 10.0


class SplitBrain(Scenario):
    name = "partition"
    summary = "partition and heal: two halves cannot reach each other for a third of the run"
    duration = 240.0

    def split_seconds(self, params: Params) -> float:
        return params.duration / 3

    def heal_limit(self, params: Params) -> float:
        """Seconds after the heal by which every view must be exact: two reconnect
        intervals (each side needs one of its members to pick a member of the other
        side) plus a push-pull period and the spread of the news."""
        gossip = self.gossip_config(params)
        return 2 * gossip.reconnect_interval + gossip.push_pull_period(params.nodes) + 10

    def schedule(self, params: Params, rng: random.Random) -> list[Event]:
        nodes = list(range(params.nodes))
        rng.shuffle(nodes)
        half = params.nodes // 2
        groups = (tuple(sorted(nodes[:half])), tuple(sorted(nodes[half:])))
        return [Partition(SPLIT_AT, groups), Heal(SPLIT_AT + self.split_seconds(params))]

    def invariants(self, params: Params) -> list[Invariant]:
        return [HealConverges(self.heal_limit(params)),
                FalsePositives(false_positive_budget(params)), Converges()]


SCENARIO = SplitBrain()
