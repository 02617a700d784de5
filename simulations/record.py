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
        """After a heal, failures declared within this long between nodes it had split
        may come from suspicions the partition started: not false positives."""
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
        self._healed: list[tuple[float, dict[int, int]]] = []
        """(heal time, the groups it ended), to excuse verdicts the split started."""
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

    def partitioned(self, groups: tuple[tuple[int, ...], ...]) -> None:
        self.groups = {i: g + 1 for g, members in enumerate(groups) for i in members}

    def healed(self, t: float) -> None:
        if self.groups:
            self.heals.append((t, None))
            self._healed.append((t, self.groups))
        self.groups = {}

    def _split_lately(self, a: int, b: int, t: float) -> bool:
        """Whether a partition that ended less than `grace` ago separated a and b."""
        return any(t - healed < self.grace and groups.get(a, 0) != groups.get(b, 0)
                   for healed, groups in self._healed)

    # ---- observations, from the engine -------------------------------------------------

    def member(self, observer: int, subject: int, kind: EventKind, t: float) -> None:
        """Node `observer` changed its mind about node `subject`."""
        self.counts[kind.value] += 1
        if kind != EventKind.FAILED:
            return
        record = self._open.get(subject)
        if record is not None:
            if observer in record.observers and observer not in record.detected:
                record.detected[observer] = t - record.at
            return
        if subject in self.up and subject not in self.leaving \
                and self.reachable(observer, subject) \
                and not self._split_lately(observer, subject, t) \
                and t - self._restarted.get(subject, -math.inf) >= self.grace:
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
