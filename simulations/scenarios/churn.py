"""Steady churn: nodes join, leave gracefully and crash at a steady rate.

Every `60 / rate` seconds on average (a Poisson process; rate = a tenth of the nodes per
minute, between 1 and 60), one node changes: a down node comes back (a crashed one after
5 s at least), or
an up node leaves or crashes, so that about a fifth of the nodes are down at any time.
Churn stops a detection bound before the end, so the run ends on a settled cluster.
"""

from __future__ import annotations

import random

from simulations.faults import Crash, Event, Join, Leave
from simulations.invariants import Converges, DetectsCrashes, FalsePositives, Invariant
from simulations.scenario import Params, Scenario, false_positive_budget

RESTART_SECONDS = 5.0
"""A crashed machine comes back no sooner than this (a process or service restart)."""


def churn_per_second(nodes: int) -> float:
    """A tenth of the nodes per minute, at least one and at most 60 (one change a
    second: at 10,000 nodes a tenth per minute would replace the cluster in 10 min)."""
    return min(60.0, max(1.0, nodes / 10)) / 60


class Churn(Scenario):
    name = "churn"
    summary = "steady churn: nodes join, leave gracefully and crash (a tenth per minute)"
    duration = 180.0

    def schedule(self, params: Params, rng: random.Random) -> list[Event]:
        gossip = self.gossip_config(params)
        stop = params.duration - gossip.failure_detection_bound(params.nodes) - 10
        rate = churn_per_second(params.nodes)
        up = set(range(params.nodes))
        down: dict[int, float] = {}  # node -> when it is fully down
        events: list[Event] = []
        t = 5.0 + rng.expovariate(rate)
        while t < stop:
            ready = sorted(i for i, at in down.items() if at <= t)
            if ready and (len(down) >= params.nodes // 5 or rng.random() < 1 / 3):
                node = rng.choice(ready)
                del down[node]
                up.add(node)
                events.append(Join(t, node))
            elif len(up) > 3:
                node = rng.choice(sorted(up))
                up.discard(node)
                if rng.random() < 0.5:
                    events.append(Leave(t, node))
                    down[node] = t + gossip.leave_timeout
                else:
                    events.append(Crash(t, node))
                    down[node] = t + RESTART_SECONDS
            t += rng.expovariate(rate)
        return events

    def invariants(self, params: Params) -> list[Invariant]:
        return [DetectsCrashes(), FalsePositives(false_positive_budget(params)), Converges()]


SCENARIO = Churn()
