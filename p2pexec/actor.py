"""`px.actor.exit_actor()`: an actor ends itself, as with Ray's `ray.actor.exit_actor`."""

from __future__ import annotations

from typing import NoReturn

from p2pexec.errors import ActorExit, LocalUsageError
from p2pexec.exec import context


def exit_actor() -> NoReturn:
    """End the actor this runs in, for good (no restart): the call that exits gets
    `ActorDiedError`, and so do the calls queued after it."""
    runtime = context.runtime
    if not context.in_worker or runtime.runner.actor_work is None:
        raise LocalUsageError("px.actor.exit_actor() works only inside an actor's method")
    raise ActorExit()
