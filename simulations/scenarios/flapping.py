"""A flapping node: one node's network drops out for a few seconds, again and again.

Node 0 is cut off from everyone for 3 s every 15 s: long enough to be suspected, too
short to be declared failed when its refutation gets through. The others must not
declare each other failed, and at the end everyone sees everyone.
"""

from __future__ import annotations

import random

from simulations.faults import Event, Heal, Partition
from simulations.invariants import Converges, FalsePositives, Invariant
from simulations.scenario import Params, Scenario, false_positive_budget

FLAPPER = 0
PERIOD = 15.0
OUTAGE = 3.0


class Flapping(Scenario):
    name = "flapping"
    summary = "a flapping node: node 0 loses its network for 3 s every 15 s"
    duration = 150.0

    def schedule(self, params: Params, rng: random.Random) -> list[Event]:
        bound = self.gossip_config(params).failure_detection_bound(params.nodes)
        events: list[Event] = []
        t = 10.0
        while t + OUTAGE < params.duration - bound:
            events += [Partition(t, ((FLAPPER,),)), Heal(t + OUTAGE)]
            t += PERIOD
        return events

    def invariants(self, params: Params) -> list[Invariant]:
        return [FalsePositives(false_positive_budget(params)), Converges()]


SCENARIO = Flapping()
