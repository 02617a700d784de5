"""Run a scenario's schedule on an engine, sample it, check its invariants; shrink a
failing schedule.

The runner owns the truth: it applies each event at its time (telling the recorder what
really happened and the engine what to do), samples every simulated second (live
nodes, view errors, messages) and, at the end, checks every view exactly and hands the
recording to the scenario's invariants.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import trio
import trio.testing

from simulations.engines import ENGINE_TYPES, Engine
from simulations.faults import (
    Crash,
    Event,
    Heal,
    Join,
    Leave,
    Links,
    Partition,
    Publish,
    Resolve,
    Submit,
)
from simulations.invariants import RunFacts
from simulations.record import Check, Recorder
from simulations.scenario import Params, Scenario

SAMPLE_INTERVAL = 1.0
"""Simulated seconds between two rows of the time series."""

MAX_CHECKED_VIEWS = 200
"""Views compared member by member at each check; above this many live nodes a seeded
sample of them (every view is O(n) to compare, so all of them is O(n^2))."""


@dataclass
class Outcome:
    """A finished run."""

    scenario: Scenario
    params: Params
    schedule: list[Event]
    recorder: Recorder
    checks: list[Check]
    digest: str
    exact_replay: bool
    real_seconds: float
    messages: int

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failed(self) -> set[str]:
        return {check.name for check in self.checks if not check.ok}


def run(scenario: Scenario, params: Params, schedule: list[Event] | None = None, *,
        progress: TextIO | None = None) -> Outcome:
    """One run of `scenario` (its own schedule for `params`, unless one is given)."""
    if schedule is None:
        schedule = scenario.schedule(params, random.Random(params.seed))
    schedule = sorted(schedule, key=lambda event: event.at)
    clock = trio.testing.MockClock(autojump_threshold=0) if params.engine == "simnet" else None
    return trio.run(_execute, scenario, params, schedule, progress, clock=clock)


async def _execute(scenario: Scenario, params: Params, schedule: list[Event],
                   progress: TextIO | None) -> Outcome:
    gossip = scenario.gossip_config(params)
    # a live member needs about a probe interval to hear of a suspicion and one more for
    # its refutation to spread, within the shortest suspicion timeout
    grace = gossip.suspicion_min(params.nodes) + 2 * gossip.probe_interval
    rec = Recorder(params.nodes, grace)
    engine = ENGINE_TYPES[params.engine](params, scenario, rec)
    started = time.monotonic()
    view_rng = random.Random(params.seed + 2)
    async with trio.open_nursery() as nursery:
        await engine.start(nursery)
        for i in range(params.nodes):
            rec.came_up(i, 0.0)
        last_print = -math.inf
        t = 0.0
        events = list(schedule)
        while t <= params.duration:
            while events and events[0].at <= t:
                event = events.pop(0)
                await engine.advance_to(event.at)
                await _apply(engine, rec, event)
            await engine.advance_to(t)
            _sample(engine, rec, t, view_rng, started)
            if progress is not None and time.monotonic() - last_print >= 0.5:
                last_print = time.monotonic()
                _progress(progress, scenario, params, t, started)
            t += SAMPLE_INTERVAL
        end = params.duration
        await engine.advance_to(end)
        await engine.finish(end)
        errors, checked = _view_errors(engine, rec, view_rng)
        rec.final_view_errors, rec.checked_views = errors, checked
        nursery.cancel_scope.cancel()
    if progress is not None:
        _progress(progress, scenario, params, end, started)
        progress.write("\n")
    facts = RunFacts(params.nodes, end, gossip.failure_detection_bound(params.nodes))
    checks = [invariant.check(rec, facts) for invariant in scenario.invariants(params)]
    return Outcome(scenario, params, schedule, rec, checks, engine.digest,
                   engine.exact_replay, time.monotonic() - started, engine.messages)


async def _apply(engine: Engine, rec: Recorder, event: Event) -> None:
    """Do `event` (unless it asks for the state a node is already in)."""
    t = event.at
    if isinstance(event, Crash):
        if event.node in rec.up:
            rec.crashed(event.node, t)
            await engine.crash(event.node)
    elif isinstance(event, Leave):
        if event.node in rec.up and event.node not in rec.leaving:
            rec.started_leaving(event.node, t)
            await engine.leave(event.node)
    elif isinstance(event, Join):
        if event.node not in rec.up and event.node not in rec.leaving:
            await engine.join(event.node)
            rec.came_up(event.node, t)
    elif isinstance(event, Partition):
        rec.partitioned(event.groups, t)
        await engine.partition(event.groups)
    elif isinstance(event, Heal):
        rec.healed(t)
        await engine.heal()
    elif isinstance(event, Links):
        await engine.links(event.loss, event.latency)
    elif isinstance(event, Publish):
        if event.node in rec.up:
            await engine.publish(event.node, event.key)
    elif isinstance(event, Resolve):
        await engine.resolve()
    elif isinstance(event, Submit):
        await engine.submit(event.node, event.tasks)
    else:
        raise TypeError(f"unknown event {event!r}")


def _truth(rec: Recorder) -> list[int]:
    """Who every view should show as members: up, not leaving."""
    return [i for i in rec.up if i not in rec.leaving]


def _sample(engine: Engine, rec: Recorder, t: float, rng: random.Random,
            started: float) -> None:
    for node in list(rec.leaving):
        if not engine.running(node):
            rec.left(node, t)
    truth = _truth(rec)
    group_size: dict[int, int] = {}
    for i in truth:
        group_size[rec.groups.get(i, 0)] = group_size.get(rec.groups.get(i, 0), 0) + 1
    error = 0
    for i in truth:
        expected = group_size[rec.groups.get(i, 0)] - 1
        error += abs(engine.live_count(i) - expected)
    row = {"view_error_mean": error / max(1, len(truth)),
           "messages": float(engine.messages),
           "real_seconds": time.monotonic() - started}
    if error == 0 and rec.heals and rec.heals[-1][1] is None and not rec.groups:
        # the counts agree after a heal: check every belief (O(n) a view), to time the
        # convergence exactly
        row["view_errors"] = float(_view_errors(engine, rec, rng)[0])
    rec.sample(t, row)


def _view_errors(engine: Engine, rec: Recorder, rng: random.Random) -> tuple[int, int]:
    """Wrong beliefs (a member missing from a view, or a non-member in it) over the
    checked views, and how many views were checked."""
    truth = _truth(rec)
    ids = {i: engine.node_id(i) for i in truth}
    observers = truth if len(truth) <= MAX_CHECKED_VIEWS else \
        rng.sample(sorted(truth), MAX_CHECKED_VIEWS)
    by_group: dict[int, set] = {}
    for i in truth:
        by_group.setdefault(rec.groups.get(i, 0), set()).add(ids[i])
    errors = 0
    for i in observers:
        expected = by_group[rec.groups.get(i, 0)] - {ids[i]}
        errors += len(expected.symmetric_difference(engine.live_ids(i)))
    return errors, len(observers)


def _progress(out: TextIO, scenario: Scenario, params: Params, t: float,
              started: float) -> None:
    real = time.monotonic() - started
    speed = f"{t / real:.1f}x real time" if real > 0 else ""
    out.write(f"\r{scenario.name} on {params.engine}: {t:.0f} / {params.duration:.0f} "
              f"simulated s  ({speed})   ")
    out.flush()


def shrink(scenario: Scenario, params: Params, schedule: list[Event], failing: set[str],
           *, max_runs: int = 64, log: Callable[[str], None] = lambda line: None
           ) -> list[Event]:
    """A smaller schedule that still fails one of the `failing` invariants: delta
    debugging (ddmin) over the faults; the workload events are kept."""
    faults = [e for e in schedule if e.is_fault]
    workload = [e for e in schedule if not e.is_fault]
    runs = 0

    def still_fails(candidate: list[Event]) -> bool:
        nonlocal runs
        runs += 1
        outcome = run(scenario, params, candidate + workload)
        failed = bool(outcome.failed & failing)
        log(f"shrink run {runs}: {len(candidate)} faults -> "
            f"{'still fails' if failed else 'passes'}")
        return failed

    chunks = 2
    while len(faults) >= 2 and runs < max_runs:
        size = math.ceil(len(faults) / chunks)
        parts = [faults[k:k + size] for k in range(0, len(faults), size)]
        for k in range(len(parts)):
            rest = [e for j, part in enumerate(parts) if j != k for e in part]
            if runs < max_runs and still_fails(rest):
                faults = rest
                chunks = max(chunks - 1, 2)
                break
        else:
            if chunks >= len(faults):
                break
            chunks = min(len(faults), chunks * 2)
    if len(faults) == 1 and runs < max_runs and still_fails([]):
        faults = []
    return sorted(faults + workload, key=lambda event: event.at)

