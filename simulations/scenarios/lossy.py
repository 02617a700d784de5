"""Lossy and slow links: 20% datagram loss and 20 ms one way, with a few crashes.

Every datagram (probes, acks, gossip) may be lost; push-pull streams are reliable as TCP
is. Lifeguard's awareness and dynamic suspicion must keep false positives within the
budget while crashes are still found.
"""

from __future__ import annotations

import random

from simulations.faults import Crash, Event
from simulations.invariants import Converges, DetectsCrashes, FalsePositives, Invariant
from simulations.scenario import Params, Scenario, false_positive_budget, spread

CRASHES = 3


class LossyLinks(Scenario):
    name = "lossy"
    summary = "lossy and slow links (20% loss, 20 ms one way) with a few crashes"
    loss = 0.2
    latency_ms = 20.0
    duration = 180.0

    def schedule(self, params: Params, rng: random.Random) -> list[Event]:
        bound = self.gossip_config(params).failure_detection_bound(params.nodes)
        times = spread(rng, CRASHES, 10.0, max(11.0, params.duration - 1.5 * bound - 5))
        victims = rng.sample(range(params.nodes), min(CRASHES, params.nodes - 2))
        return [Crash(t, node) for t, node in zip(times, victims, strict=False)]

    def invariants(self, params: Params) -> list[Invariant]:
        # loss makes probes fail and Lifeguard slows the unhealthy: half again the bound
        return [DetectsCrashes(factor=1.5), FalsePositives(false_positive_budget(params)),
                Converges()]


SCENARIO = LossyLinks()
