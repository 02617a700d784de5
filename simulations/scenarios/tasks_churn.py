"""A task workload under churn: tasks submitted at one node run across a churning mesh.

Node 0 (the owner, as a driver attached to it would) submits 20 tasks per node in four
bursts; the others steal them. Meanwhile a tenth of the other nodes per minute crash,
leave or come back. Every result must reach the owner exactly once with the right
value (tasks on a crashed thief are run again), no result may hang, and no live node
may be declared failed beyond the budget. On the stepper, each node's scheduler and
stealing policy run on simulated workers (`p2pexec.testing.task_stepper`).
"""

from __future__ import annotations

import random

from simulations.faults import Crash, Event, Join, Leave, Submit
from simulations.invariants import Converges, FalsePositives, Invariant, TasksExactlyOnce
from simulations.scenario import Params, Scenario, false_positive_budget
from simulations.scenarios.churn import churn_per_second

OWNER = 0
BURSTS = 4
TASKS_PER_NODE = 20


class TasksUnderChurn(Scenario):
    name = "tasks-churn"
    summary = "a task workload under churn: every result reaches its owner exactly once"
    nodes = 20
    duration = 120.0

    def schedule(self, params: Params, rng: random.Random) -> list[Event]:
        per_burst = max(1, params.nodes * TASKS_PER_NODE // BURSTS)
        events: list[Event] = [Submit(2.0 + 5.0 * k, OWNER, per_burst) for k in range(BURSTS)]
        gossip = self.gossip_config(params)
        stop = params.duration - gossip.failure_detection_bound(params.nodes) - 10
        rate = churn_per_second(params.nodes)
        others = list(range(1, params.nodes))
        down: dict[int, float] = {}
        t = 3.0 + rng.expovariate(rate)
        while t < stop:
            ready = sorted(i for i, at in down.items() if at <= t)
            if ready and rng.random() < 0.4:
                node = rng.choice(ready)
                del down[node]
                events.append(Join(t, node))
            elif len(down) < len(others) // 3:
                node = rng.choice([i for i in others if i not in down])
                if rng.random() < 0.5:
                    events.append(Leave(t, node))
                    down[node] = t + gossip.leave_timeout
                else:
                    events.append(Crash(t, node))
                    down[node] = t
            t += rng.expovariate(rate)
        return events

    def invariants(self, params: Params) -> list[Invariant]:
        return [TasksExactlyOnce(), FalsePositives(false_positive_budget(params)),
                Converges()]


SCENARIO = TasksUnderChurn()
