"""Running one piece of work the node sent: load the callable, resolve the arguments, call,
and turn the result (or the exception) into payloads. No I/O."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any

from p2pexec.errors import ActorDiedError, ActorExit, RemoteProtocolError, TaskCancelledError
from p2pexec.exec import protocol as p
from p2pexec.exec import serialization
from p2pexec.exec.refs import DynamicObjectRefGenerator, ObjectRef, stream_item
from p2pexec.exec.task import ACTOR_CALL, ACTOR_CREATE, DYNAMIC, STREAMING

_running: ContextVar[p.Execute | None] = ContextVar("p2pexec_running", default=None)
"""The work running in this thread or asyncio task (a task blocked in get may run others
on its stack: each restores the one it interrupted)."""


def is_async_class(cls: type) -> bool:
    """An async actor's class: one with an `async def` method (Ray's rule), async
    generators included."""
    return any(inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
               for _name, member in inspect.getmembers(cls, inspect.isfunction))


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

    def run(self, work: p.Execute, mappings: list | None = None
            ) -> tuple[list, list[list[bytes]]]:
        """Payloads of the return values (or of the error) and the refs inside each.
        Shared-memory mappings opened for the arguments are added to `mappings`."""
        token = _running.set(work)
        try:
            result = self._call(work, mappings)
            if work.generator == STREAMING:
                return self._stream(work, iter(result))
            return self._results(work, result)
        except (Exception, ActorExit) as exc:
            return self._failure(exc, work)
        finally:
            _running.reset(token)

    async def run_async(self, work: p.Execute, mappings: list | None = None
                        ) -> tuple[list, list[list[bytes]]]:
        """`run` for an async actor's call: a coroutine method is awaited on the loop (a
        plain method runs right there, blocking the loop, as in Ray)."""
        token = _running.set(work)
        try:
            result = self._call(work, mappings)
            if inspect.isawaitable(result):
                result = await result
            if work.generator == STREAMING:
                if inspect.isasyncgen(result):
                    return await self._stream_async(work, result)
                return self._stream(work, iter(result))
            if inspect.isasyncgen(result):
                result = [value async for value in result]
            return self._results(work, result)
        except (Exception, ActorExit) as exc:
            return self._failure(exc, work)
        finally:
            _running.reset(token)

    def _results(self, work: p.Execute, result: Any) -> tuple[list, list[list[bytes]]]:
        if work.generator == DYNAMIC:
            result = self._dynamic(work, result)
        return self._store_results(result, work.return_ids, work.name)

    def _dynamic(self, work: p.Execute, values: Any) -> DynamicObjectRefGenerator:
        """Each value the generator yields becomes an object at once (so they are not all
        in memory together); the task's one result lists their refs."""
        refs: list[ObjectRef] = []
        limits = self.limits
        try:
            for value in values:
                refs.append(serialization.put_value(limits, value,
                                                    f"value {len(refs)} of {work.name}"))
        except Exception as exc:  # the values before stay; one last ref raises it
            refs.append(serialization.put_error(limits, exc, work.name))
        return DynamicObjectRefGenerator(refs)

    def _stream(self, work: p.Execute, values: Iterator) -> tuple[list, list[list[bytes]]]:
        """`_stream_async` over a plain generator: that coroutine never suspends then,
        so one `send` runs it to its end, here on this thread."""
        steps = self._stream_async(work, _Awaitable(values))
        try:
            steps.send(None)
        except StopIteration as finished:
            return finished.value
        raise RuntimeError("a plain generator's stream suspended")  # (cannot happen)

    async def _stream_async(self, work: p.Execute, values: AsyncIterator
                            ) -> tuple[list, list[list[bytes]]]:
        """Send each value as it is yielded (`limits.stream`), then the end or the error;
        the task's own result is then empty."""
        index = 0
        while True:
            try:
                value = await anext(values)
            except StopAsyncIteration:
                break
            except (Exception, ActorExit) as exc:
                return self._stream_error(work, index, exc)
            if not self._stream_one(work, index, value):
                return [], []
            index += 1
        self.limits.stream(work.task_id, index, None, [], True)
        return [], []

    def _stream_one(self, work: p.Execute, index: int, value: Any) -> bool:
        """Send value `index`; False when it cannot be pickled (that ends the stream,
        as the task's error)."""
        limits = self.limits
        try:
            payload, contained = serialization.to_payload(
                value, limits.inline_limit, limits.segment_name(stream_item(work.task_id,
                                                                            index)),
                f"value {index} of {work.name}")
        except Exception as exc:
            self._stream_error(work, index, exc)
            return False
        limits.stream(work.task_id, index, payload, contained, False)
        return True

    def _stream_error(self, work: p.Execute, index: int, exc: Exception | ActorExit
                      ) -> tuple[list, list[list[bytes]]]:
        """The generator raised after `index` values: they stay, the error ends it."""
        payloads, _ = self._failure(exc, work)
        self.limits.stream(work.task_id, index, payloads[0], [], True)
        return [], []

    @staticmethod
    def cancelled(work: p.Execute) -> list:
        """The payloads of work px.cancel stopped (or that never started)."""
        error = TaskCancelledError(f"task {work.name} was cancelled (px.cancel)")
        return [serialization.system_error_payload(error)] * len(work.return_ids)

    def current(self) -> tuple[p.Execute | None, p.Execute | None]:
        """(the work running now in this thread or asyncio task, the creation of this
        worker's actor), each or None."""
        return _running.get(), self.actor_work

    def _call(self, work: p.Execute, mappings: list | None) -> Any:
        arguments = serialization.from_payload(work.args, mappings)
        args, kwargs = _resolve_arguments(arguments, work.deps)
        if work.kind == ACTOR_CALL:
            return getattr(self.actor, work.method)(*args, **kwargs)
        target = self._load(work.code_hash, work.code)
        if work.kind == ACTOR_CREATE:
            self.actor_work = work
            self.actor = target(*args, **kwargs)
            return None
        return target(*args, **kwargs)

    def _failure(self, exc: Exception | ActorExit, work: p.Execute
                 ) -> tuple[list, list[list[bytes]]]:
        """The payloads of a call that raised: the task's error, or the actor's exit."""
        if isinstance(exc, ActorExit):
            self.exiting = True
            error = ActorDiedError(f"the actor exited in {work.name} (px.actor.exit_actor)")
            return [serialization.system_error_payload(error)] * len(work.return_ids), []
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
        """Payloads of the return values, and the ObjectRef ids inside each. A generator
        that raises part way keeps the values it yielded; the rest raise (as in Ray)."""
        error = None
        if len(return_ids) == 1:
            values = [result]
        else:
            values, error = _collect(result)
            if error is None and len(values) != len(return_ids):
                raise ValueError(f"task {name} declared num_returns={len(return_ids)} "
                                 f"but returned {len(values)} values")
        payloads, contained = [], []
        limits = self.limits
        for value, object_id in zip(values, return_ids, strict=False):
            payload, inside = serialization.to_payload(
                value, limits.inline_limit, limits.segment_name(object_id),
                f"the return value of {name}")
            payloads.append(payload)
            contained.append(inside)
        if error is not None:
            missing = len(return_ids) - len(payloads)
            payloads += [serialization.task_error_payload(error, name)] * missing
            contained += [[]] * missing
        if not any(contained):
            contained = []
        return payloads, contained


class _Awaitable:
    """A plain iterator as an async one whose steps never suspend."""

    def __init__(self, values: Iterator) -> None:
        self.values = values

    def __aiter__(self) -> _Awaitable:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self.values)
        except StopIteration:
            raise StopAsyncIteration from None


def _collect(result: Any) -> tuple[list, Exception | None]:
    """The values of a multi-value result (a tuple, list or generator), and the error a
    generator raised part way (None if it did not)."""
    try:
        iterator = iter(result)
    except TypeError:
        return [result], None
    values: list = []
    try:
        for value in iterator:
            values.append(value)
    except Exception as exc:
        return values, exc
    return values, None


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
