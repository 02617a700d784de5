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


Instruction = Send | StartWorker | StopWorker | Completed | Unlink | Recycle | Warn
