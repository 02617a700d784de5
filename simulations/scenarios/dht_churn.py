"""DHT records under churn: records stay resolvable while their holders come and go.

Twenty nodes publish one record each; then a quarter of the other nodes crash or leave
and some come back. Records are republished every 60 s here (300 s by default, shortened
so a run of a few minutes sees two republishes; ttl 180 s), and hand-over moves them to
new close nodes as membership changes. After the last republish, random live nodes look
up every record whose publisher is still up: all must be found.
"""

from __future__ import annotations

import dataclasses
import random

from p2pexec.dht.config import DhtConfig
from simulations.faults import Crash, Event, Join, Leave, Publish, Resolve
from simulations.invariants import FalsePositives, Invariant, RecordsResolvable
from simulations.scenario import Params, Scenario, false_positive_budget, spread

RECORDS = 20
REPUBLISH = 60.0


class DhtChurn(Scenario):
    name = "dht-churn"
    summary = "DHT records under churn: every record resolvable after republish"
    duration = 180.0

    def dht_config(self, params: Params) -> DhtConfig:
        return dataclasses.replace(DhtConfig(), republish_interval=REPUBLISH,
                                   record_ttl=3 * REPUBLISH, refresh_interval=2 * REPUBLISH)

    def schedule(self, params: Params, rng: random.Random) -> list[Event]:
        publishers = rng.sample(range(params.nodes), min(RECORDS, params.nodes))
        events: list[Event] = [Publish(1.0, node, key) for key, node in enumerate(publishers)]
        others = [i for i in range(params.nodes) if i not in publishers] or \
            list(range(params.nodes))
        victims = rng.sample(others, max(1, len(others) // 4))
        last_fault = params.duration - REPUBLISH - 30
        times = spread(rng, len(victims), 5.0, max(6.0, last_fault))
        for t, node in zip(times, victims, strict=True):
            if rng.random() < 0.5:
                events.append(Crash(t, node))
            else:
                events.append(Leave(t, node))
            if rng.random() < 0.3:
                events.append(Join(min(t + 15.0, last_fault), node))
        events.append(Resolve(params.duration - 15.0))
        return events

    def invariants(self, params: Params) -> list[Invariant]:
        return [RecordsResolvable(), FalsePositives(false_positive_budget(params))]


SCENARIO = DhtChurn()
