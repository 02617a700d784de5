"""`px.Executor`: the standard `concurrent.futures.Executor` interface on p2pexec tasks.

Code written against an Executor (`submit`, `map`, `shutdown`, `with`) runs unchanged,
spread over the node's workers instead of a local pool. One resolver thread per executor
turns finished ObjectRefs into completed futures, in the order they finish.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor as _BaseExecutor
from concurrent.futures import Future
from typing import Any

from p2pexec import api
from p2pexec.errors import LocalUsageError


class Executor(_BaseExecutor):
    """Runs callables as p2pexec tasks; `options` apply to every task (num_cpus, ...)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._functions: dict[Callable, api.RemoteFunction] = {}
        self._pending: dict[bytes, tuple[api.ObjectRef, Future]] = {}
        self._finished: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._resolver = threading.Thread(target=self._resolve, name="p2pexec-executor",
                                          daemon=True)
        self._resolver.start()

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            remote_fn = self._functions.get(fn)
            if remote_fn is None:
                remote_fn = self._functions[fn] = api.RemoteFunction(fn, self._options)
            ref = remote_fn.remote(*args, **kwargs)
            future: Future = Future()  # stays PENDING (cancellable) until the task is done
            self._pending[ref.id] = (ref, future)
        api.on_ready(ref, self._finished.put)
        return future

    def _resolve(self) -> None:
        while True:
            object_id = self._finished.get()
            if object_id is None:
                return
            with self._lock:
                ref, future = self._pending.pop(object_id, (None, None))
                last = self._closed and not self._pending
            if ref is not None and future.set_running_or_notify_cancel():
                try:
                    future.set_result(api.get(ref))
                except BaseException as exc:
                    future.set_exception(exc)
            if last:
                return

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more work; pending futures still complete (or are cancelled with
        `cancel_futures`). With `wait`, return once they are done."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                for _ref, future in self._pending.values():
                    future.cancel()  # the task itself runs on; its result is dropped
            idle = not self._pending
        if idle:
            self._finished.put(None)
        if wait:
            self._resolver.join()

    def __enter__(self) -> Executor:
        if self._closed:
            raise LocalUsageError("this Executor has been shut down")
        return self
