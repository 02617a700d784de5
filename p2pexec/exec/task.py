"""What a submitter tells its node about a task, actor creation or actor call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pexec.exec.runtime_env import RuntimeEnv
from p2pexec.net.codec import message

TASK, ACTOR_CREATE, ACTOR_CALL = 0, 1, 2
NOT_GENERATOR, DYNAMIC, STREAMING = 0, 1, 2
"""How a generator's values come back (`TaskSpec.generator`): as its declared returns,
as one ref to a list of refs made when it ends (`num_returns="dynamic"`), or one by
one while it runs (`num_returns="streaming"`)."""

DEFAULT, SPREAD, NODE_AFFINITY = 0, 1, 2
"""Scheduling strategies (`TaskSpec.strategy`): where thieves take it; round robin over the
live nodes, sent there by its owner; one node (`TaskSpec.affinity`)."""


@message(110)
@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One unit of work, immutable once submitted: the submitting node keeps it as the
    lineage of its results, and the same spec can cross to another node unchanged."""

    task_id: bytes
    kind: int
    callable_hash: bytes | None
    """Function or class hash (shipped once per worker); None for actor calls."""
    method: str | None
    args: Any
    """Payload of the (args, kwargs) tuple."""
    deps: tuple[bytes, ...]
    """Top-level ObjectRef arguments: resolved to values before the task runs."""
    contained: tuple[bytes, ...]
    """Every ObjectRef inside the arguments (and, for an actor call, the actor's own
    creation object): kept alive while the task may still run."""
    return_ids: tuple[bytes, ...]
    name: str
    resources: dict[str, float] = field(default_factory=dict)
    """What it needs to run, {"CPU": 1.0, "gpu": 1.0}; never changed after submission."""
    max_retries: int = 3
    retry_exceptions: bool = False
    actor_id: bytes | None = None
    actor_name: str | None = None
    max_restarts: int = 0
    detached: bool = False
    """An actor created with lifetime="detached": it outlives the driver that made it."""
    max_concurrency: int = 1
    """An actor's creation: how many of its calls may run at once (on a thread pool, or
    on one event loop for an async actor); 1 runs them one at a time, in order."""
    generator: int = NOT_GENERATOR
    """A generator function's values: NOT_GENERATOR, DYNAMIC or STREAMING."""
    namespace: str = ""
    """The namespace of the driver (or task) that submitted it: where the names it (and
    what it submits) looks up and creates live."""
    strategy: int = DEFAULT
    """Where it may run (Ray's `scheduling_strategy`): DEFAULT, SPREAD or NODE_AFFINITY.
    Only DEFAULT work is stolen; the owner sends the rest where its strategy says."""
    affinity: bytes | None = None
    """NODE_AFFINITY's node (raw id)."""
    soft: bool = False
    """NODE_AFFINITY only: when that node is not a live member or lacks the resources,
    run anywhere (as DEFAULT) instead of failing."""
    runtime_env: RuntimeEnv | None = None
    """Its environment variables and packages (a task or actor creation; calls run in
    their actor's): it runs on a worker started for exactly this environment."""
    job: bytes = b""
    """The driver it belongs to (`output.job_id`): where what it prints goes. A task
    submitted by a task or actor has its submitter's job (an actor's: its creator's)."""

    def __post_init__(self) -> None:
        if self.strategy and (self.strategy not in (SPREAD, NODE_AFFINITY)
                              or (self.affinity is None) != (self.strategy == SPREAD)):
            raise ValueError(f"scheduling strategy {self.strategy} with affinity "
                             f"{self.affinity!r} is not one TaskSpec knows")
