"""`Pool`: `multiprocessing.Pool` on p2pexec tasks (Ray's `ray.util.multiprocessing.Pool`).

The standard library's methods and arguments (`map`, `imap`, `imap_unordered`,
`starmap`, `apply` and their `_async` forms with callbacks, `chunksize`, `close`,
`terminate`, `join`, `with`): each chunk of items is one task, which runs wherever the
mesh has a free CPU, so a program written for a local pool runs on the cluster
unchanged. Where it differs, and why:
- `processes` sets the default chunk size, as in the standard library, but not how many
  chunks run at once: the cluster's CPUs do (None: the cluster's CPU count);
- the `initializer` runs once in each worker process that runs a chunk of this pool,
  before its first chunk (the standard library runs it as each pool process starts);
- `maxtasksperchild` is not supported: worker processes belong to the node, not the pool;
- `map`, `starmap` and their `_async` forms run at most `TASKS_PER_CPU` tasks per CPU of
  the cluster: when there are more chunks, a task runs several, one after another (as
  joblib's auto-batching groups calls). A task costs the node tens of microseconds
  however little it does, about what a whole chunk of tiny items costs the standard
  library's pool; the results, their order and the first error raised are the same.
  `imap` and `imap_unordered` keep one task per chunk, so each chunk's results come as
  soon as it is done.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from p2pexec import api
from p2pexec.errors import LocalUsageError

_initialized: set[bytes] = set()
"""In a worker process: the pools whose initializer has run here."""
TASKS_PER_CPU = 8
"""Most tasks one `map` runs per CPU of the cluster: enough to even out chunks of
different lengths (the standard library's default chunk size makes 4 per process)."""


class _Chunks:
    """What a task runs: `func` over the items of its chunks (unpacked with `star`),
    after this pool's initializer if this process has not run it yet. One per call of
    the pool, so the function is pickled once per map, not once per chunk."""

    def __init__(self, func: Callable, star: bool,
                 init: tuple[bytes, Callable, tuple] | None) -> None:
        self.func, self.star, self.init = func, star, init

    def __call__(self, chunks: list[list]) -> list:
        init = self.init
        if init is not None and init[0] not in _initialized:
            init[1](*init[2])
            _initialized.add(init[0])
        func = self.func
        if self.star:
            return [func(*item) for chunk in chunks for item in chunk]
        return [func(item) for chunk in chunks for item in chunk]


class AsyncResult:
    """The result of an `_async` call: `get(timeout)`, `wait(timeout)`, `ready()`,
    `successful()`, as the standard library's."""

    def __init__(self, refs: list[Any], combine: Callable[[list], Any],
                 callback: Callable[[Any], None] | None,
                 error_callback: Callable[[BaseException], None] | None) -> None:
        self._refs = refs
        self._combine = combine
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        threading.Thread(target=self._collect, args=(callback, error_callback),
                         name="p2pexec-pool-result", daemon=True).start()

    def _collect(self, callback: Callable | None, error_callback: Callable | None) -> None:
        try:
            self._value = self._combine(api.get(self._refs))
        except BaseException as exc:
            self._error = exc
        self._done.set()
        if self._error is None and callback is not None:
            callback(self._value)
        elif self._error is not None and error_callback is not None:
            error_callback(self._error)

    def ready(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def get(self, timeout: float | None = None) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value


class Pool:
    """A process pool whose processes are the cluster's workers (module docstring)."""

    def __init__(self, processes: int | None = None, initializer: Callable | None = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: int | None = None,
                 **task_options: Any) -> None:
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            raise LocalUsageError("maxtasksperchild is not supported: p2pexec's worker "
                                  "processes belong to the node, not to the pool")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._processes = processes or max(1, int(api.cluster_resources().get("CPU", 1)))
        self._init = None if initializer is None else (os.urandom(16), initializer,
                                                       tuple(initargs))
        self._options = task_options
        self._state = "running"

    # ---- the standard library's interface ----
    def apply(self, func: Callable, args: Iterable[Any] = (),
              kwds: dict[str, Any] | None = None) -> Any:
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable, args: Iterable[Any] = (),
                    kwds: dict[str, Any] | None = None, callback: Callable | None = None,
                    error_callback: Callable | None = None) -> AsyncResult:
        call = _Bound(func, tuple(args), dict(kwds or {}))
        return AsyncResult(self._submit(call, [[()]], True, 1), lambda parts: parts[0][0],
                           callback, error_callback)

    def map(self, func: Callable, iterable: Iterable[Any], chunksize: int | None = None
            ) -> list:
        return self._gather(func, iterable, chunksize, star=False)

    def starmap(self, func: Callable, iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list:
        return self._gather(func, iterable, chunksize, star=True)

    def map_async(self, func: Callable, iterable: Iterable[Any], chunksize: int | None = None,
                  callback: Callable | None = None,
                  error_callback: Callable | None = None) -> AsyncResult:
        return self._async(func, iterable, chunksize, False, callback, error_callback)

    def starmap_async(self, func: Callable, iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None, callback: Callable | None = None,
                      error_callback: Callable | None = None) -> AsyncResult:
        return self._async(func, iterable, chunksize, True, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable[Any], chunksize: int = 1
             ) -> Iterator[Any]:
        """Results in order, each chunk as soon as it and those before it are done."""
        refs = self._submit(func, self._chunks(iterable, chunksize), False, 1)
        for ref in refs:
            yield from api.get(ref)

    def imap_unordered(self, func: Callable, iterable: Iterable[Any], chunksize: int = 1
                       ) -> Iterator[Any]:
        """Results as their chunks finish."""
        pending = self._submit(func, self._chunks(iterable, chunksize), False, 1)
        while pending:
            ready, pending = api.wait(pending, num_returns=1)
            yield from api.get(ready[0])

    def close(self) -> None:
        """No more work may be submitted (what was submitted still runs)."""
        self._state = "closed"

    def terminate(self) -> None:
        """No more work may be submitted; work already running is left to finish (its
        results are no longer waited for)."""
        self._state = "terminated"

    def join(self) -> None:
        if self._state == "running":
            raise ValueError("Pool is still running")

    def __enter__(self) -> Pool:
        if self._state != "running":
            raise ValueError("Pool not running")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    # ---- internals ----
    def _chunks(self, iterable: Iterable[Any], chunksize: int | None) -> list[list]:
        items = list(iterable)
        if not items:  # nothing to run (and no chunk size to check, as the standard library)
            return []
        if chunksize is None:  # the standard library's rule
            chunksize, extra = divmod(len(items), self._processes * 4)
            chunksize += bool(extra)
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        it = iter(items)
        return [chunk for chunk in iter(lambda: list(itertools.islice(it, chunksize)), [])]

    def _submit(self, func: Callable, chunks: list[list], star: bool, per_task: int
                ) -> list[Any]:
        """One task per `per_task` chunks, in order."""
        if self._state != "running":
            raise ValueError("Pool not running")
        run = api.RemoteFunction(_Chunks(func, star, self._init),
                                 {"name": getattr(func, "__qualname__", "pool"),
                                  **self._options})
        return [run.remote(chunks[start:start + per_task])
                for start in range(0, len(chunks), per_task)]

    def _map(self, func: Callable, iterable: Iterable[Any], chunksize: int | None,
             star: bool) -> list[Any]:
        """The tasks of a map: at most `TASKS_PER_CPU` per CPU of the cluster."""
        chunks = self._chunks(iterable, chunksize)
        cpus = max(self._processes, int(api.cluster_resources().get("CPU", 1)))
        return self._submit(func, chunks, star,
                            max(1, -(-len(chunks) // (TASKS_PER_CPU * cpus))))

    def _gather(self, func: Callable, iterable: Iterable[Any], chunksize: int | None,
                star: bool) -> list:
        refs = self._map(func, iterable, chunksize, star)
        return list(itertools.chain.from_iterable(api.get(refs)))

    def _async(self, func: Callable, iterable: Iterable[Any], chunksize: int | None,
               star: bool, callback: Callable | None,
               error_callback: Callable | None) -> AsyncResult:
        refs = self._map(func, iterable, chunksize, star)
        return AsyncResult(refs, lambda parts: list(itertools.chain.from_iterable(parts)),
                           callback, error_callback)


class _Bound:
    """`func(*args, **kwds)` as a callable of no argument (what `apply` runs)."""

    def __init__(self, func: Callable, args: tuple, kwds: dict[str, Any]) -> None:
        self.func, self.args, self.kwds = func, args, kwds

    def __call__(self) -> Any:
        return self.func(*self.args, **self.kwds)

