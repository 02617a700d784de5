"""What the scheduler tells its driver to do, one frozen class each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Send:
    worker: int
    message: list


@dataclass(frozen=True, slots=True)
class StartWorker:
    worker: int
    actor_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class StopWorker:
    worker: int


@dataclass(frozen=True, slots=True)
class Completed:
    """These objects now have a value (or an error); wake whoever waits in the driver."""

    object_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Unlink:
    segment: str


@dataclass(frozen=True, slots=True)
class Recycle:
    """A finished task's argument segment that no process maps any more: reuse it."""

    segment: str


@dataclass(frozen=True, slots=True)
class Warn:
    text: str


@dataclass(frozen=True, slots=True)
class Fetch:
    """A process here received a ref to an object another node made: fetch a copy (the
    answer is a `Fetched` or `FetchFailed` event)."""

    object_id: bytes


@dataclass(frozen=True, slots=True)
class Holding:
    """This node now holds (`held`) or no longer holds a value in shared memory: tell
    the cluster, so other nodes find a copy here."""

    object_id: bytes
    held: bool


@dataclass(frozen=True, slots=True)
class Spill:
    """Shared memory is over the node's cap: copy this object's segment to the spill dir
    (the answer is a `SpillEnded` event); readers then map the copy."""

    object_id: bytes
    segment: str


@dataclass(frozen=True, slots=True)
class DeleteSpilled:
    """Remove a spilled segment's file: its object was freed."""

    segment: str


Instruction = (Send | StartWorker | StopWorker | Completed | Unlink | Recycle | Warn | Fetch
               | Holding | Spill | DeleteSpilled)
