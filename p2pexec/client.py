"""The sync facade for user code: a node on a background trio thread, embedded.

User threads hand work to the node loop through `ExecService.post` (a deque plus at most
one wake-up per burst) and wait on threading events the loop sets when results arrive.
Values are deserialised in the user's thread, never in the node loop.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

from p2pexec.config import NodeConfig
from p2pexec.errors import LocalUsageError, ObjectLostError, P2PExecError
from p2pexec.exec import refs
from p2pexec.exec.refs import IdGenerator, RefCounter
from p2pexec.exec.serialization import system_error_payload
from p2pexec.exec.shm import segment_name
from p2pexec.exec.task import TaskSpec
from p2pexec.node import Node

log = logging.getLogger("p2pexec")


class DriverRuntime:
    """What the public API calls when it runs in the user's own process."""

    def __init__(self, config: NodeConfig) -> None:
        self.node = Node(config)
        self.service = self.node.exec
        self.inline_limit = config.exec.inline_limit
        self.segments = self.service.segments
        self.ids = IdGenerator()
        self._registered: set[bytes] = set()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._running = False
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="p2pexec-node", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise LocalUsageError(f"the embedded node failed to start: {self._failure!r}")
        self.counter = RefCounter(self._report_refs)
        refs.install_counter(self.counter)
        atexit.register(self.shutdown)

    # ---- the node thread ----
    def _run(self) -> None:
        self._running = True
        try:
            trio.run(self._main)
        except BaseException as exc:  # also chained to the user's next call
            self._failure = exc
            log.critical("the p2pexec node stopped on an internal error", exc_info=exc)
            self._started.set()
        finally:
            self._running = False

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.node.run)
            self._started.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def shutdown(self) -> None:
        """Stop the node and its workers; idempotent."""
        if refs.counter is self.counter:
            refs.install_counter(None)
        if self._thread.is_alive() and self._token is not None:
            try:
                self._token.run_sync_soon(self._stop.set)
            except trio.RunFinishedError:
                pass
            self._thread.join()
        atexit.unregister(self.shutdown)

    @property
    def alive(self) -> bool:
        return self._running

    def _check(self) -> None:
        if not self._running:
            raise P2PExecError("the p2pexec node has stopped; call px.init() to start a "
                               "new one (refs from the old one are lost)") from self._failure

    def in_loop(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the node loop and return its result."""
        self._check()
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    # ---- the runtime interface used by api.py ----
    def _report_refs(self, deltas: dict[bytes, int]) -> None:
        if self._running:
            self.service.post(("refs", deltas))

    def segment_name(self, object_id: bytes) -> str:
        return segment_name(self._pid, object_id)

    def register(self, code_hash: bytes, pickled: bytes) -> None:
        if code_hash not in self._registered:
            self._registered.add(code_hash)
            self.service.post(("register", code_hash, pickled))

    def submit(self, spec: TaskSpec) -> None:
        self._check()
        self.service.post(("submit", spec))

    def put(self, object_id: bytes, payload: list, contained: list[bytes]) -> None:
        self._check()
        self.service.post(("put", object_id, payload, contained))

    def get_payloads(self, object_ids: list[bytes], timeout: float | None
                     ) -> tuple[dict[bytes, list], bool]:
        """Payloads of `object_ids`; the flag says whether the timeout cut the wait short."""
        entries = self.service.core.objects.entries
        found: dict[bytes, list] = {}
        pending = []
        for object_id in object_ids:
            entry = entries.get(object_id)
            if entry is not None and entry.payload is not None:
                found[object_id] = entry.payload
            else:
                pending.append(object_id)
        if not pending:
            return found, False
        timed_out = self._wait_until(pending, len(pending), timeout, found)
        return found, timed_out

    def wait(self, object_ids: list[bytes], num_returns: int, timeout: float | None
             ) -> list[bytes]:
        found: dict[bytes, list] = {}
        self._wait_until(list(object_ids), num_returns, timeout, found)
        return [object_id for object_id in object_ids if object_id in found]

    def _wait_until(self, pending: list[bytes], wanted: int, timeout: float | None,
                    found: dict[bytes, list]) -> bool:
        """Block until `wanted` of `pending` have values (added to `found`). True: timed out."""
        entries = self.service.core.objects.entries
        deadline = None if timeout is None else time.monotonic() + timeout
        event = threading.Event()
        self.service.register_waiter(pending, event)
        try:
            got = 0
            while True:
                event.clear()
                still = []
                for object_id in pending:
                    entry = entries.get(object_id)
                    if entry is not None and entry.payload is not None:
                        found[object_id] = entry.payload
                        got += 1
                    else:
                        still.append(object_id)
                pending = still
                if got >= wanted or not pending:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return True
                if not event.wait(1.0 if remaining is None else min(remaining, 1.0)):
                    self._check()
                    got += self._mark_lost(pending, found)
        finally:
            self.service.unregister_waiter(pending, event)

    def _mark_lost(self, pending: list[bytes], found: dict[bytes, list]) -> int:
        """Ids the node does not know even after it handled everything posted so far
        (a ref from a stopped node, or a bug): they resolve to ObjectLostError."""
        entries = self.service.core.objects.entries
        if all(object_id in entries for object_id in pending):
            return 0
        self.in_loop(_nothing)  # a barrier: our earlier submits and puts are in the table
        lost = 0
        for object_id in pending:
            if object_id not in entries and object_id not in found:
                found[object_id] = system_error_payload(ObjectLostError(
                    f"object {object_id.hex()} is unknown to this node: it was created by a "
                    f"node that has stopped, or freed"))
                lost += 1
        return lost

    def on_ready(self, object_id: bytes, callback: Callable[[bytes], None]) -> None:
        """Call `callback(object_id)` on the node thread once the object has a value."""
        notifier = _Notify(object_id, callback)
        self.service.register_waiter([object_id], notifier)
        entry = self.service.core.objects.entries.get(object_id)
        if entry is not None and entry.payload is not None:
            notifier.set()

    def call(self, operation: str, argument: Any) -> Any:
        return self.in_loop(self.service.call, operation, argument)


class _Notify:
    """A waiter that runs a callback instead of waking a thread; fires once."""

    __slots__ = ("_callback", "_fired", "_object_id")

    def __init__(self, object_id: bytes, callback: Callable[[bytes], None]) -> None:
        self._object_id = object_id
        self._callback = callback
        self._fired = False

    def set(self) -> None:
        if not self._fired:
            self._fired = True
            self._callback(self._object_id)


def _nothing() -> None:
    """Run on the node loop as a barrier: returns once earlier posts were handled."""
