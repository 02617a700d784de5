"""The properties a scenario promises, checked on what the run recorded.

Each invariant is a frozen dataclass with a `name` for the verdict line and a `check`
that returns a `Check` with the evidence (the first offending case when it fails).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from simulations.record import Check, Recorder


@dataclass(frozen=True)
class RunFacts:
    """What an invariant may need besides the recording."""

    nodes: int
    end: float
    detection_bound: float
    """`GossipConfig.failure_detection_bound(nodes)` of the run's config."""


@dataclass(frozen=True)
class DetectsCrashes:
    """Every node up and reachable when another crashed declares it failed within
    `factor` x the config's detection bound (when it stayed down that long)."""

    factor: float = 1.0
    name: ClassVar[str] = "detects-crashes"

    def check(self, rec: Recorder, facts: RunFacts) -> Check:
        bound = self.factor * facts.detection_bound
        missing = rec.undetected(facts.end, bound)
        pairs = sum(len(r.observers) for r in rec.crashes)
        if missing:
            node, observer = missing[0]
            return Check(self.name, False,
                         f"{len(missing)} of {pairs} (crash, observer) pairs not detected "
                         f"within {bound:.1f} s, first: node {observer} about node {node}")
        return Check(self.name, True, f"{pairs} pairs within {bound:.1f} s")


@dataclass(frozen=True)
class FalsePositives:
    """At most `budget` verdicts "failed" about a member that was up and reachable."""

    budget: int
    name: ClassVar[str] = "false-positives"

    def check(self, rec: Recorder, facts: RunFacts) -> Check:
        found = rec.false_positives
        detail = f"{len(found)} (budget {self.budget})"
        if len(found) > self.budget:
            t, observer, subject = found[0]
            detail += f", first at {t:.1f} s: node {observer} declared node {subject} failed"
        return Check(self.name, len(found) <= self.budget, detail)


@dataclass(frozen=True)
class Converges:
    """At the end, every live node sees exactly the live nodes as members."""

    name: ClassVar[str] = "converges"

    def check(self, rec: Recorder, facts: RunFacts) -> Check:
        errors = rec.final_view_errors
        ok = errors == 0
        return Check(self.name, ok, f"{errors} wrong (observer, member) beliefs in "
                                    f"{rec.checked_views} views at {facts.end:.0f} s")


@dataclass(frozen=True)
class HealConverges:
    """After every heal, every view is exact again within `within` seconds."""

    within: float
    name: ClassVar[str] = "heal-converges"

    def check(self, rec: Recorder, facts: RunFacts) -> Check:
        if not rec.heals:
            return Check(self.name, False, "no partition healed during the run")
        for heal, converged in rec.heals:
            if converged is None or converged - heal > self.within:
                took = "never" if converged is None else f"{converged - heal:.1f} s"
                return Check(self.name, False, f"heal at {heal:.1f} s: views exact {took} "
                                               f"later (limit {self.within:.0f} s)")
        worst = max(c - h for h, c in rec.heals if c is not None)
        return Check(self.name, True, f"{len(rec.heals)} heals, slowest {worst:.1f} s")


@dataclass(frozen=True)
class RecordsResolvable:
    """Every record of a live publisher is found by every lookup after republish."""

    name: ClassVar[str] = "records-resolvable"

    def check(self, rec: Recorder, facts: RunFacts) -> Check:
        found = sum(rec.lookups)
        ok = bool(rec.lookups) and found == len(rec.lookups)
        return Check(self.name, ok, f"{found} of {len(rec.lookups)} lookups found their "
                                    "record")


@dataclass(frozen=True)
class TasksExactlyOnce:
    """Every submitted task's result reached its owner exactly once, with the right
    value, before the end (no future hangs)."""

    name: ClassVar[str] = "tasks-exactly-once"

    def check(self, rec: Recorder, facts: RunFacts) -> Check:
        submitted = rec.tasks_submitted
        missing = [oid for oid in submitted if oid not in rec.task_results]
        wrong = [oid for oid, value in rec.task_results.items() if submitted[oid] != value]
        twice = [oid for oid, count in rec.completions.items() if count > 1]
        ok = bool(submitted) and not (missing or wrong or twice)
        return Check(self.name, ok, f"{len(submitted)} tasks: {len(missing)} never "
                                    f"finished, {len(wrong)} wrong, {len(twice)} completed "
                                    "twice")


Invariant = (DetectsCrashes | FalsePositives | Converges | HealConverges | RecordsResolvable
             | TasksExactlyOnce)
