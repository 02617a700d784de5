"""What a submitter tells its node about a task, actor creation or actor call."""

from __future__ import annotations

from dataclasses import dataclass, field

TASK, ACTOR_CREATE, ACTOR_CALL = 0, 1, 2


@dataclass(slots=True)
class TaskSpec:
    """One unit of work. The submitting node keeps it as the lineage of its results."""

    task_id: bytes
    kind: int
    callable_hash: bytes | None
    """Function or class hash (shipped once per worker); None for actor calls."""
    method: str | None
    args: list
    """Payload of the (args, kwargs) tuple."""
    deps: list[bytes]
    """Top-level ObjectRef arguments: resolved to values before the task runs."""
    contained: list[bytes]
    """Every ObjectRef inside the arguments: kept alive while the task may still run."""
    return_ids: list[bytes]
    name: str
    resources: dict[str, float] = field(default_factory=dict)
    max_retries: int = 3
    retry_exceptions: bool = False
    actor_id: bytes | None = None
    actor_name: str | None = None
    max_restarts: int = 0

    def to_wire(self) -> list:
        return [self.task_id, self.kind, self.callable_hash, self.method, self.args, self.deps,
                self.contained, self.return_ids, self.name, self.resources, self.max_retries,
                self.retry_exceptions, self.actor_id, self.actor_name, self.max_restarts]

    @classmethod
    def from_wire(cls, fields: list) -> TaskSpec:
        return cls(*fields)
