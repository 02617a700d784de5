"""Running one piece of work the node sent: load the callable, resolve the arguments, call,
and turn the result (or the exception) into payloads. No I/O."""

from __future__ import annotations

import pickle
from typing import Any

from p2pexec.errors import ActorDiedError, ActorExit, RemoteProtocolError
from p2pexec.exec import protocol as p
from p2pexec.exec import serialization
from p2pexec.exec.refs import ObjectRef
from p2pexec.exec.task import ACTOR_CALL, ACTOR_CREATE


class TaskRunner:
    """Runs the work the node sends (a task, an actor's constructor or method) and turns
    the result into payloads. No I/O: worker processes and the in-process executor of
    simulations (`exec.inline`) both use it. `limits` supplies `inline_limit` and
    `segment_name` (the owning node's)."""

    def __init__(self, limits: Any) -> None:
        self.limits = limits
        self.callables: dict[bytes, Any] = {}
        self.unloaded: dict[bytes, bytes] = {}
        """Code shipped with tasks that were handed back before they ran."""
        self.actor: Any = None
        self.actor_work: p.Execute | None = None
        """The creation of the actor this worker holds (its id and resources)."""
        self.exiting = False
        """The actor called exit_actor: the worker ends once the call's result is out."""
        self.running: list[p.Execute] = []
        """What runs now, innermost last (a task blocked in get runs others on its stack)."""

    def run(self, work: p.Execute, mappings: list | None = None
            ) -> tuple[list, list[list[bytes]]]:
        """Payloads of the return values (or of the error) and the refs inside each.
        Shared-memory mappings opened for the arguments are added to `mappings`."""
        self.running.append(work)
        try:
            return self._run(work, mappings)
        finally:
            self.running.pop()

    def current(self) -> tuple[p.Execute | None, p.Execute | None]:
        """(the work running now, the creation of this worker's actor), each or None."""
        return (self.running[-1] if self.running else None), self.actor_work

    def _run(self, work: p.Execute, mappings: list | None) -> tuple[list, list[list[bytes]]]:
        try:
            arguments = serialization.from_payload(work.args, mappings)
            args, kwargs = _resolve_arguments(arguments, work.deps)
            if work.kind == ACTOR_CALL:
                result = getattr(self.actor, work.method)(*args, **kwargs)
            else:
                target = self._load(work.code_hash, work.code)
                if work.kind == ACTOR_CREATE:
                    self.actor_work = work
                    self.actor = target(*args, **kwargs)
                    result = None
                else:
                    result = target(*args, **kwargs)
            return self._store_results(result, work.return_ids, work.name)
        except ActorExit:
            self.exiting = True
            error = ActorDiedError(f"the actor exited in {work.name} (px.actor.exit_actor)")
            return [serialization.system_error_payload(error)] * len(work.return_ids), []
        except Exception as exc:
            return [serialization.task_error_payload(exc, work.name)] * len(work.return_ids), []

    def _load(self, code_hash: bytes | None, code_bytes: bytes | None) -> Any:
        target = self.callables.get(code_hash)
        if target is None:
            code_bytes = code_bytes or self.unloaded.pop(code_hash, None)
            if code_bytes is None:
                raise RemoteProtocolError("node sent a task for a function it never shipped")
            target = self.callables[code_hash] = pickle.loads(code_bytes)
        return target

    def _store_results(self, result: Any, return_ids: list[bytes], name: str
                       ) -> tuple[list, list[list[bytes]]]:
        """Payloads of the return values, and the ObjectRef ids inside each."""
        if len(return_ids) == 1:
            values = [result]
        else:
            try:
                values = list(result)
            except TypeError:
                values = [result]
            if len(values) != len(return_ids):
                raise ValueError(f"task {name} declared num_returns={len(return_ids)} "
                                 f"but returned {len(values)} values")
        payloads, contained = [], []
        limits = self.limits
        for value, object_id in zip(values, return_ids, strict=True):
            payload, inside = serialization.to_payload(
                value, limits.inline_limit, limits.segment_name(object_id),
                f"the return value of {name}")
            payloads.append(payload)
            contained.append(inside)
        if not any(contained):
            contained = []
        return payloads, contained


def _resolve_arguments(arguments: tuple, deps: dict[bytes, Any]) -> tuple[tuple, dict]:
    """Replace top-level ObjectRef arguments by their values (refs in containers stay)."""
    args, kwargs = arguments
    if not deps:
        return args, kwargs
    values = {object_id: serialization.from_payload(payload)
              for object_id, payload in deps.items()}
    args = tuple(values[a.id] if isinstance(a, ObjectRef) and a.id in values else a
                 for a in args)
    kwargs = {k: values[v.id] if isinstance(v, ObjectRef) and v.id in values else v
              for k, v in kwargs.items()}
    return args, kwargs
