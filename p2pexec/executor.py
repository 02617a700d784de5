"""`px.Executor`: the standard `concurrent.futures.Executor` interface on p2pexec tasks.

Code written against an Executor (`submit`, `map`, `shutdown`, `with`) runs unchanged,
spread over the node's workers (and its peers') instead of a local pool. Each call's
future completes from its ref's future (one resolver thread per process, shared with
`await ref`), which also starts the calls that waited for one of the `max_workers`
places.

As in the standard library, a future is pending (and can be cancelled) until its call
starts, then running; a call starts when it is handed to the node as a task. The
executor keeps nothing of a call once its future is done: not the callable, not the
result (the future holds that).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor as _BaseExecutor
from concurrent.futures import Future
from typing import Any

from p2pexec import api
from p2pexec.errors import LocalUsageError


class Executor(_BaseExecutor):
    """Runs callables as p2pexec tasks; `options` apply to every task (num_cpus, ...).

    `max_workers`: how many calls run at once, as in the standard library (more wait
    in the executor, pending); None hands every call to the node at once, where the
    cluster's CPUs are the limit (the standard library's default would be this
    machine's CPU count). Drivers only: each call's result comes through its ref's
    future (`ObjectRef.future`)."""

    def __init__(self, max_workers: int | None = None, **options: Any) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._max_workers = max_workers
        self._options = options
        self._functions: dict[int, tuple[api.RemoteFunction, int]] = {}
        """By id of the callable: its remote function and how many of its calls run
        (dropped when none does, so no callable outlives its calls here)."""
        self._waiting: deque[tuple[Future, Callable, tuple, dict]] = deque()
        self._running = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        """Set while no call runs or waits (what `shutdown(wait=True)` waits for)."""
        self._idle.set()
        self._closed = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        started = None
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._max_workers is None or self._running < self._max_workers:
                started = self._start(future, fn, args, kwargs)
            else:
                self._waiting.append((future, fn, args, kwargs))
            self._settle()
        self._watch(started)
        return future

    def _start(self, future: Future, fn: Callable, args: tuple, kwargs: dict
               ) -> tuple[api.ObjectRef, Future, int] | None:
        """Hand one call to the node (the lock held): what to watch, or None when it
        was cancelled while waiting or could not be submitted."""
        if not future.set_running_or_notify_cancel():
            return None
        key = id(fn)
        remote_fn, calls = self._functions.get(key, (None, 0))
        try:
            if remote_fn is None:
                remote_fn = api.RemoteFunction(fn, self._options)
            ref = remote_fn.remote(*args, **kwargs)
        except BaseException as exc:  # a bad option or argument fails this call only
            future.set_exception(exc)
            return None
        self._functions[key] = (remote_fn, calls + 1)
        self._running += 1
        return ref, future, key

    def _watch(self, started: tuple[api.ObjectRef, Future, int] | None) -> None:
        """Complete the call's future from its ref's (outside the lock: a ref already
        done runs the callback at once, here)."""
        if started is not None:
            ref, future, key = started
            ref.future().add_done_callback(lambda done: self._done(done, future, key))

    def _done(self, done: Future, future: Future, key: int) -> None:
        error = done.exception()
        if error is None:
            future.set_result(done.result())
        else:
            future.set_exception(error)
        with self._lock:
            remote_fn, calls = self._functions.pop(key)
            if calls > 1:
                self._functions[key] = (remote_fn, calls - 1)
            del remote_fn
            self._running -= 1
            started = []
            while self._waiting and self._running < self._max_workers:
                started.append(self._start(*self._waiting.popleft()))
            self._settle()
        for call in started:
            self._watch(call)

    def _settle(self) -> None:
        """(The lock held.) Idle once nothing runs or waits."""
        if not self._running and not self._waiting:
            self._idle.set()
        else:
            self._idle.clear()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more work; calls already submitted still run and complete, except,
        with `cancel_futures`, those that have not started (cancelled). With `wait`,
        return once every call has finished."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                for future, *_call in self._waiting:
                    future.cancel()
                self._waiting.clear()
            self._settle()
        if wait:
            self._idle.wait()

    def __enter__(self) -> Executor:
        if self._closed:
            raise LocalUsageError("this Executor has been shut down")
        return self
