"""An in-process executor: the node's workers are trio tasks, not processes.

Simulations run many complete nodes in one trio process on `trio.testing.MockClock`; there
a worker process per CPU would be too heavy and would not follow the simulated clock. Here
each worker the scheduler starts is a trio task that runs the work it is sent one piece
at a time, through the same `TaskRunner` worker processes use, after an optional
simulated duration (a `trio.sleep`, so it costs no real time under an autojumping clock).
Task functions must be plain functions: they cannot call the API (no nested tasks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio

from p2pexec.errors import LocalUsageError
from p2pexec.exec import protocol as p
from p2pexec.exec.events import Event, TaskFinished, WorkerDied, WorkerReady
from p2pexec.exec.runner import TaskRunner
from p2pexec.exec.shm import segment_name

Duration = Callable[[p.Execute], float]
"""How long a piece of work takes in simulated seconds, from what the node sent."""


class InlineWorkers:
    """Worker "processes" as trio tasks of the node's own loop (see module doc).

    `duration` gives each task its simulated run time: a number for every task, or a
    function of the `Execute` message (its `name` is the function's name)."""

    def __init__(self, duration: float | Duration = 0.0) -> None:
        self._duration: Duration = (duration if callable(duration)
                                    else (lambda _work, seconds=float(duration): seconds))
        self._inboxes: dict[int, trio.MemorySendChannel[p.Execute]] = {}
        self._scopes: dict[int, trio.CancelScope] = {}
        self.inline_limit = 100 * 1024
        self._owner_pid = 0

    def configure(self, inline_limit: int, owner_pid: int) -> None:
        self.inline_limit, self._owner_pid = inline_limit, owner_pid

    def segment_name(self, object_id: bytes) -> str:
        return segment_name(self._owner_pid, object_id)

    def stream(self, task_id: bytes, index: int, payload: list | None,
               contained: list[bytes], end: bool) -> None:
        """A simulated worker runs plain functions: a streaming one fails clearly."""
        raise LocalUsageError("simulated workers do not run streaming generators; "
                              'use num_returns="dynamic" or a fixed num_returns')

    def start(self, nursery: trio.Nursery, worker_id: int, report: Callable[[Event], None]
              ) -> None:
        """Start worker `worker_id`. `report(event)` hands what happened to the node,
        which gives it to the scheduler and applies its instructions."""
        send, receive = trio.open_memory_channel[p.Execute](math.inf)
        scope = trio.CancelScope()
        self._inboxes[worker_id] = send
        self._scopes[worker_id] = scope
        nursery.start_soon(self._serve, worker_id, receive, scope, report)

    def deliver(self, worker_id: int, message: Any) -> None:
        """Hand work to a worker (one that is gone drops it, as a dead process would).
        Other messages (Values, Configure) never matter: inline tasks never block in get."""
        inbox = self._inboxes.get(worker_id)
        if inbox is not None and type(message) is p.Execute:
            inbox.send_nowait(message)

    def stop(self, worker_id: int) -> None:
        """Kill a worker: the work it runs is abandoned and the node hears it died."""
        scope = self._scopes.get(worker_id)
        if scope is not None:
            scope.cancel()

    async def _serve(self, worker_id: int, inbox: trio.MemoryReceiveChannel[p.Execute],
                     scope: trio.CancelScope, report: Callable[[Event], None]) -> None:
        runner = TaskRunner(self)
        try:
            with scope:
                report(WorkerReady(worker_id))
                async for work in inbox:
                    started = trio.current_time()
                    await trio.sleep(self._duration(work))
                    payloads, contained = runner.run(work)
                    seconds = trio.current_time() - started
                    report(TaskFinished(worker_id, work.task_id, payloads, contained, seconds))
        finally:
            self._inboxes.pop(worker_id, None)
            self._scopes.pop(worker_id, None)
            if scope.cancelled_caught:
                report(WorkerDied(worker_id, "it was stopped"))
