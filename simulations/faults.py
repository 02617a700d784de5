"""What a scenario does to the cluster, and when: faults, workload and their schedule.

A schedule is a list of frozen events, each with the simulated time it happens at. Faults
are what `--shrink` may drop; workload (publishing records, submitting tasks) stays, so a
shrunk schedule still asks the same of the cluster. Schedules round-trip through JSON
(`--schedule FILE` replays one).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    at: float
    """Simulated seconds from the start."""
    kind: ClassVar[str] = ""
    is_fault: ClassVar[bool] = True

    def describe(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)}"
                           for f in dataclasses.fields(self) if f.name != "at")
        return f"{self.at:8.2f} s  {self.kind} {fields}".rstrip()


@dataclass(frozen=True)
class NodeEvent(Event):
    node: int
    """The node's index, 0 to nodes - 1."""


class Crash(NodeEvent):
    """The node stops at once, as if unplugged."""

    kind: ClassVar[str] = "crash"


class Leave(NodeEvent):
    """The node leaves gracefully (announces it, then stops)."""

    kind: ClassVar[str] = "leave"


class Join(NodeEvent):
    """The node (down) starts as a fresh process and joins."""

    kind: ClassVar[str] = "join"


@dataclass(frozen=True)
class Partition(Event):
    """Messages flow only within each group; nodes in no group form one more."""

    groups: tuple[tuple[int, ...], ...]
    kind: ClassVar[str] = "partition"


@dataclass(frozen=True)
class Heal(Event):
    """Every partition ends."""

    kind: ClassVar[str] = "heal"


@dataclass(frozen=True)
class Links(Event):
    """Every link gets this datagram loss and one-way latency from now on."""

    loss: float
    latency: float
    kind: ClassVar[str] = "links"


@dataclass(frozen=True)
class Publish(NodeEvent):
    """Workload: the node publishes DHT record number `key`."""

    key: int
    kind: ClassVar[str] = "publish"
    is_fault: ClassVar[bool] = False


@dataclass(frozen=True)
class Resolve(Event):
    """Workload: random live nodes look up every record whose publisher is up."""

    kind: ClassVar[str] = "resolve"
    is_fault: ClassVar[bool] = False


@dataclass(frozen=True)
class Submit(NodeEvent):
    """Workload: the node submits `tasks` tasks (as a driver attached to it would)."""

    tasks: int
    kind: ClassVar[str] = "submit"
    is_fault: ClassVar[bool] = False


KINDS: dict[str, type[Event]] = {cls.kind: cls for cls in
                                 (Crash, Leave, Join, Partition, Heal, Links, Publish,
                                  Resolve, Submit)}


def to_json(schedule: list[Event]) -> str:
    rows = []
    for event in schedule:
        row: dict[str, Any] = {"kind": event.kind}
        row.update(dataclasses.asdict(event))
        rows.append(row)
    return json.dumps(rows, indent=1)


_NUMBERS = {"at", "loss", "latency"}
_COUNTS = {"node", "key", "tasks"}


def _checked(event: Event) -> Event:
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if f.name in _NUMBERS:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                and value >= 0
        elif f.name in _COUNTS:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:  # groups
            ok = all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                     for group in value for i in group)
        if not ok:
            raise ValueError(f"{event.kind} has a bad {f.name}: {value!r}")
    return event


def from_json(text: str) -> list[Event]:
    """A schedule from `to_json`'s output; a clear error for anything else."""
    try:
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise TypeError(f"a {type(rows).__name__}, not a list")
        schedule: list[Event] = []
        for row in rows:
            row = dict(row)
            cls = KINDS[row.pop("kind")]
            if "groups" in row:
                row["groups"] = tuple(tuple(group) for group in row["groups"])
            schedule.append(_checked(cls(**row)))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a schedule (a JSON list of events with a known kind): "
                         f"{exc!r}") from None
    return sorted(schedule, key=lambda event: event.at)


def load(path: Path) -> list[Event]:
    return from_json(path.read_text())
