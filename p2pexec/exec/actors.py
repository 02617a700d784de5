"""Actors known to this node: their state, call queues and names. Sans-IO.

An actor is a creation task plus a dedicated worker; its calls queue here in submission
order and go to that worker once the head call's arguments are ready. This table keeps
what an actor is and whether it lives; the scheduler moves the tasks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from p2pexec.exec.resources import CPU
from p2pexec.exec.task import TaskSpec


@dataclass(slots=True)
class ActorState:
    actor_id: bytes
    creation: TaskSpec
    worker: int
    name: str | None
    restarts_left: int
    alive: bool = False
    """Its constructor finished: calls may be sent."""
    dead_reason: str | None = None
    calls: deque[bytes] = field(default_factory=deque)
    """Calls not yet sent, in submission order."""
    in_flight: list[bytes] = field(default_factory=list)
    """Calls sent to its worker, oldest first."""
    holds: dict[str, float] = field(default_factory=dict)
    """The resources its creation acquired, kept for the actor's whole life."""
    creator: int = 0
    """Holder id of the process that created it: unless detached, it stops with it."""


class ActorTable:
    """Actors by id and by name; actors whose creation waits for resources."""

    def __init__(self) -> None:
        self.actors: dict[bytes, ActorState] = {}
        self.named: dict[str, bytes] = {}
        self.waiting: list[bytes] = []
        """Actors whose creation did not fit: retried at the next scheduling pass."""
        self.cpus_for_life = 0.0
        """CPUs the live actors here hold, or will once started, for their whole lives
        (kept as actors come and go: stealing asks for it often)."""

    def get(self, actor_id: bytes | None) -> ActorState | None:
        return self.actors.get(actor_id) if actor_id is not None else None

    def alive(self, actor_id: bytes) -> bool:
        """Known here and not dead (it may still be starting)."""
        actor = self.actors.get(actor_id)
        return actor is not None and actor.dead_reason is None

    def lookup(self, name: str) -> bytes | None:
        return self.named.get(name)

    def name_taken(self, name: str | None) -> bool:
        return name is not None and name in self.named and self.alive(self.named[name])

    def add(self, spec: TaskSpec, worker_id: int, creator: int) -> ActorState:
        actor = ActorState(spec.actor_id, spec, worker_id, spec.actor_name, spec.max_restarts,
                           creator=creator)
        self._replace(actor)
        if spec.actor_name is not None:
            self.named[spec.actor_name] = spec.actor_id
        return actor

    def add_dead(self, spec: TaskSpec, reason: str) -> None:
        """An actor that never started: remember why, so its calls fail saying so."""
        self._replace(ActorState(spec.actor_id, spec, 0, None, 0, dead_reason=reason))

    def _replace(self, actor: ActorState) -> None:
        self.cpus_for_life -= _life_cpus(self.actors.get(actor.actor_id))
        self.actors[actor.actor_id] = actor
        self.cpus_for_life += _life_cpus(actor)

    def mark_dead(self, actor: ActorState, reason: str) -> list[bytes]:
        """The actor is dead for good; returns the calls it will never run."""
        self.cpus_for_life -= _life_cpus(actor)
        actor.alive = False
        actor.dead_reason = reason
        pending = list(actor.calls) + actor.in_flight
        actor.calls.clear()
        actor.in_flight = []
        if actor.name is not None and self.named.get(actor.name) == actor.actor_id:
            del self.named[actor.name]
        return pending

    def validate(self) -> None:
        """A dead actor has nothing queued and holds nothing; names point at live actors."""
        for actor in self.actors.values():
            if actor.dead_reason is not None:
                assert not actor.calls and not actor.in_flight and not actor.holds, (
                    f"dead actor {actor.creation.name} still has calls or resources")
        for name, actor_id in self.named.items():
            assert self.alive(actor_id), f"the name {name!r} points at a dead actor"
        expected = sum(_life_cpus(actor) for actor in self.actors.values())
        assert abs(self.cpus_for_life - expected) < 1e-9, (self.cpus_for_life, expected)

    def take_waiting(self) -> list[ActorState]:
        """Actors whose creation waited for resources and are still worth trying."""
        waiting, self.waiting = self.waiting, []
        return [actor for actor_id in waiting
                if (actor := self.actors.get(actor_id)) is not None
                and actor.dead_reason is None]


def _life_cpus(actor: ActorState | None) -> float:
    """CPUs a live actor holds (or will) for its life; none for a dead or absent one."""
    if actor is None or actor.dead_reason is not None:
        return 0.0
    return actor.creation.resources.get(CPU, 0.0)
