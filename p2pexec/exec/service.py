"""The trio driver of the execution layer: worker processes, their sockets, the clock.

All rules live in `exec.scheduler.Scheduler`; this file only moves bytes and processes.
Frames for one worker are coalesced: everything queued for it while the loop was busy
leaves in one `send_all`, because trio pays per call and tiny tasks come in floods.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import trio

from p2pexec.errors import LocalUsageError, P2PExecError, RemoteProtocolError
from p2pexec.exec import protocol as p
from p2pexec.exec import shm
from p2pexec.exec.config import ExecConfig
from p2pexec.exec.events import (
    ActorKilled,
    CodeRegistered,
    Event,
    GaveBack,
    GetRequested,
    Put,
    RefsChanged,
    ShutDown,
    Started,
    Submitted,
    TaskFinished,
    Tick,
    WorkerDied,
    WorkerReady,
)
from p2pexec.exec.instructions import (
    Completed,
    Instruction,
    Recycle,
    Send,
    StartWorker,
    StopWorker,
    Unlink,
    Warn,
)
from p2pexec.exec.scheduler import DRIVER, Scheduler
from p2pexec.exec.task import TaskSpec

log = logging.getLogger("p2pexec.exec")
RECEIVE_SIZE = 1 << 18


class WorkerLink:
    """One worker process and the node's end of its socket.

    Frames queue in `outbox` while the loop handles a batch; `flush` then writes them in
    one non-blocking `send` right away (no task switch on the hot path) and leaves only
    what the socket buffer refused to the writer task, which waits for room. Everything
    runs on the loop's thread, and `writing` keeps the two from interleaving."""

    def __init__(self, worker_id: int, process: subprocess.Popen, sock: socket.socket
                 ) -> None:
        self.worker_id = worker_id
        self.process = process
        self.sock = sock
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.outbox: list[bytes] = []
        self.wake = trio.Event()
        self.writing = False

    def queue(self, frame: bytes) -> None:
        self.outbox.append(frame)

    def flush(self) -> None:
        if not self.outbox or self.writing:
            return
        data = b"".join(self.outbox) if len(self.outbox) > 1 else self.outbox[0]
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # broken: the reader sees the end and reports the worker dead
            self.outbox = []
            return
        self.outbox = [data[sent:]] if sent < len(data) else []
        if self.outbox:
            self.wake.set()


class ExecService:
    """Runs the scheduler against real worker processes inside one trio nursery.

    Driver threads in the same process hand it work through `post` (thread-safe, wakes the
    loop at most once per burst) and wait for results through `wait_for`.
    """

    def __init__(self, config: ExecConfig, resources: dict[str, float] | None = None,
                 call_handlers: dict[str, Callable[[Any], Any]] | None = None) -> None:
        self.config = config
        self.core = Scheduler(config, resources)
        self.links: dict[int, WorkerLink] = {}
        self.waiters: dict[bytes, list[threading.Event]] = {}
        self.call_handlers = dict(call_handlers or {})
        self._ops: deque[tuple] = deque()
        self._drain_scheduled = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._timer_changed = trio.Event()
        self._unlinking: set[str] = set()
        self.segments = shm.SegmentPool()
        """Argument segments handed back for reuse by this process's submitters."""

    # ---- lifecycle ----
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Start the worker pool and serve until cancelled; workers are stopped on exit."""
        shm.sweep_orphans()
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._apply(self.core.handle(Started()))
                nursery.start_soon(self._timer_loop)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._stop_everything()

    def _stop_everything(self) -> None:
        self.segments.clear()
        for segment in list(self._unlinking):
            shm.unlink(segment)
        for instruction in self.core.handle(ShutDown()):
            if isinstance(instruction, Unlink):
                shm.unlink(instruction.segment)
        for link in list(self.links.values()):
            self._kill(link)
        for link in list(self.links.values()):
            try:
                link.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not exit", link.process.pid)
        self.links.clear()

    # ---- from driver threads ----
    def post(self, op: tuple) -> None:
        """Hand an operation to the node loop from any thread."""
        self._ops.append(op)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._token.run_sync_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        ops = self._ops
        events: list[Event] = []
        while ops:
            op = ops.popleft()
            kind = op[0]
            if kind == "submit":
                events.append(Submitted(op[1], DRIVER))
            elif kind == "refs":
                events.append(RefsChanged(DRIVER, op[1]))
            elif kind == "put":
                events.append(Put(op[1], op[2], op[3], DRIVER))
            elif kind == "register":
                events.append(CodeRegistered(op[1], op[2]))
            else:  # runs in order with the events before it
                self._apply(self.core.handle(*events))
                events = []
                op[1]()
        self._apply(self.core.handle(*events))

    def register_waiter(self, object_ids: list[bytes], event: threading.Event) -> None:
        for object_id in object_ids:
            self.waiters.setdefault(object_id, []).append(event)

    def unregister_waiter(self, object_ids: list[bytes], event: threading.Event) -> None:
        for object_id in object_ids:
            events = self.waiters.get(object_id)
            if events is not None and event in events:
                events.remove(event)
                if not events:
                    self.waiters.pop(object_id, None)

    # ---- instructions ----
    def _apply(self, instructions: list[Instruction]) -> None:
        links = self.links
        touched: set[WorkerLink] = set()
        for instruction in instructions:
            if type(instruction) is Send:
                link = links.get(instruction.worker)
                if link is not None:
                    link.queue(p.encode_frame(instruction.message))
                    touched.add(link)
            elif type(instruction) is Completed:
                waiters = self.waiters
                for object_id in instruction.object_ids:
                    events = waiters.pop(object_id, None)
                    if events:
                        for event in events:
                            event.set()
            elif type(instruction) is Recycle:
                if not self.segments.give(instruction.segment):
                    self._unlink_soon(instruction.segment)
            elif type(instruction) is Unlink:
                self._unlink_soon(instruction.segment)
            elif type(instruction) is StartWorker:
                self._spawn(instruction.worker, instruction.actor_id)
            elif type(instruction) is StopWorker:
                link = links.get(instruction.worker)
                if link is not None:
                    self._kill(link)
            elif type(instruction) is Warn:
                log.warning("%s", instruction.text)
        for link in touched:
            link.flush()

    def _unlink_soon(self, segment: str) -> None:
        """Freeing a large tmpfs file takes ~0.15 ms per MiB: do it off the loop. What is
        still pending at shutdown is unlinked there (`_stop_everything`)."""
        self._unlinking.add(segment)
        self._nursery.start_soon(self._unlink, segment)

    async def _unlink(self, segment: str) -> None:
        await trio.to_thread.run_sync(shm.unlink, segment)
        self._unlinking.discard(segment)  # not when cancelled: shutdown unlinks it then

    def _spawn(self, worker_id: int, actor_id: bytes | None) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "p2pexec.exec.worker", str(child_end.fileno()),
                 str(os.getpid())],
                pass_fds=[child_end.fileno()], close_fds=True, stdin=subprocess.DEVNULL)
        finally:
            child_end.close()
        parent_end.setblocking(False)
        link = WorkerLink(worker_id, process, parent_end)
        self.links[worker_id] = link
        link.queue(p.encode_frame([p.CONFIGURE, [path for path in sys.path if path],
                                   os.getpid(), self.config.inline_limit, os.getcwd()]))
        link.flush()
        kind = "actor" if actor_id is not None else "pool"
        log.debug("started %s worker %d (pid %d)", kind, worker_id, process.pid)
        self._nursery.start_soon(self._serve_worker, link)

    def _kill(self, link: WorkerLink) -> None:
        if link.process.poll() is None:
            try:
                link.process.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    # ---- per worker ----
    async def _serve_worker(self, link: WorkerLink) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_worker, link)
            try:
                await self._read_worker(link)
            finally:
                nursery.cancel_scope.cancel()
        await trio.to_thread.run_sync(link.process.wait)
        if self.links.get(link.worker_id) is link:
            del self.links[link.worker_id]
        with trio.CancelScope(shield=True):
            await link.stream.aclose()
        self._apply(self.core.handle(WorkerDied(link.worker_id, _exit_reason(link.process))))

    async def _write_worker(self, link: WorkerLink) -> None:
        """Writes what `flush` could not: a full socket buffer (large frames, a busy
        worker) waits here, and frames queued meanwhile follow in order."""
        while True:
            await link.wake.wait()
            link.wake = trio.Event()
            frames, link.outbox = link.outbox, []
            if frames:
                link.writing = True
                try:
                    await link.stream.send_all(b"".join(frames))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                finally:
                    link.writing = False
                link.flush()

    async def _read_worker(self, link: WorkerLink) -> None:
        reader = p.FrameReader()
        stream = link.stream
        while True:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            try:
                self._handle_frames(link.worker_id, reader.feed(data))
            except Exception as exc:  # any bad message costs that worker, never the node
                log.error("worker %d sent a message the node could not handle (%r); "
                          "stopping it", link.worker_id, exc)
                self._kill(link)
                return

    def _handle_frames(self, worker_id: int, messages: Iterable[list]) -> None:
        """One batch of a worker's frames, scheduled once. A node call first applies the
        frames before it, so it sees their effect (an actor the worker just created)."""
        events: list[Event] = []
        try:
            for message in messages:
                if message[0] == p.CALL:
                    self._apply(self.core.handle(*events))
                    events = []
                    self._answer_call(worker_id, message[1], message[2], message[3])
                else:
                    events.append(self._event_of(worker_id, message))
        finally:
            self._apply(self.core.handle(*events))

    def _event_of(self, worker_id: int, message: list) -> Event:
        """The scheduler event a worker's frame stands for."""
        kind = message[0]
        if kind == p.DONE:
            return TaskFinished(worker_id, message[1], message[2], message[3], message[4],
                                message[5])
        if kind == p.SUBMIT:
            return Submitted(TaskSpec.from_wire(message[1:]), worker_id)
        if kind == p.REFS:
            return RefsChanged(worker_id, message[1])
        if kind == p.GET:
            _, request_id, object_ids, num_returns, timeout, given_back = message
            if timeout is not None:
                self._timer_changed.set()
            return GetRequested(worker_id, request_id, object_ids, num_returns, timeout,
                                given_back, trio.current_time())
        if kind == p.PUT:
            return Put(message[1], message[2], message[3], worker_id)
        if kind == p.GIVE_BACK:
            return GaveBack(worker_id, message[1])
        if kind == p.REGISTER:
            return CodeRegistered(message[1], message[2])
        if kind == p.READY:
            return WorkerReady(worker_id)
        raise RemoteProtocolError(f"unknown message kind {kind!r}")

    def call(self, operation: str, argument: Any) -> Any:
        """Run a named node operation (get_actor, kill, nodes...) on the loop's thread."""
        handler = self.call_handlers.get(operation)
        if handler is None:
            raise LocalUsageError(f"unknown node operation {operation!r}")
        return handler(argument)

    def kill_actor(self, actor_id: bytes) -> bool:
        """px.kill: True if the actor was alive here (and is now stopped)."""
        alive = self.core.actor_alive(actor_id)
        self._apply(self.core.handle(ActorKilled(actor_id)))
        return alive

    def _answer_call(self, worker_id: int, request_id: int, operation: str,
                     argument: Any) -> None:
        try:
            reply = [p.REPLY, request_id, True, self.call(operation, argument)]
        except P2PExecError as exc:
            reply = [p.REPLY, request_id, False, [type(exc).__name__, str(exc)]]
        link = self.links.get(worker_id)
        if link is not None:
            link.queue(p.encode_frame(reply))
            link.flush()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._timer_changed.wait()
                self._timer_changed = trio.Event()
                continue
            self._apply(self.core.handle(Tick(trio.current_time())))

    def pool_ready(self) -> int:
        """How many workers have said READY."""
        return sum(1 for w in self.core.workers.values() if w.ready)


def _exit_reason(process: subprocess.Popen) -> str:
    code = process.returncode
    if code is not None and code < 0:
        try:
            return f"pid {process.pid} killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"pid {process.pid} killed by signal {-code}"
    return f"pid {process.pid} exit code {code}"
