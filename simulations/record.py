"""What a run observed, measured against what really happened; and the invariants.

Engines report every membership change a node makes (`member`), the runner reports the
truth (who is up, leaving, partitioned away) as it applies the schedule, and the recorder
keeps the figures: failure-detection times per crash and observer, false positives (a
live, reachable member declared failed), convergence after a partition heals, workload
outcomes, and a time series sampled once per simulated second.
"""

from __future__ import annotations

import collections
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from p2pexec.gossip.core import EventKind


@dataclass
class CrashRecord:
    node: int
    at: float
    observers: frozenset[int]
    """Nodes up and reachable when it crashed: each should declare it failed."""
    until: float = math.inf
    """When it came back (inf: it stayed down)."""
    detected: dict[int, float] = field(default_factory=dict)
    """Observer -> seconds from the crash to its verdict."""


@dataclass(frozen=True)
class Check:
    """One invariant's verdict on a run."""

    name: str
    ok: bool
    detail: str


class Recorder:
    """Truth and observations of one run (node indexes, simulated seconds)."""

    def __init__(self, nodes: int, grace: float) -> None:
        self.nodes = nodes
        self.grace = grace
        """How long a live member needs to refute a suspicion once it can be reached
        (hear of it, then outbid it): a verdict made by a node that could not reach the
        member for part of that time (a partition, the member restarting) is not a
        false positive."""
        self.up: set[int] = set()
        self.leaving: set[int] = set()
        self.last_down: dict[int, float] = {}
        self.crashes: list[CrashRecord] = []
        self._open: dict[int, CrashRecord] = {}
        self.false_positives: list[tuple[float, int, int]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.groups: dict[int, int] = {}
        self.heals: list[tuple[float, float | None]] = []
        """(heal time, when every view was exact again: None if not by the end)."""
        self._restarted: dict[int, float] = {}
        """Node -> when it last came back: verdicts within `grace` of that may be about
        its previous life (a suspicion that began before it crashed)."""
        self._splits: list[tuple[float, float, dict[int, int]]] = []
        """(start, end, groups) of every partition so far (end inf while it lasts)."""
        self._declared: dict[tuple[int, int], float] = {}
        """(origin, subject) -> when the origin itself declared the subject failed."""
        self.series: list[dict[str, float]] = []
        self.lookups: list[bool] = []
        self.tasks_submitted: dict[bytes, Any] = {}
        """Result id -> the value it must have."""
        self.task_results: dict[bytes, Any] = {}
        self.completions: collections.Counter[bytes] = collections.Counter()
        self.final_view_errors: int | None = None
        self.checked_views = 0

    # ---- truth, from the runner --------------------------------------------------------

    def reachable(self, a: int, b: int) -> bool:
        return self.groups.get(a, 0) == self.groups.get(b, 0)

    def came_up(self, node: int, t: float) -> None:
        if node in self.last_down:
            self._restarted[node] = t
        self.up.add(node)
        self.leaving.discard(node)
        record = self._open.pop(node, None)
        if record is not None:
            record.until = t

    def crashed(self, node: int, t: float) -> None:
        if node not in self.up:
            return
        self.up.discard(node)
        self.last_down[node] = t
        if node in self.leaving:
            self.leaving.discard(node)
            return  # it was leaving: its peers may have heard "left" already
        observers = frozenset(i for i in self.up if self.reachable(i, node))
        record = CrashRecord(node, t, observers)
        self.crashes.append(record)
        self._open[node] = record

    def started_leaving(self, node: int, t: float) -> None:
        if node in self.up:
            self.leaving.add(node)

    def left(self, node: int, t: float) -> None:
        """A leaving node finished its leave and stopped."""
        self.up.discard(node)
        self.leaving.discard(node)
        self.last_down[node] = t

    def partitioned(self, groups: tuple[tuple[int, ...], ...], t: float) -> None:
        self._end_split(t)
        self.groups = {i: g + 1 for g, members in enumerate(groups) for i in members}
        self._splits.append((t, math.inf, self.groups))

    def healed(self, t: float) -> None:
        if self.groups:
            self.heals.append((t, None))
        self._end_split(t)
        self.groups = {}

    def _end_split(self, t: float) -> None:
        if self._splits and self._splits[-1][1] == math.inf:
            start, _, groups = self._splits[-1]
            self._splits[-1] = (start, t, groups)

    def _excused(self, origin: int, subject: int, t: float) -> bool:
        """Whether `subject` may not have been able to refute a verdict `origin` made at
        `t`: within `grace` before it, a partition separated them, or the subject was
        restarting (the suspicion may be about its previous life)."""
        since = t - self.grace
        if self._restarted.get(subject, -math.inf) > since:
            return True
        return any(start <= t and end > since and groups.get(origin, 0) != groups.get(subject, 0)
                   for start, end, groups in self._splits)

    # ---- observations, from the engine -------------------------------------------------

    def member(self, observer: int, subject: int, kind: EventKind, t: float,
               origin: int | None = None, old_life: bool = False) -> None:
        """Node `observer` changed its mind about node `subject` (on the word of node
        `origin`, for a suspicion or failure heard from another). `old_life`: the event
        is about a process of `subject` that has since restarted (a failure of that one
        is true, however late it is heard)."""
        self.counts[kind.value] += 1
        if kind != EventKind.FAILED or old_life:
            return
        origin = observer if origin is None else origin
        if origin == observer:
            self._declared[(origin, subject)] = t
        record = self._open.get(subject)
        if record is not None:
            if observer in record.observers and observer not in record.detected:
                record.detected[observer] = t - record.at
            return
        made = self._declared.get((origin, subject), t)
        if subject in self.up and subject not in self.leaving \
                and self.reachable(observer, subject) \
                and not self._excused(origin, subject, made):
            self.false_positives.append((t, observer, subject))

    def sample(self, t: float, row: dict[str, float]) -> None:
        row = {"t": t, "up": len(self.up), **row,
               "failed_declared": self.counts["failed"],
               "false_positives": len(self.false_positives)}
        self.series.append(row)
        if self.heals and self.heals[-1][1] is None and not self.groups \
                and row.get("view_errors") == 0:
            self.heals[-1] = (self.heals[-1][0], t)

    # ---- figures -----------------------------------------------------------------------

    def detection_times(self) -> list[float]:
        return sorted(t for record in self.crashes for t in record.detected.values())

    def undetected(self, end: float, bound: float) -> list[tuple[int, int]]:
        """(crashed node, observer) pairs where the observer stayed up, the node stayed
        down for longer than `bound`, and no verdict came within `bound`."""
        missing = []
        for record in self.crashes:
            if min(record.until, end) - record.at <= bound:
                continue
            for observer in record.observers:
                if self.last_down.get(observer, -math.inf) >= record.at:
                    continue  # restarted since: a fresh process never knew it alive
                seen = record.detected.get(observer)
                if seen is None or seen > bound:
                    missing.append((record.node, observer))
        return missing

    def summary(self) -> dict[str, str]:
        times = self.detection_times()
        out: dict[str, str] = {
            "crashes": str(len(self.crashes)),
            "detections": str(len(times)),
        }
        if times:
            out["detect median s"] = f"{statistics.median(times):.2f}"
            out["detect p99 s"] = f"{times[min(len(times) - 1, int(0.99 * len(times)))]:.2f}"
            out["detect max s"] = f"{times[-1]:.2f}"
        out["false positives"] = str(len(self.false_positives))
        out["suspicions"] = str(self.counts["suspect"])
        for heal, converged in self.heals:
            out[f"converged after heal at {heal:.0f} s"] = (
                "never" if converged is None else f"{converged - heal:.1f} s")
        if self.lookups:
            out["lookups ok"] = f"{sum(self.lookups)}/{len(self.lookups)}"
        if self.tasks_submitted:
            out["tasks done"] = f"{len(self.task_results)}/{len(self.tasks_submitted)}"
        return out
