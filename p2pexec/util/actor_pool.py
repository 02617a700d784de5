"""`ActorPool`: work spread over a fixed set of actors, one call per actor at a time.

Ray's `ray.util.ActorPool`, same methods and rules: `fn(actor, value)` makes the call and
returns its ObjectRef; an actor is busy until that ref is ready; values submitted while
every actor is busy wait here, in order, for the next actor that frees up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from p2pexec import api
from p2pexec.errors import LocalUsageError

Call = Callable[[Any, Any], Any]
"""`fn(actor, value) -> ObjectRef`."""


class ActorPool:
    """A fixed pool of actor handles (see the module docstring)."""

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle: list[Any] = list(actors)
        self._busy: dict[bytes, tuple[int, Any]] = {}
        """By ref id: the submission's index and the actor running it."""
        self._by_index: dict[int, Any] = {}
        """Submissions out, by index: their refs."""
        self._next_index = 0
        self._next_return = 0
        self._waiting: deque[tuple[Call, Any]] = deque()

    # ---- submitting ----
    def submit(self, fn: Call, value: Any) -> None:
        """Call `fn(actor, value)` on an idle actor now, or on the next one to free up."""
        if self._idle:
            actor = self._idle.pop()
            ref = fn(actor, value)
            if not isinstance(ref, api.ObjectRef):
                self._idle.append(actor)
                raise LocalUsageError(f"ActorPool: fn(actor, value) must return the "
                                      f"ObjectRef of its call, got {type(ref).__name__}")
            self._busy[ref.id] = (self._next_index, actor)
            self._by_index[self._next_index] = ref
            self._next_index += 1
        else:
            self._waiting.append((fn, value))

    def map(self, fn: Call, values: Iterable[Any]) -> Iterator[Any]:
        """The results of `fn` over `values`, in their order (iterate to get them)."""
        self._submit_all(fn, values)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn: Call, values: Iterable[Any]) -> Iterator[Any]:
        """The results of `fn` over `values`, as they finish."""
        self._submit_all(fn, values)
        while self.has_next():
            yield self.get_next_unordered()

    def _submit_all(self, fn: Call, values: Iterable[Any]) -> None:
        """Results of earlier submissions nobody fetched are dropped (as in Ray), then
        every value is submitted."""
        while self.has_next():
            self.get_next_unordered()
        for value in values:
            self.submit(fn, value)

    # ---- results ----
    def has_next(self) -> bool:
        """Whether a submitted call's result is still to be fetched."""
        return bool(self._by_index) or bool(self._waiting)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False
                 ) -> Any:
        """The next result in submission order; `TimeoutError` after `timeout` seconds
        (then, with `ignore_if_timedout`, that call is skipped for good)."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        if self._next_return >= self._next_index:
            raise LocalUsageError("get_next() cannot follow get_next_unordered() while "
                                  "results are pending")
        ref = self._by_index[self._next_return]
        ready, _ = api.wait([ref], timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                self._finish(ref)
            raise TimeoutError(f"no result within {timeout} s")
        self._finish(ref)
        return api.get(ref)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False) -> Any:
        """Whichever result is ready first; `TimeoutError` after `timeout` seconds (then,
        with `ignore_if_timedout`, the oldest call is skipped for good)."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        refs = list(self._by_index.values())
        ready, _ = api.wait(refs, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                self._finish(refs[0])
            raise TimeoutError(f"no result within {timeout} s")
        self._finish(ready[0])
        return api.get(ready[0])

    def _finish(self, ref: Any) -> None:
        """The call of `ref` is over: its actor takes the next waiting value."""
        index, actor = self._busy.pop(ref.id)
        del self._by_index[index]
        self._next_return = index + 1 if index >= self._next_return else self._next_return
        self._return(actor)

    def _return(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._waiting:
            self.submit(*self._waiting.popleft())

    # ---- actors ----
    def has_free(self) -> bool:
        """Whether an actor is idle (and no submitted value waits for one)."""
        return bool(self._idle) and not self._waiting

    def pop_idle(self) -> Any:
        """Take an idle actor out of the pool (None when none is idle)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool (it takes a waiting value at once, if any)."""
        if actor in self._idle or any(a == actor for _, a in self._busy.values()):
            raise LocalUsageError("that actor is already in the pool")
        self._return(actor)
