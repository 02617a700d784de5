"""`px.Executor`: the standard `concurrent.futures.Executor` interface on p2pexec tasks.

Code written against an Executor (`submit`, `map`, `shutdown`, `with`) runs unchanged,
spread over the node's workers (and its peers') instead of a local pool. One resolver
thread per executor turns finished ObjectRefs into completed futures, in the order they
finish, and starts the calls that waited for one of the `max_workers` places.

As in the standard library, a future is pending (and can be cancelled) until its call
starts, then running; a call starts when it is handed to the node as a task. The
executor keeps nothing of a call once its future is done: not the callable, not the
result (the future holds that).
"""

from __future__ import annotations

import queue
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
    machine's CPU count)."""

    def __init__(self, max_workers: int | None = None, **options: Any) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._max_workers = max_workers
        self._options = options
        self._functions: dict[int, tuple[api.RemoteFunction, int]] = {}
        """By id of the callable: its remote function and how many of its calls run
        (dropped when none does, so no callable outlives its calls here)."""
        self._waiting: deque[tuple[Future, Callable, tuple, dict]] = deque()
        self._running: dict[bytes, tuple[api.ObjectRef, Future, int]] = {}
        self._finished: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._resolver = threading.Thread(target=self._resolve, name="p2pexec-executor",
                                          daemon=True)
        self._resolver.start()

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._max_workers is None or len(self._running) < self._max_workers:
                self._start(future, fn, args, kwargs)
            else:
                self._waiting.append((future, fn, args, kwargs))
        return future

    def _start(self, future: Future, fn: Callable, args: tuple, kwargs: dict) -> None:
        """Hand one call to the node (the lock held); a cancelled one is skipped."""
        if not future.set_running_or_notify_cancel():
            return
        key = id(fn)
        remote_fn, calls = self._functions.get(key, (None, 0))
        try:
            if remote_fn is None:
                remote_fn = api.RemoteFunction(fn, self._options)
            ref = remote_fn.remote(*args, **kwargs)
        except BaseException as exc:  # a bad option or argument fails this call only
            future.set_exception(exc)
            return
        self._functions[key] = (remote_fn, calls + 1)
        self._running[ref.id] = (ref, future, key)
        api.on_ready(ref, self._finished.put)

    def _resolve(self) -> None:
        while True:
            object_id = self._finished.get()
            if object_id is None:
                return
            with self._lock:
                ref, future, key = self._running.pop(object_id)
                remote_fn, calls = self._functions.pop(key)
                if calls > 1:
                    self._functions[key] = (remote_fn, calls - 1)
                del remote_fn
                while self._waiting and (len(self._running) < self._max_workers):
                    self._start(*self._waiting.popleft())
                last = self._closed and not self._running and not self._waiting
            try:
                future.set_result(api.get(ref))
            except BaseException as exc:
                future.set_exception(exc)
            del ref, future
            if last:
                return

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
            idle = not self._running and not self._waiting
        if idle:
            self._finished.put(None)
        if wait:
            self._resolver.join()

    def __enter__(self) -> Executor:
        if self._closed:
            raise LocalUsageError("this Executor has been shut down")
        return self
