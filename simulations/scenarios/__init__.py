"""Every scenario, by name: each file holds one `SCENARIO` (a fault schedule and the
invariants it must keep)."""

from simulations.scenario import Scenario
from simulations.scenarios import (
    churn,
    dht_churn,
    flapping,
    lossy,
    mass_failure,
    partition,
    tasks_churn,
)

SCENARIOS: dict[str, Scenario] = {module.SCENARIO.name: module.SCENARIO for module in (
    churn, partition, lossy, flapping, mass_failure, tasks_churn, dht_churn)}

__all__ = ["SCENARIOS"]
