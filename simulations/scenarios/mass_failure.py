"""Mass failure: a third of the nodes crash at the same instant.

The survivors must declare every one of them failed within the detection bound, while
a third of their probes and indirect probes go to dead nodes, and agree at the end.
"""

from __future__ import annotations

import random

from simulations.faults import Crash, Event
from simulations.invariants import Converges, DetectsCrashes, FalsePositives, Invariant
from simulations.scenario import Params, Scenario, false_positive_budget

CRASH_AT = 10.0


class MassFailure(Scenario):
    name = "mass-failure"
    summary = "mass failure: a third of the nodes crash at once"
    duration = 90.0

    def schedule(self, params: Params, rng: random.Random) -> list[Event]:
        victims = sorted(rng.sample(range(params.nodes), params.nodes // 3))
        return [Crash(CRASH_AT, node) for node in victims]

    def invariants(self, params: Params) -> list[Invariant]:
        # A third of the helpers of every indirect probe are dead too, so nacks go missing
        # and Lifeguard slows the probing of the healthy (awareness): half again the bound
        return [DetectsCrashes(factor=1.5), FalsePositives(false_positive_budget(params)),
                Converges()]


SCENARIO = MassFailure()
