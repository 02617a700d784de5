"""The trio driver of the execution layer: worker processes, their sockets, the clock.

All rules live in `exec.scheduler.Scheduler`; this file only moves bytes and processes.
Frames for one worker are coalesced: everything queued for it while the loop was busy
leaves in one `send_all`, because trio pays per call and tiny tasks come in floods.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from p2pexec.errors import LocalUsageError, ObjectLostError, P2PExecError, RemoteProtocolError
from p2pexec.exec import interrupts, shm
from p2pexec.exec import protocol as p
from p2pexec.exec.config import ExecConfig
from p2pexec.exec.events import (
    ActorKilled,
    CancelRequested,
    ClientLeft,
    CodeRegistered,
    Event,
    Fetched,
    GaveBack,
    GetRequested,
    PackageReady,
    Prefetched,
    Put,
    RefsChanged,
    ShutDown,
    SpillEnded,
    Started,
    StreamYielded,
    Submitted,
    TaskFinished,
    Tick,
    WorkerDied,
    WorkerReady,
)
from p2pexec.exec.inline import InlineWorkers
from p2pexec.exec.instructions import (
    Completed,
    DeleteSpilled,
    Fetch,
    Forward,
    Grant,
    Holding,
    Instruction,
    Interrupt,
    LocateActor,
    Prefetch,
    Recycle,
    Send,
    Spill,
    StartWorker,
    StopWorker,
    Unlink,
    Warn,
)
from p2pexec.exec.mesh import Mesh, MeshInstruction
from p2pexec.exec.output import Output, OutputBuffer, OutputLimits, OutputLines, job_home, job_id
from p2pexec.exec.packages import PackageStore
from p2pexec.exec.refs import OBJECT_ID_SIZE, task_of
from p2pexec.exec.runtime_env import RuntimeEnv
from p2pexec.exec.scheduler import DRIVER, Scheduler
from p2pexec.exec.serialization import check_payload, system_error_payload
from p2pexec.exec.transfer import ObjectTransfers
from p2pexec.ids import NodeId
from p2pexec.net.codec import Codec, FrameDecoder

log = logging.getLogger("p2pexec.exec")

Answer = Callable[[Any, P2PExecError | None], None]
"""Receives a node operation's outcome: (value, None) or (None, the error)."""

MESH_INSTRUCTIONS = MeshInstruction.__args__
"""What the mesh driver carries out: messages to peers, actor records in the DHT."""
WAKES_TIMER = (Grant, Forward, LocateActor)
"""Instructions after which the scheduler may want a tick sooner: tasks put at peers
(held checks), actors looked for (a search for one whose node died)."""
RECEIVE_SIZE = 1 << 16
"""Bytes read at once from a link, into a buffer the link keeps: reading into a fresh
256 KiB object per read cost an mmap, a page fault and a munmap each time."""


def _remove_spilled(directory: str) -> None:
    """Delete the spilled segments (and unfinished copies) in `directory`, nothing else."""
    for name in os.listdir(directory):
        if shm.is_segment_name(name) or name.endswith(".part"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))


def _copy_to_spill(segment: str, directory: str) -> bool:
    """Copy a segment into the spill dir under its own name (whole or not at all: readers
    look there once it leaves shared memory). False if it was freed first."""
    target = shm.spill_path(directory, segment)
    try:
        shutil.copyfile(os.path.join(shm.segment_dir(), segment), target + ".part")
        os.replace(target + ".part", target)
    except FileNotFoundError:
        return False
    except OSError as exc:  # a full or failing disk: the object stays in memory
        log.warning("could not spill %s to %s: %s", segment, directory, exc)
        with contextlib.suppress(OSError):
            os.unlink(target + ".part")
        return False
    return True


class ClientLink:
    """One local client (a worker process or an attached driver) and the node's end of
    its socket.

    Frames queue in `outbox` while the loop handles a batch; `flush` then writes them in
    one non-blocking `send` right away (no task switch on the hot path) and leaves only
    what the socket buffer refused to the writer task, which waits for room. Everything
    runs on the loop's thread, and `writing` keeps the two from interleaving."""

    def __init__(self, client_id: int, sock: socket.socket, stream: trio.SocketStream,
                 process: subprocess.Popen | None = None, pid: int | None = None,
                 interrupts: int | None = None, runtime_env: RuntimeEnv | None = None
                 ) -> None:
        self.client_id = client_id
        self.runtime_env = runtime_env
        """A worker's environment (what its `Configure` says)."""
        self.interrupts = interrupts
        """A worker's interrupt pipe: the ids of its tasks px.cancel cancelled (a thread
        in the worker reads them while its main thread runs a task)."""
        self.process = process
        self.pid = process.pid if process is not None else pid
        self.sock = sock
        self.stream = stream
        self.decoder: FrameDecoder | None = None
        """What its reader splits frames with (set when reading starts)."""
        self.parked = False
        """Its reader waits for input: a driver thread holding the loop lock may read the
        link itself (`ExecService.read_reply_here`)."""
        self.outbox: list[bytes] = []
        self.wake = trio.Event()
        self.writing = False
        self.waits: set[_DriverWait] = set()
        """An attached driver's get/wait requests the node has not answered yet."""
        self.output: _OutputStream | None = None
        """An attached driver's output stream, once it opened one (log_to_driver)."""

    @property
    def is_driver(self) -> bool:
        return self.process is None

    def queue(self, frame: bytes) -> None:
        self.outbox.append(frame)

    def flush(self) -> None:
        if self.send_queued():
            self.wake.set()

    def send_queued(self) -> bool:
        """Send what is queued without blocking; True if the writer task must send the
        rest (the caller wakes it: from the loop directly, from a thread via the token)."""
        if not self.outbox or self.writing:
            return False
        data = b"".join(self.outbox) if len(self.outbox) > 1 else self.outbox[0]
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # broken: the reader sees the end and reports the client gone
            self.outbox = []
            return False
        self.outbox = [data[sent:]] if sent < len(data) else []
        return bool(self.outbox)


OutputSink = Callable[[list[OutputLines]], None]
"""Takes output records on the node's thread (printing them, say)."""


class _OutputStream:
    """An attached driver's output stream as the node's thread feeds it: a bounded
    buffer, and the event that wakes its writer."""

    def __init__(self, limits: OutputLimits) -> None:
        self.buffer = OutputBuffer(limits)
        self.wake = trio.Event()
        self.closed = False

    def add(self, records: list[OutputLines]) -> None:
        self.buffer.add(records)
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class _DriverWait:
    """An attached driver's `get` or `wait`, answered once enough objects have values or
    its timeout passes. Registered as a waiter for each object still pending; counts the
    completions it hears of, so a get of n objects costs O(n), not a scan per object."""

    __slots__ = ("done", "expiry", "link", "missing", "object_ids", "request", "service")

    def __init__(self, service: ExecService, link: ClientLink, request: p.Get) -> None:
        self.service = service
        self.link = link
        self.request = request
        self.object_ids = list(dict.fromkeys(request.object_ids))
        self.missing = 0
        """Completions still needed before the answer is worth computing."""
        self.done = False
        self.expiry: trio.CancelScope | None = None
        """Its timeout's scope (None without one): ends the timer task when answered, so
        a driver's gets with long timeouts do not pile up sleeping tasks."""

    def set(self) -> None:
        """One object it waits for completed: answer once that may be enough."""
        self.missing -= 1
        if self.done or self.missing > 0:
            return
        if self.service.try_answer(self, timed_out=False):
            self.finish()
        else:  # an object completed twice (a retry): wait for what is still missing
            self.service.watch(self)

    def finish(self) -> None:
        self.done = True
        self.link.waits.discard(self)
        self.service.unregister_waiter(self.object_ids, self)
        if self.expiry is not None:
            self.expiry.cancel()


class ExecService:
    """Runs the scheduler against worker processes (or in-process workers) and attached
    drivers inside one trio nursery.

    Driver threads in the same process hand it work through `post` (thread-safe, wakes the
    loop at most once per burst) and wait for results through `register_waiter`.
    """

    def __init__(self, config: ExecConfig, resources: dict[str, float] | None = None,
                 call_handlers: dict[str, Callable[[Any], Any]] | None = None,
                 node_id: bytes = b"", inline: InlineWorkers | None = None,
                 in_cluster: bool = False, node_name: str = "") -> None:
        self.config = config
        self.node_id = node_id
        self.node_name = node_name
        """Shown with the output of this node's tasks on other nodes' drivers."""
        self.driver_output: OutputSink | None = None
        """Where the embedded driver's output goes (None: it set log_to_driver=False,
        or there is none: its output is unclaimed)."""
        self.unclaimed_output: OutputSink | None = None
        """Where output no driver takes goes (the driver left, or it does not want it):
        `p2pexec join` prints it; None drops it."""
        self.output_limits = OutputLimits()
        self.inline = inline
        """Run workers as trio tasks of this loop (simulations) instead of processes."""
        self.core = Scheduler(config, resources, in_cluster=in_cluster, node_id=node_id)
        self.transfers: ObjectTransfers | None = None
        """Fetches and serves large objects between nodes (set once the cluster runs)."""
        self.mesh: Mesh | None = None
        """Steals work from peers and sends them results (set once the cluster runs)."""
        self.links: dict[int, ClientLink] = {}
        """Workers by their positive ids, attached drivers by negative ones."""
        self.waiters: dict[bytes, list[Any]] = {}
        """Per object id, what to `set()` when it completes (threading events, waits)."""
        self.codec = Codec(p.LINK_LIMITS)
        self._next_driver = -1
        self.timers = 0
        """Timeouts of attached drivers' gets and waits still running."""
        self._driver_paths: list[str] = []
        """Import paths of attached drivers, appended to the workers' own."""
        self.call_handlers = {"store_package": self._store_package, **(call_handlers or {})}
        self._ops: deque[tuple] = deque()
        self._drain_scheduled = False
        self._loop_asleep = threading.Lock()
        """Free only while the loop waits for I/O: a driver thread that takes it may step
        the scheduler itself (`post_all`). Held from here until the loop first sleeps."""
        self._loop_asleep.acquire()
        self._loop_wants_lock: int | None = None
        """An eventfd the loop writes when it wakes and a thread holds `_loop_asleep` (a
        thread reading a reply waits on it too, and lets go); open while the loop runs."""
        self._loop_epoll: select.epoll | None = None
        """The loop's own epoll (set while threads may read replies themselves)."""
        self._reply_buffer = bytearray(RECEIVE_SIZE)
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._closed = False
        """The nursery has closed: no task can start any more."""
        self._timer_changed = trio.Event()
        self._unlinking: set[str] = set()
        self.spill_dir = config.spill_dir
        """Where objects over the memory cap go (made at start; see ExecConfig)."""
        self.segments = shm.SegmentPool()
        """Argument segments handed back for reuse by this process's submitters."""
        self.packages = PackageStore(config.package_dir)
        """The runtime_env packages this node holds (from start to end only)."""

    # ---- lifecycle ----
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Start the worker pool and serve until cancelled; workers are stopped on exit."""
        shm.sweep_orphans()
        self._open_spill_dir()
        self.packages.open()
        self._token = trio.lowlevel.current_trio_token()
        if self.inline is not None:
            self.inline.configure(self.config.inline_limit, os.getpid())
        steps_here = self.inline is None and not self.core.in_cluster
        if steps_here:  # else no thread may step the core: the lock stays held
            self._loop_wants_lock = _signal_fd()
            if self._loop_wants_lock is not None:
                self._loop_epoll = _loop_epoll()
        awake = _HeldWhileAwake(self._loop_asleep, self._loop_wants_lock)
        if steps_here:
            trio.lowlevel.add_instrument(awake)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._apply(self.core.handle(Started()))
                nursery.start_soon(self._timer_loop)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:  # from here on the nursery may close before the loop's last ops
                    self._closed = True  # (a driver's last drops): what they ask dies here
        finally:
            self._closed = True
            if steps_here:  # awake now, so the lock stays held: no more steps
                trio.lowlevel.remove_instrument(awake)
            if self._loop_epoll is not None:
                self._loop_epoll.close()
                self._loop_epoll = None
            if self._loop_wants_lock is not None:
                os.close(self._loop_wants_lock)
                self._loop_wants_lock = None
            self._stop_everything()

    def _open_spill_dir(self) -> None:
        """Create the spill dir (0700), empty: files left there belong to a node that was
        killed, and no object of this run refers to them."""
        if self.config.spill_dir is None:
            self.spill_dir = tempfile.mkdtemp(prefix="p2pexec-spill-")
        else:
            os.makedirs(self.config.spill_dir, mode=0o700, exist_ok=True)
            _remove_spilled(self.config.spill_dir)
        shm.set_spill_dir(self.spill_dir)

    def _close_spill_dir(self) -> None:
        if self.spill_dir is None:
            return
        if self.config.spill_dir is None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
        else:
            _remove_spilled(self.spill_dir)

    async def _spill(self, object_id: bytes, segment: str) -> None:
        """Copy a segment to the spill dir, then tell the core (which frees the memory)."""
        assert self.spill_dir is not None
        ok = await trio.to_thread.run_sync(_copy_to_spill, segment, self.spill_dir)
        self._apply(self.core.handle(SpillEnded(object_id, segment, ok)))

    def _stop_everything(self) -> None:
        self.segments.clear()
        for segment in list(self._unlinking):
            shm.unlink(segment)
        for instruction in self.core.handle(ShutDown()):
            if isinstance(instruction, Unlink):
                shm.unlink(instruction.segment)
        workers = [link for link in self.links.values() if link.process is not None]
        for link in workers:
            self._kill(link)
        for link in workers:
            try:
                link.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not exit", link.process.pid)
        for link in list(self.links.values()):
            self._forget_link(link)
        self._close_spill_dir()
        self.packages.close()

    # ---- from driver threads ----
    def post(self, op: tuple) -> None:
        """Hand an operation to the node loop from any thread."""
        self._ops.append(op)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._token.run_sync_soon(self._drain)

    def post_all(self, ops: list[tuple], patience: float = 0.0) -> None:
        """Hand operations to the node from any thread, in order. While the loop sleeps
        (on a standalone node with worker processes: a mesh and in-process workers must
        see every step on the loop), the calling thread steps the scheduler itself and
        writes the frames to the workers: a sync round trip then wakes the loop once (for
        the result) instead of twice, which is a quarter of its CPU on two cores.
        `patience`: seconds to wait for the loop to fall asleep (a thread the loop has
        just woken usually runs again before the loop is back in its I/O wait)."""
        if not self._step_here(ops, patience):
            for op in ops:
                self.post(op)

    def _step_here(self, ops: list[tuple], patience: float) -> bool:
        """`post_all`'s fast path; False when it does not apply (the caller posts)."""
        asleep = self._loop_asleep
        with interrupts.held:
            if not (asleep.acquire(timeout=patience) if patience > 0 else
                    asleep.acquire(blocking=False)):
                return False  # the loop is awake (or stopped): it takes the ops itself
            try:
                if self._closed or self._ops or self._drain_scheduled:
                    return False  # ops posted earlier go first
                self._apply_here(self.core.handle(*map(_event_of_op, ops)))
                return True
            finally:
                asleep.release()

    def _apply_here(self, instructions: list[Instruction]) -> None:
        """Carry out, from a thread holding the loop lock, what the core said: frames to
        worker processes are written here (non-blocking; a remainder goes to the link's
        writer task) and a completion only thread waiters wait for wakes them here; if
        anything else is asked, the loop carries out the whole list, in order (and every
        list after it until it has: a frame written here must not overtake one it holds)."""
        links, waiters = self.links, self.waiters
        if self._ops:
            self.post(("apply", instructions))
            return
        for instruction in instructions:
            kind = type(instruction)
            if kind is Send:
                here = instruction.worker in links
            else:
                here = kind is Completed and all(
                    type(event) is Wakeup for object_id in instruction.object_ids
                    for event in waiters.get(object_id, ()))
            if not here:
                self.post(("apply", instructions))
                return
        frame = self.codec.frame
        touched: set[ClientLink] = set()
        for instruction in instructions:
            if type(instruction) is Send:
                link = links[instruction.worker]
                link.queue(frame(instruction.message))
                touched.add(link)
            else:
                for object_id in instruction.object_ids:
                    for event in waiters.pop(object_id, ()):
                        event.set()
        for link in touched:
            if link.send_queued():
                self._token.run_sync_soon(link.wake.set)

    def read_reply_here(self, object_id: bytes, timeout: float) -> bool:
        """A driver thread about to wait for `object_id` reads it from the worker that
        makes it, itself, while the loop sleeps (on a standalone node, as `post_all`
        steps). The worker's reply then wakes this thread alone: otherwise it wakes the
        loop, which wakes this thread, one more wake-up (tens of microseconds when it
        crosses CPUs) and a hand-over of the GIL per sync round trip. The loop's epoll
        stops watching that worker meanwhile, and the loop's wish to run (any other
        event) ends it at once. True: the object has its value; False: this did not
        apply, the loop wants to run or `timeout` passed (the caller waits as usual)."""
        epoll = self._loop_epoll
        if epoll is None:
            return False
        with interrupts.held:
            if not self._loop_asleep.acquire(blocking=False):
                return False
            try:
                if self._closed or self._ops or self._drain_scheduled:
                    return False  # the loop has work to do first
                task = self.core.tasks.get(task_of(object_id))
                link = (None if task is None or task.worker is None
                        else self.links.get(task.worker))
                if link is None or not link.parked or link.process is None:
                    return False
                fd = link.sock.fileno()
                try:
                    epoll.modify(fd, select.EPOLLONESHOT)  # registered, watching nothing
                except OSError:
                    return False
                done, watch = False, True
                try:
                    done, watch = self._read_reply(link, object_id, timeout)
                finally:
                    if watch:
                        self._watch_again(link)
                return done
            finally:
                self._loop_asleep.release()

    def _read_reply(self, link: ClientLink, object_id: bytes, timeout: float
                    ) -> tuple[bool, bool]:
        """`read_reply_here`'s reading: (the object has its value, the loop should watch
        the link again now). Messages only the loop can handle (a nested get, output, a
        node call) go to it with the rest of their read, in order; it watches the link
        again after them."""
        wants = self._loop_wants_lock
        poller = select.poll()
        poller.register(link.sock, select.POLLIN)
        poller.register(wants, select.POLLIN)
        entries = self.core.objects.entries
        buffer = self._reply_buffer
        deadline = time.monotonic() + timeout
        while True:
            ready = dict(interrupts.interruptible_poll(
                poller, max(0.0, deadline - time.monotonic()) * 1000))
            if link.sock.fileno() not in ready:
                return False, True  # the loop wants to run, or the time is up
            try:
                size = link.sock.recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError:  # the worker died: the loop finds out from its reader
                return False, True
            if not size:
                return False, True
            try:
                bodies = link.decoder.feed(memoryview(buffer)[:size])
            except RemoteProtocolError as exc:  # the loop says so and drops the worker
                self.post(("drop", link, exc))
                return False, True
            if not self._take_reply(link, bodies):
                return False, False
            entry = entries.get(object_id)
            if entry is None or entry.payload is not None:
                return entry is not None, True
            if wants in ready:
                return False, True

    def _take_reply(self, link: ClientLink, bodies: list[bytes]) -> bool:
        """Step the core with a worker's messages in this thread; False: they went to
        the loop instead (one needs it, or one is bad and the loop drops the worker)."""
        events = self._reply_events(link, bodies)
        if events is None:
            self.post(("frames", link, bodies))
            return False
        self._apply_here(self.core.handle(*events))
        return True

    def _reply_events(self, link: ClientLink, bodies: list[bytes]) -> list[Event] | None:
        """The events of a worker's messages if they only step the core; else None."""
        events: list[Event] = []
        for body in bodies:
            try:
                message = self.codec.decode(body)
                if type(message) not in _REPLY_KINDS:
                    return None
                events.append(self._worker_event(link.client_id, message))
            except Exception:  # bad: the loop meets it again, says so and drops the worker
                return None
        return events

    def _drain(self) -> None:
        self._drain_scheduled = False
        ops = self._ops
        events: list[Event] = []
        while ops:
            op = ops.popleft()
            if op[0] == "apply":  # instructions a driver thread stepped: in order
                self._apply(self.core.handle(*events))
                events = []
                self._apply(op[1])
            elif op[0] == "frames":  # a worker's reply a driver thread read but left here
                self._apply(self.core.handle(*events))
                events = []
                self._frames_from_thread(op[1], op[2])
            elif op[0] == "drop":  # a worker sent a driver thread a bad frame
                self._drop_for(op[1], op[2])
            else:
                events.append(_event_of_op(op))
        self._apply(self.core.handle(*events))

    def _frames_from_thread(self, link: ClientLink, bodies: list[bytes]) -> None:
        """Handle what `read_reply_here` read from `link` and left to the loop, then
        watch the link again (it stopped, so that later input waits for these)."""
        if self.links.get(link.client_id) is not link:
            return
        self._take_frames(link, bodies)  # a bad one kills the worker: its reader sees why
        self._watch_again(link)

    def _watch_again(self, link: ClientLink) -> None:
        """The loop's epoll watches `link` again, after a thread stopped it for a while
        (and reports at once any input that waited meanwhile)."""
        if self._loop_epoll is not None:
            with contextlib.suppress(OSError):
                self._loop_epoll.modify(link.sock.fileno(), select.EPOLLIN | select.EPOLLONESHOT)

    def register_waiter(self, object_ids: list[bytes], event: Any) -> None:
        for object_id in object_ids:
            self.waiters.setdefault(object_id, []).append(event)

    def unregister_waiter(self, object_ids: list[bytes], event: Any) -> None:
        for object_id in object_ids:
            events = self.waiters.get(object_id)
            if events is not None and event in events:
                events.remove(event)
                if not events:
                    self.waiters.pop(object_id, None)

    # ---- instructions ----
    def _apply(self, instructions: list[Instruction]) -> None:
        links = self.links
        touched: set[ClientLink] = set()
        frame = self.codec.frame
        for instruction in instructions:
            if type(instruction) is Send:
                link = links.get(instruction.worker)
                if link is not None:
                    link.queue(frame(instruction.message))
                    touched.add(link)
                elif self.inline is not None:
                    self.inline.deliver(instruction.worker, instruction.message)
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
                if self.inline is not None:
                    self.inline.start(self._nursery, instruction.worker, self.stimulus)
                else:
                    self._spawn(instruction.worker, instruction.actor_id,
                                instruction.runtime_env)
            elif type(instruction) is Interrupt:
                link = links.get(instruction.worker)
                if link is not None and link.interrupts is not None:
                    _write_interrupt(link.interrupts, instruction.task_id)
            elif type(instruction) is StopWorker:
                link = links.get(instruction.worker)
                if link is not None:
                    self._kill(link)
                elif self.inline is not None:
                    self.inline.stop(instruction.worker)
            elif type(instruction) is Warn:
                log.warning("%s", instruction.text)
            elif type(instruction) is Spill:
                if not self._closed:
                    self._nursery.start_soon(self._spill, instruction.object_id,
                                             instruction.segment)
            elif type(instruction) is DeleteSpilled:
                if self.spill_dir is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(shm.spill_path(self.spill_dir, instruction.segment))
            elif type(instruction) is Fetch:
                if not self._closed:
                    self._nursery.start_soon(self._fetch, instruction.object_id,
                                             instruction.holder)
            elif type(instruction) is Prefetch:
                if not self._closed:
                    self._nursery.start_soon(self._prefetch, instruction.object_id,
                                             instruction.holder)
            elif type(instruction) is Holding:
                if self.transfers is not None and not self._closed:
                    self._nursery.start_soon(self.transfers.announce, instruction.object_id,
                                             instruction.held)
            elif type(instruction) in MESH_INSTRUCTIONS:
                if self.mesh is not None:
                    self.mesh.apply(instruction)
                if type(instruction) in WAKES_TIMER:  # a clock of the core may start
                    self._timer_changed.set()
        for link in touched:
            link.flush()
        if self.mesh is not None:
            self.mesh.poke()

    async def _fetch(self, object_id: bytes, holder: bytes | None) -> None:
        """Get a copy of another node's object; its waiters get the value or the error."""
        try:
            if self.transfers is None:
                raise ObjectLostError(f"object {object_id.hex()} belongs to another node "
                                      f"and this node is not connected to the cluster yet")
            payload = await self.transfers.fetch(
                object_id, None if holder is None else NodeId(holder))
        except P2PExecError as exc:
            payload = system_error_payload(exc)
        self._apply(self.core.handle(Fetched(object_id, payload)))

    async def _prefetch(self, object_id: bytes, holder: bytes) -> None:
        """Fetch a borrowed object alongside its borrow (see `Prefetch`)."""
        payload = None
        if self.transfers is not None:
            payload = await self.transfers.prefetch(object_id, NodeId(holder))
        self._apply(self.core.handle(Prefetched(object_id, holder, payload)))

    async def _store_package(self, argument: Any) -> None:
        """A local client's runtime_env package (`[SHA-256, zip bytes]`, the
        "store_package" operation): checked, unpacked in a thread, held from now on. The
        client submits work needing it only once this answered."""
        if not (isinstance(argument, (list, tuple)) and len(argument) == 2
                and all(isinstance(part, bytes) for part in argument)):
            raise LocalUsageError("store_package takes [package hash, zip bytes]")
        package, data = argument
        if package not in self.core.packages:
            await trio.to_thread.run_sync(self.packages.add, package, data)
            self.stimulus(PackageReady(package))

    def stimulus(self, *events: Event) -> None:
        """Events from outside the links (an in-process worker's report, a peer's message,
        membership): one batch for the core, then its instructions."""
        self._apply(self.core.handle(*events))

    def _unlink_soon(self, segment: str) -> None:
        """Freeing a large tmpfs file takes ~0.15 ms per MiB: do it off the loop. What is
        still pending at shutdown is unlinked there (`_stop_everything`)."""
        if self._closed:  # the node has stopped: nobody will unlink it later
            shm.unlink(segment)
            return
        self._unlinking.add(segment)
        self._nursery.start_soon(self._unlink, segment)

    async def _unlink(self, segment: str) -> None:
        await trio.to_thread.run_sync(shm.unlink, segment)
        self._unlinking.discard(segment)  # not when cancelled: shutdown unlinks it then

    def _spawn(self, worker_id: int, actor_id: bytes | None,
               runtime_env: RuntimeEnv | None) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        interrupts_in, interrupts = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "p2pexec.exec.worker", str(child_end.fileno()),
                 str(os.getpid()), str(interrupts_in)],
                pass_fds=[child_end.fileno(), interrupts_in], close_fds=True,
                stdin=subprocess.DEVNULL, env=_worker_environment())
        except BaseException:
            os.close(interrupts)
            raise
        finally:
            child_end.close()
            os.close(interrupts_in)
        os.set_blocking(interrupts, False)
        parent_end.setblocking(False)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent_end))
        link = ClientLink(worker_id, parent_end, stream, process, interrupts=interrupts,
                          runtime_env=runtime_env)
        self.links[worker_id] = link
        link.queue(self.codec.frame(self._configure(runtime_env)))
        link.flush()
        kind = "actor" if actor_id is not None else "pool"
        log.debug("started %s worker %d (pid %d)", kind, worker_id, process.pid)
        self._nursery.start_soon(self._serve_worker, link)

    def _configure(self, runtime_env: RuntimeEnv | None = None, job: bytes = b""
                   ) -> p.Configure:
        return p.Configure(self.node_id, os.getpid(), self.config.inline_limit,
                           self.import_paths(), os.getcwd(), self.spill_dir or "",
                           runtime_env, self.packages.directory, job)

    def import_paths(self) -> list[str]:
        """Where this node's workers import from: what a peer running its tasks needs."""
        own = [path for path in sys.path if path]
        return own + [path for path in self._driver_paths if path not in own]

    def learn_paths(self, paths: list[str]) -> None:
        """A driver's (or a peer's) import paths: every worker, running or future, can
        import from them."""
        new = [path for path in paths if path and path not in self._driver_paths]
        if not new:
            return
        self._driver_paths += new
        for link in self.links.values():
            if not link.is_driver:
                link.queue(self.codec.frame(self._configure(link.runtime_env)))
                link.flush()

    def _kill(self, link: ClientLink) -> None:
        if link.process is not None and link.process.poll() is None:
            try:
                link.process.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    # ---- per client ----
    async def _serve_worker(self, link: ClientLink) -> None:
        await self._serve_link(link, FrameDecoder(p.MAX_FRAME))
        await trio.to_thread.run_sync(link.process.wait)
        self._forget_link(link)
        self._apply(self.core.handle(WorkerDied(link.client_id, _exit_reason(link.process))))

    async def serve_driver(self, stream: trio.SocketStream, hello: p.Hello,
                           decoder: FrameDecoder) -> None:
        """Serve a driver that attached through the control socket (`hello` was its first
        message; `decoder` holds what it sent after it) until it goes away, then drop
        everything it held: its refs, its queued tasks and the actors it created unless
        they are detached (Ray's driver lifetime). A `Hello` of the output role opens
        an attached driver's output stream instead."""
        if hello.role == p.OUTPUT_ROLE:
            await self._serve_output(stream, hello)
            return
        client_id = self._next_driver
        self._next_driver -= 1
        sock = socket.socket(fileno=os.dup(stream.socket.fileno()))
        sock.setblocking(False)
        link = ClientLink(client_id, sock, stream, pid=hello.pid)
        self.links[client_id] = link
        log.info("driver pid %d attached", hello.pid)
        self.learn_paths(hello.sys_path)
        link.queue(self.codec.frame(self._configure(job=job_id(self.node_id, client_id))))
        link.flush()
        decoder.max_frame_size = p.MAX_FRAME
        try:
            await self._serve_link(link, decoder)
        finally:
            self._forget_link(link)
            if link.output is not None:  # what it has left goes, then the stream ends
                link.output.close()
            sock.close()
            for wait in list(link.waits):
                wait.finish()
            self._apply(self.core.handle(ClientLeft(client_id)))
            log.info("driver pid %d detached; its references, queued tasks and actors "
                     "were released", hello.pid)

    async def _serve_output(self, stream: trio.SocketStream, hello: p.Hello) -> None:
        """An attached driver's output stream: an empty `Output` says it is open, then
        what the driver's tasks print, batched and bounded (a driver that does not read
        loses lines, with a notice, rather than the node filling up). It ends after the
        driver detaches, once what was left is sent."""
        home = job_home(hello.job)
        link = self.links.get(home[1]) if home is not None and home[0] == self.node_id \
            and home[1] < 0 else None
        if link is None or link.pid != hello.pid or link.output is not None:
            log.warning("pid %d opened an output stream for no driver of its own; closed",
                        hello.pid)
            return
        sink = link.output = _OutputStream(self.output_limits)
        try:
            await stream.send_all(self.codec.frame(Output([])))
            while not sink.closed or sink.buffer.pending:
                await sink.wake.wait()
                sink.wake = trio.Event()
                records = sink.buffer.take()
                if records:
                    await stream.send_all(self.codec.frame(Output(records)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the driver exited; its link's end closes the rest
        finally:
            if link.output is sink:
                link.output = None

    # ---- output of tasks and actors ----
    def route_output(self, records: list[OutputLines], from_peer: bool = False) -> None:
        """Send what tasks printed on to their job's driver: here, or at the job's home
        node (what peers send is for this node's drivers only: anything else is
        unclaimed, never forwarded again)."""
        local: dict[int | None, list[OutputLines]] = {}
        for record in records:
            home = job_home(record.job)
            if home is not None and home[0] != self.node_id:
                if not from_peer and self.mesh is not None:
                    self.mesh.send_output(home[0], record)
                    continue
                home = None
            local.setdefault(None if home is None else home[1], []).append(record)
        for holder, batch in local.items():
            self._deliver_output(holder, batch)

    def _deliver_output(self, holder: int | None, records: list[OutputLines]) -> None:
        sink = self.unclaimed_output
        if holder == DRIVER and self.driver_output is not None:
            sink = self.driver_output
        elif holder is not None and holder < 0:
            link = self.links.get(holder)
            if link is not None and link.output is not None:
                link.output.add(records)
                return
        if sink is not None:
            sink(records)

    def _forget_link(self, link: ClientLink) -> None:
        if self.links.get(link.client_id) is link:
            del self.links[link.client_id]
        if link.interrupts is not None:
            os.close(link.interrupts)
            link.interrupts = None

    async def _serve_link(self, link: ClientLink, decoder: FrameDecoder) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_link, link)
            try:
                await self._read_link(link, decoder)
            finally:
                nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await link.stream.aclose()

    async def _write_link(self, link: ClientLink) -> None:
        """Writes what `flush` could not: a full socket buffer (large frames, a busy
        client) waits here, and frames queued meanwhile follow in order."""
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

    async def _read_link(self, link: ClientLink, decoder: FrameDecoder) -> None:
        sock = link.sock  # the stream's socket, non-blocking
        # a buffer per link, never shared: trio checkpoints after a read, so other links
        # read before this one's bytes reach its decoder
        buffer = memoryview(bytearray(RECEIVE_SIZE))
        size = 0
        link.decoder = decoder
        while True:
            try:
                bodies = decoder.feed(buffer[:size])
            except RemoteProtocolError as exc:
                self._drop_for(link, exc)
                return
            if bodies and not self._take_frames(link, bodies):
                return
            try:  # wait, then read: a client's messages come one at a time, so a read
                # straight after one finds nothing (trio's recv tries first) and costs a
                # failed syscall and an exception on the loop, and lets go of the GIL
                # just as the driver thread the loop woke wants it
                link.parked = True
                try:
                    await trio.lowlevel.wait_readable(sock)
                finally:
                    link.parked = False
                if self._ops:  # what a driver thread read from this link before this
                    self._drain()  # wake-up (`read_reply_here`) goes first, in order
                size = sock.recv_into(buffer)
            except BlockingIOError:  # woken without data after all
                size = 0
                continue
            except (OSError, trio.ClosedResourceError):  # the client died, or we closed it
                return
            if not size:
                return

    def _take_frames(self, link: ClientLink, bodies: list[bytes]) -> bool:
        """Handle a client's frames; False when one was bad and the client is dropped."""
        try:
            self._handle_frames(link, bodies)
        except Exception as exc:  # any bad message costs that client, never the node
            self._drop_for(link, exc)
            return False
        return True

    def _drop_for(self, link: ClientLink, exc: Exception) -> None:
        who = "driver" if link.is_driver else "worker"
        log.error("%s %d (pid %s) sent a message the node could not handle (%s); "
                  "dropping it", who, link.client_id, link.pid, exc)
        self._kill(link)

    def _handle_frames(self, link: ClientLink, bodies: list[bytes]) -> None:
        """One read's worth of a client's frames, scheduled once. A node call (and a
        driver's get) first applies the events before it, so it sees their effect (an
        actor the client just created, an object it just put)."""
        decode = self.codec.decode
        event_of = self._driver_event if link.is_driver else self._worker_event
        events: list[Event] = []
        try:
            for body in bodies:
                message = decode(body)
                kind = type(message)
                if kind is p.Call or (kind is p.Get and link.is_driver):
                    self._apply(self.core.handle(*events))
                    events = []
                    if kind is p.Call:
                        self._answer_call(link.client_id, message)
                    else:
                        self._driver_get(link, message)
                elif kind is Output and not link.is_driver:
                    self.output_limits.check(message)
                    self.route_output(message.records)
                else:
                    events.append(event_of(link.client_id, message))
        finally:
            self._apply(self.core.handle(*events))

    def _common_event(self, client_id: int, message: Any) -> Event | None:
        """The event of a message both kinds of client send; None if it is none of them."""
        kind = type(message)
        if kind is p.Submit:
            env = message.spec.runtime_env
            if env is not None and not self.core.packages.issuperset(env.packages()):
                raise RemoteProtocolError(f"task {message.spec.name} names a runtime_env "
                                          f"package the client never stored here")
            return Submitted(message.spec, client_id)
        if kind is p.Refs:
            return RefsChanged(client_id, message.deltas, message.owners)
        if kind is p.Put:
            check_payload(message.payload)
            return Put(message.object_id, message.payload, message.contained, client_id)
        if kind is p.Register:
            return CodeRegistered(message.code_hash, message.pickled)
        return None

    def _worker_event(self, worker_id: int, message: Any) -> Event:
        """The scheduler event a worker's message stands for."""
        kind = type(message)
        if kind is p.Done:
            for payload in message.payloads:
                check_payload(payload)
            return TaskFinished(worker_id, message.task_id, message.payloads,
                                message.contained, message.seconds, message.args_unmapped)
        if kind is p.Get:
            if message.timeout is not None:
                self._timer_changed.set()
            return GetRequested(worker_id, message.request_id, message.object_ids,
                                message.num_returns, message.timeout, message.given_back,
                                trio.current_time())
        if kind is p.GiveBack:
            return GaveBack(worker_id, message.task_ids)
        if kind is p.Yielded:
            if message.payload is not None:
                check_payload(message.payload)
            return StreamYielded(worker_id, message.task_id, message.index, message.payload,
                                 message.contained, message.end)
        if kind is p.Hello:
            return WorkerReady(worker_id)
        event = self._common_event(worker_id, message)
        if event is None:
            raise RemoteProtocolError(f"a worker may not send {kind.__name__}")
        return event

    def _driver_event(self, client_id: int, message: Any) -> Event:
        """The scheduler event an attached driver's message stands for."""
        event = self._common_event(client_id, message)
        if event is None:
            raise RemoteProtocolError(f"a driver may not send {type(message).__name__}")
        return event

    # ---- an attached driver's get and wait ----
    def _driver_get(self, link: ClientLink, request: p.Get) -> None:
        wait = _DriverWait(self, link, request)
        if self.try_answer(wait, timed_out=False):
            return
        link.waits.add(wait)
        self.watch(wait)
        if request.timeout is not None:
            wait.expiry = trio.CancelScope(
                deadline=trio.current_time() + max(0.0, request.timeout))
            self._nursery.start_soon(self._expire, wait)

    async def _expire(self, wait: _DriverWait) -> None:
        self.timers += 1
        try:
            with wait.expiry:
                await trio.sleep_forever()
        finally:
            self.timers -= 1
        if not wait.done:  # its deadline passed (an answer cancels the scope first)
            self.try_answer(wait, timed_out=True)
            wait.finish()

    def watch(self, wait: _DriverWait) -> None:
        """Wake `wait` as its pending objects complete, once enough of them have."""
        entries = self.core.objects.entries
        request = wait.request
        pending = [oid for oid in wait.object_ids
                   if (entry := entries.get(oid)) is not None and entry.payload is None]
        wanted = (len(wait.object_ids) if request.num_returns < 0
                  else min(request.num_returns, len(wait.object_ids)))
        wait.missing = wanted - (len(wait.object_ids) - len(pending))
        self.unregister_waiter(wait.object_ids, wait)
        self.register_waiter(pending, wait)

    def try_answer(self, wait: _DriverWait, timed_out: bool) -> bool:
        """Reply to `wait` if enough of its objects have values (or it timed out). Ids
        the node does not know resolve to ObjectLostError: the driver's own submits and
        puts arrived before its get, so an unknown id is gone for good."""
        entries = self.core.objects.entries
        request = wait.request
        values: dict[bytes, Any] = {}
        for object_id in wait.object_ids:
            entry = entries.get(object_id)
            if entry is None:
                values[object_id] = system_error_payload(ObjectLostError(
                    f"object {object_id.hex()} is unknown to this node: it was freed, or "
                    f"created by a node that has stopped"))
            elif entry.payload is not None:
                values[object_id] = entry.payload
        wanted = (len(wait.object_ids) if request.num_returns < 0
                  else min(request.num_returns, len(wait.object_ids)))
        if len(values) < wanted and not timed_out:
            return False
        if request.num_returns < 0:
            reply = p.Values(request.request_id, values, [], timed_out)
        else:
            ready = [oid for oid in wait.object_ids if oid in values]
            reply = p.Values(request.request_id, {}, ready if timed_out else ready[:wanted],
                             timed_out)
        wait.link.queue(self.codec.frame(reply))
        wait.link.flush()
        return True

    def call(self, operation: str, argument: Any, answer: Answer) -> None:
        """Run a named node operation (get_actor, kill, nodes...) on the loop's thread and
        hand its outcome to `answer(value, error)`. A plain handler answers at once; an
        async one (it needs the DHT or a peer) runs in the service's nursery and answers
        when done, so the loop never waits for the network."""
        handler = self.call_handlers.get(operation)
        if handler is None:
            answer(None, LocalUsageError(f"unknown node operation {operation!r}"))
            return
        if not inspect.iscoroutinefunction(handler):
            try:
                value = handler(argument)
            except P2PExecError as exc:
                answer(None, exc)
                return
            answer(value, None)
            return
        if self._closed:
            answer(None, P2PExecError("the node is stopping"))
            return
        self._nursery.start_soon(self._call_async, operation, handler, argument, answer)

    @staticmethod
    async def _call_async(operation: str, handler: Callable[[Any], Any], argument: Any,
                          answer: Answer) -> None:
        """An async node operation; its caller is answered even if the node stops first
        (a driver must never wait for an answer that will not come)."""
        outcome: tuple[Any, P2PExecError | None] = (
            None, P2PExecError(f"the node stopped during {operation}"))
        try:
            outcome = (await handler(argument), None)
        except P2PExecError as exc:
            outcome = (None, exc)
        except Exception as exc:  # a bug in a handler costs its caller, never the node
            log.exception("node operation %s failed", operation)
            outcome = (None, P2PExecError(f"{operation} failed on the node: {exc!r}"))
        finally:
            answer(*outcome)

    def cancel_event(self, argument: Any) -> CancelRequested:
        """Check a px.cancel ([object id, owner, force, recursive]) from any client and
        make its event: Ray's usage errors raise here, at the caller. An embedded
        driver calls it from its own thread: a look-up in the task table, no change."""
        if not (isinstance(argument, (list, tuple)) and len(argument) == 4
                and isinstance(argument[0], bytes) and len(argument[0]) == OBJECT_ID_SIZE
                and isinstance(argument[1], bytes) and isinstance(argument[2], bool)
                and isinstance(argument[3], bool)):
            raise LocalUsageError("cancel takes [object id, owner, force, recursive]")
        object_id, owner, force, recursive = argument
        task_id = task_of(object_id)
        refusal = self.core.cancel_refusal(task_id, force)
        if refusal is not None:
            raise LocalUsageError(refusal)
        return CancelRequested(task_id, force, recursive, owner)

    def kill_actor(self, actor_id: bytes, reason: str | None = None) -> bool:
        """px.kill (or, with its `reason`, the actor's own exit): True if the actor was
        alive here (and is now stopped)."""
        alive = self.core.actor_alive(actor_id)
        self._apply(self.core.handle(ActorKilled(actor_id) if reason is None
                                     else ActorKilled(actor_id, reason)))
        return alive

    def crash_actor(self, actor_id: bytes) -> bool:
        """px.kill(no_restart=False): kill the actor's process, so that it restarts as
        after a crash (while its max_restarts allows). True if it lives here."""
        actor = self.core.actors.get(actor_id)
        if actor is None or actor.dead_reason is not None:
            return False
        link = self.links.get(actor.worker)
        if link is not None:
            self._kill(link)
        elif self.inline is not None:
            self.inline.stop(actor.worker)
        return True

    def _answer_call(self, client_id: int, request: p.Call) -> None:
        def answer(value: Any, error: P2PExecError | None) -> None:
            if error is None:
                reply = p.Reply(request.request_id, True, value)
            else:
                reply = p.Reply(request.request_id, False, None, type(error).__name__,
                                str(error))
            link = self.links.get(client_id)
            if link is not None:
                link.queue(self.codec.frame(reply))
                link.flush()

        self.call(request.operation, request.argument, answer)

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._timer_changed.wait()
                self._timer_changed = trio.Event()
                continue
            self._apply(self.core.handle(Tick(trio.current_time())))

    def drivers(self) -> int:
        """How many drivers are attached right now."""
        return sum(1 for link in self.links.values() if link.is_driver)

    def pool_ready(self) -> int:
        """How many workers have said READY."""
        return sum(1 for w in self.core.workers.values() if w.ready)


def _event_of_op(op: tuple) -> Event:
    """The scheduler event of an operation a driver thread posted."""
    kind = op[0]
    if kind == "submit":
        return Submitted(op[1], DRIVER)
    if kind == "refs":
        return RefsChanged(DRIVER, op[1], op[2])
    if kind == "put":
        return Put(op[1], op[2], op[3], DRIVER)
    if kind == "register":
        return CodeRegistered(op[1], op[2])
    if kind == "cancel":  # checked by `cancel_event` in the driver's thread
        return op[1]
    raise LocalUsageError(f"unknown driver operation {kind!r}")


class _HeldWhileAwake(trio.abc.Instrument):
    """Holds `lock` while the trio loop runs and lets it go while the loop waits for
    I/O: a thread that takes it knows no task of the loop touches the scheduler until
    it lets go (the loop waits for it on waking, a few microseconds at most)."""

    def __init__(self, lock: threading.Lock, wants: int | None) -> None:
        self.lock = lock
        self.wants = wants

    def before_io_wait(self, timeout: float) -> None:
        self.lock.release()

    def after_io_wait(self, timeout: float) -> None:
        if self.lock.acquire(blocking=False):
            return
        if self.wants is None:
            self.lock.acquire()
            return
        os.eventfd_write(self.wants, 1)  # a thread reading a reply lets go when told
        self.lock.acquire()
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.wants)  # met: the next holder must not see it


class Wakeup:
    """Wakes one blocked thread, set from another (the node loop). A bare lock, held
    while unset: `set` and `wait` are single C calls, where a `threading.Event` runs a
    Python-level condition that the node loop pays for on every completion. A wake
    clears it again; setting it twice before the wait counts once. Any thread may set
    it (`ExecService._apply_here` does, for a completion it stepped)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # set already, not waited for yet
            self._lock.release()

    def wait(self, timeout: float) -> bool:
        """True when set within `timeout` seconds (and now clear again)."""
        return self._lock.acquire(timeout=timeout)


_REPLY_KINDS = frozenset({p.Done, p.Refs, p.Yielded, p.GiveBack})
"""What a driver thread that reads a worker's reply handles itself (`_take_reply`):
messages whose events only step the core. The rest (a nested get, output, a node call)
need the loop."""


def _signal_fd() -> int | None:
    """An eventfd for `_HeldWhileAwake` to say the loop wants its lock (None where the
    platform has none: then threads never read replies themselves)."""
    if not hasattr(os, "eventfd"):
        return None
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def _loop_epoll() -> select.epoll | None:
    """The running trio loop's epoll, through a duplicate of its descriptor: a thread
    reading a worker's reply stops the loop from watching that worker meanwhile (trio
    registers every descriptor one-shot, so the registration stays, watching nothing,
    until set back). Trio has no public way to it; where its internals differ, None
    (threads then leave replies to the loop, as before)."""
    try:
        from trio._core._run import GLOBAL_RUN_CONTEXT
        epoll = GLOBAL_RUN_CONTEXT.runner.io_manager._epoll
    except (ImportError, AttributeError):
        return None
    if not isinstance(epoll, select.epoll):
        return None
    return select.epoll.fromfd(os.dup(epoll.fileno()))


WORKER_THREADS = {"OMP_NUM_THREADS": "1"}
"""Set in every worker unless the node's environment sets it (Ray's default): a worker
runs on one CPU, and numpy's BLAS would otherwise start a thread per core in each of
them (one example ran 1.8x faster with it)."""


def _worker_environment() -> dict[str, str]:
    return {**WORKER_THREADS, **os.environ}


def _write_interrupt(pipe: int, task_id: bytes) -> None:
    """Tell a worker a task of its was cancelled (16 bytes: one atomic pipe write)."""
    try:
        os.write(pipe, task_id)
    except BlockingIOError:  # 4,096 cancels it has not read: it is stuck, not listening
        log.warning("worker interrupt pipe full; cancel of task %s not delivered",
                    task_id.hex())
    except OSError:  # it is exiting; its death settles the task
        pass


def _exit_reason(process: subprocess.Popen) -> str:
    code = process.returncode
    if code is not None and code < 0:
        try:
            return f"pid {process.pid} killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"pid {process.pid} killed by signal {-code}"
    return f"pid {process.pid} exit code {code}"
