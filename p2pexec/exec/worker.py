"""A worker process: runs tasks and actor methods its node sends, one at a time.

Plain blocking sockets and no trio: a worker's only job is the hot path, and every
microsecond here is paid per task. Started as
`python -m p2pexec.exec.worker FD PARENT_PID INTERRUPT_FD` with one end of a socketpair
and the read end of its interrupt pipe. It dies with its node: the kernel kills it when
the node thread that spawned it exits (PR_SET_PDEATHSIG), a watchdog thread notices a
new parent, and end-of-file on the socket ends the loop.

px.cancel reaches a worker on the interrupt pipe, read by a thread that interrupts the
main thread (SIGINT) when the cancelled task runs there. An actor that runs several
calls at once (threaded, `max_concurrency` > 1, or async) turns its worker's main thread
into a reader of the link once the actor exists: calls run on a thread pool or an event
loop, and each request they make waits for its own reply.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from p2pexec.errors import LocalUsageError, RemoteProtocolError
from p2pexec.exec import context, refs, runtime_env, serialization, shm
from p2pexec.exec import protocol as p
from p2pexec.exec.capture import DRAIN_AFTER, Attribution, RawOutput, capture_output
from p2pexec.exec.link import LinkEnd
from p2pexec.exec.output import WORKER_LIMITS, Output, OutputBuffer
from p2pexec.exec.refs import TASK_ID_SIZE, IdGenerator, ObjectRef, RefCounter
from p2pexec.exec.runner import TaskRunner, is_async_class
from p2pexec.exec.runtime_env import RuntimeEnv
from p2pexec.exec.task import ACTOR_CREATE, TASK, TaskSpec

if TYPE_CHECKING:
    import concurrent.futures

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


class WorkerRuntime:
    """The node as seen from inside a worker: the API's calls become frames on the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.link = LinkEnd(sock)
        self.inbox: deque[Any] = deque()
        self.replies: dict[int, Any] = {}
        self.registered: set[bytes] = set()
        self.requests = itertools.count(1)
        self.ids = IdGenerator()
        self.owner_pid = os.getppid()
        self.node_id = b""
        self.inline_limit = 100 * 1024
        self.segments = None  # argument segments are recycled for the node's own process
        self.runner = TaskRunner(self)
        self.lock = threading.RLock()
        self.waiters: dict[int, Callable[[Any], None]] | None = None
        """Once an actor runs calls concurrently: what to do with each request's reply,
        by request id (None: requests pump the link on the caller's stack)."""
        self.visible_gpus: str | None = None
        """What this process last set `CUDA_VISIBLE_DEVICES` to (None: not yet)."""
        self.counter = RefCounter(None)  # changes ride on the next message sent
        refs.install_counter(self.counter)
        self.cancelled: set[bytes] = set()
        """Work of this worker px.cancel cancelled (added by the interrupt thread)."""
        self.interruptible: list[bytes] = []
        """The plain tasks on the main thread's stack, innermost last: what an interrupt
        stops (a running actor call never is, as in Ray)."""
        self.shielded = 1
        """Above 0 while the main thread is not in task code (it serves, or talks to the
        node): an interrupt then waits (`interrupt_pending`) instead of raising in the
        middle of a frame. Waiting for input is the exception: nothing is half read."""
        self.interrupt_pending = False
        self.abandoned: set[int] = set()
        """Requests an interrupt cut short: their replies are dropped when they come."""
        self.loop_calls: _EventLoopCalls | None = None
        self.runtime_env: RuntimeEnv | None = None
        """The environment this worker was started for: what its work runs in, and what
        the work it submits inherits (Ray's rule)."""
        self.package_dir = ""
        """Where the node unpacked the environment's packages."""
        self.env_pending = False
        """The environment is not taken on yet: its packages may still be on their way
        when an actor's worker starts, so it is taken on before the first task."""
        self.output = OutputBuffer(WORKER_LIMITS, os.getpid(), time.monotonic)
        """What this worker's work printed, until it rides on the next message
        (`exec.capture`)."""
        self.attribution = Attribution(self.runner, type(self).execute.__code__)
        self.raw_output: RawOutput | None = None
        """Fds 1 and 2, once captured."""

    # ---- I/O ----
    def send(self, message: Any) -> None:
        with self.lock:
            self.shielded += 1
            try:
                data = self.link.frame(message, self.counter.take_pending())
                if (type(message) is p.Done and message.seconds >= DRAIN_AFTER
                        and self.raw_output is not None):  # what its subprocesses wrote
                    self.raw_output.drain()
                if self.output.pending:  # printed lines go first: before a task's result
                    data = self.link.codec.frame(Output(self.output.take())) + data
                self.link.sock.sendall(data)
            finally:
                self.shielded -= 1
        if self.interrupt_pending:
            self._interrupt_now()

    def receive(self) -> Any:
        """The next message from the node, blocking."""
        self.shielded += 1
        try:
            while not self.inbox:
                self.inbox.extend(self.link.receive())
        finally:
            self.shielded -= 1
        if self.interrupt_pending:
            self._interrupt_now()
        return self.inbox.popleft()

    # ---- cancel ----
    def listen_for_interrupts(self, pipe: int) -> None:
        """Take cancels from the node's interrupt pipe on a thread of their own."""
        signal.signal(signal.SIGINT, self._on_interrupt)
        threading.Thread(target=self._read_interrupts, args=(pipe,), daemon=True,
                         name="p2pexec-interrupts").start()

    def _read_interrupts(self, pipe: int) -> None:
        main = threading.main_thread().ident
        while True:
            data = os.read(pipe, TASK_ID_SIZE * 256)  # whole ids: each came in one write
            if not data:
                return
            for start in range(0, len(data), TASK_ID_SIZE):
                task_id = data[start:start + TASK_ID_SIZE]
                self.cancelled.add(task_id)  # first, then look: see `execute`
                if self.loop_calls is not None:
                    self.loop_calls.cancel(task_id)
                elif task_id in self.interruptible:  # (on the stack: `_request` stops
                    signal.pthread_kill(main, signal.SIGINT)  # it when its turn comes)

    def _on_interrupt(self, _signum: int, _frame: Any) -> None:
        """SIGINT: a cancelled task runs on this thread (else it is a Ctrl-C meant for
        the driver, or a task that already ended: ignored)."""
        if not self._interrupted():
            return
        if self.shielded and not self.link.waiting:
            self.interrupt_pending = True
            return
        raise KeyboardInterrupt

    def _interrupted(self) -> bool:
        """The innermost task on this stack is cancelled (an outer one is interrupted
        once the tasks run on top of it have returned: see `_request`)."""
        interruptible = self.interruptible
        return bool(interruptible) and interruptible[-1] in self.cancelled

    def _interrupt_now(self) -> None:
        """Raise the interrupt that waited, once back in task code."""
        if not self.shielded:
            self.interrupt_pending = False
            if self._interrupted():
                raise KeyboardInterrupt

    # ---- serving ----
    def serve(self) -> None:
        self.send(p.Hello(p.WORKER, os.getpid()))
        while True:
            self.handle(self.receive())

    def handle(self, message: Any) -> None:
        kind = type(message)
        if kind is p.Execute:
            self.execute(message)
            if message.kind == ACTOR_CREATE and self.runner.actor is not None and (
                    message.max_concurrency > 1 or is_async_class(type(self.runner.actor))):
                self.serve_concurrently(message.max_concurrency)
        elif kind is p.Configure:
            for entry in reversed(message.sys_path):
                if entry not in sys.path:
                    sys.path.insert(0, entry)
            env = message.runtime_env
            if message.cwd and os.path.isdir(message.cwd) and (env is None
                                                               or env.working_dir is None):
                os.chdir(message.cwd)
            if env is not None and self.runtime_env is None:
                self.runtime_env, self.package_dir = env, message.package_dir
                self.env_pending = True
            self.owner_pid, self.inline_limit = message.owner_pid, message.inline_limit
            self.node_id = message.node_id
            shm.set_spill_dir(message.spill_dir or None)
        elif kind is p.Values or kind is p.Reply:
            if self.abandoned and message.request_id in self.abandoned:
                self.abandoned.discard(message.request_id)
            else:
                self.replies[message.request_id] = message
        else:
            raise RemoteProtocolError(f"worker got a {kind.__name__} message, which only "
                                      f"the node accepts")

    def execute(self, work: p.Execute) -> None:
        if self.env_pending:
            self.env_pending = False
            runtime_env.enter(self.runtime_env, self.package_dir)
        started = time.perf_counter()
        outer = self.visible_gpus if self.runner.current()[0] else None  # nested: its caller's
        ids = (self.runner.actor_work or work).gpu_ids  # an actor's calls: the actor's
        self._show_gpus(",".join(map(str, ids)) if ids else "")
        mappings: list = []
        task_id = work.task_id
        interruptible = work.kind == TASK
        if interruptible:
            self.interruptible.append(task_id)
        self.shielded -= 1
        try:  # on the stack first, then look: a cancel the interrupt thread adds after
            if self.cancelled and task_id in self.cancelled:  # this look interrupts it
                payloads, contained = self.runner.cancelled(work), []
            else:
                payloads, contained = self.runner.run(work, mappings)
        except KeyboardInterrupt:  # px.cancel
            payloads, contained = self.runner.cancelled(work), []
        finally:
            self.shielded += 1
            if interruptible:
                self.interruptible.pop()
        if self.cancelled:
            self.cancelled.discard(task_id)
        if outer is not None:  # back to the task on whose stack this one ran
            self._show_gpus(outer)
        self.finish(work, started, payloads, contained, mappings)

    def finish(self, work: p.Execute, started: float, payloads: list,
               contained: list[list[bytes]], mappings: list) -> None:
        """Send a call's results; end the worker if the call ended its actor."""
        self.attribution.last = (work.job, work.name)  # output read after it ended
        # the arguments are garbage now unless the task kept them: if their segment is
        # unmapped, the node may hand it back for reuse instead of freeing it
        released = bool(mappings) and all(
            [serialization.close_mapping(mapping) for mapping in mappings])
        self.send(p.Done(work.task_id, payloads, contained, time.perf_counter() - started,
                         released))
        if self.runner.exiting:  # the actor ended itself: its node stops it for good
            self.call("exit_actor", self.runner.actor_work.task_id)
            os._exit(0)

    def serve_concurrently(self, limit: int) -> NoReturn:
        """From here on this thread only reads the link: the actor's calls run on up to
        `limit` threads (or as tasks of one event loop, for an async actor), and replies
        go to the requests waiting for them."""
        if is_async_class(type(self.runner.actor)):
            self.loop_calls = _EventLoopCalls(self, limit)
            start = self.loop_calls.start
        else:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(limit, thread_name_prefix="p2pexec-actor")
            start = lambda work: pool.submit(self.execute, work)  # noqa: E731
        waiters = self.waiters = {}
        while True:
            message = self.receive()
            kind = type(message)
            if kind is p.Execute:
                start(message)
            elif kind is p.Values or kind is p.Reply:
                waiter = waiters.pop(message.request_id, None)
                if waiter is None:
                    raise RemoteProtocolError(f"node answered request "
                                              f"{message.request_id}, which nobody made")
                waiter(message)
            else:
                self.handle(message)

    def future(self, ref: ObjectRef) -> concurrent.futures.Future:
        """`ref.future()` (and so `await ref`) inside an actor that runs calls
        concurrently: the reply completes it without blocking the caller."""
        if self.waiters is None:
            raise LocalUsageError("`await ref` and ref.future() work in drivers and in "
                                  "async or threaded actors; a task or a one-at-a-time "
                                  "actor uses px.get")
        import concurrent.futures

        future: concurrent.futures.Future = concurrent.futures.Future()

        def deliver(values: p.Values) -> None:
            if not future.set_running_or_notify_cancel():
                return  # its waiter gave up (an asyncio timeout)
            try:
                value = serialization.from_payload(values.payloads[ref.id])
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_result(value)

        request_id = next(self.requests)
        self.waiters[request_id] = deliver
        self.send(p.Get(request_id, [ref.id], -1, None))
        return future

    def _show_gpus(self, visible: str) -> None:
        """Show CUDA only the GPUs the node gave the work about to run ("" hides them
        all), so a GPU task's setting never leaks into the next task on this process."""
        if visible != self.visible_gpus:
            os.environ[CUDA_VISIBLE_DEVICES] = self.visible_gpus = visible

    def _keep_code(self, work: p.Execute) -> None:
        """The node ships a function once per worker: keep it even if the task goes back."""
        if work.code is not None:
            self.runner.unloaded[work.code_hash] = work.code

    # ---- the API, from inside a task ----
    def request(self, build: Any, blocking: bool = False) -> Any:
        """Send the request `build(request_id)` and pump messages until its reply arrives.

        A blocking request (get/wait) first hands unstarted queued tasks back to the node,
        so they run elsewhere while this worker lends its CPU; tasks the node sends marked
        `nested` (ones this worker is waiting for) run right here, on this stack.
        """
        waiters = self.waiters
        if waiters is None:
            with self.lock:  # threads inside a task take turns on the one link (re-entrant
                return self._request(build, blocking)  # for nested tasks on this stack)
        import concurrent.futures

        reply: concurrent.futures.Future = concurrent.futures.Future()
        request_id = next(self.requests)
        waiters[request_id] = reply.set_result
        self.send(build(request_id, []) if blocking else build(request_id))
        return reply.result()

    def _request(self, build: Any, blocking: bool) -> Any:
        request_id = next(self.requests)
        self.send(build(request_id, self._give_back()) if blocking else build(request_id))
        deferred: list[Any] = []
        self.shielded += 1  # a nested task run here is task code again (`execute`)
        try:
            while request_id not in self.replies:
                message = self.receive()
                if type(message) is p.Execute and not message.nested:
                    if blocking and message.kind == TASK:
                        self._keep_code(message)
                        self.send(p.GiveBack([message.task_id]))  # on its way as we blocked
                    else:
                        deferred.append(message)
                else:
                    self.handle(message)
                    if self.cancelled and self._interrupted():  # a nested task returned
                        raise KeyboardInterrupt  # to its cancelled caller
        except BaseException:  # interrupted (px.cancel): the reply has nobody to go to
            self.abandoned.add(request_id)
            raise
        finally:
            self.shielded -= 1
            self.inbox.extendleft(reversed(deferred))
        if self.interrupt_pending:
            self._interrupt_now()
        return self.replies.pop(request_id)

    def _give_back(self) -> list[bytes]:
        kept: deque[Any] = deque()
        given: list[bytes] = []
        for message in self.inbox:
            if type(message) is p.Execute and message.kind == TASK:
                self._keep_code(message)
                given.append(message.task_id)
            else:
                kept.append(message)
        self.inbox = kept
        return given

    def register(self, code_hash: bytes, pickled: bytes) -> None:
        if code_hash not in self.registered:
            self.send(p.Register(code_hash, pickled))
            self.registered.add(code_hash)

    def submit(self, spec: TaskSpec) -> None:
        self.send(p.Submit(spec))

    def get_payloads(self, object_ids: list[bytes], timeout: float | None
                     ) -> tuple[dict[bytes, Any], bool]:
        reply = self.request(lambda rid, back: p.Get(rid, object_ids, -1, timeout, back),
                             blocking=True)
        return reply.payloads, reply.timed_out

    def wait(self, object_ids: list[bytes], num_returns: int, timeout: float | None
             ) -> list[bytes]:
        return self.request(lambda rid, back: p.Get(rid, object_ids, num_returns, timeout,
                                                    back), blocking=True).ready

    def put(self, object_id: bytes, payload: list, contained: list[bytes]) -> None:
        self.send(p.Put(object_id, payload, contained))

    def call(self, operation: str, argument: Any) -> Any:
        reply = self.request(lambda rid: p.Call(rid, operation, argument))
        if not reply.ok:
            raise serialization.system_error(reply.error_class, reply.error)
        return reply.value

    def cancel(self, argument: list) -> None:
        self.call("cancel", argument)

    def stream(self, task_id: bytes, index: int, payload: list | None,
               contained: list[bytes], end: bool) -> None:
        """A streaming task yielded value `index` (or ended): its node hears at once."""
        self.send(p.Yielded(task_id, index, payload, contained, end))

    def segment_name(self, object_id: bytes) -> str:
        return shm.segment_name(self.owner_pid, object_id)

    @property
    def job(self) -> bytes:
        """The job of what the calling thread submits: that of the work it runs."""
        return self.attribution.label()[0]


class _EventLoopCalls:
    """An async actor's calls: tasks on one asyncio event loop in its own thread, at most
    `limit` running at once, started in the order they arrive."""

    def __init__(self, runtime: WorkerRuntime, limit: int) -> None:
        import asyncio

        self.runtime = runtime
        self.loop = asyncio.new_event_loop()
        self.slots = asyncio.Semaphore(limit)
        self.tasks: dict[bytes, asyncio.Task] = {}
        """The calls in progress by task id (the loop keeps only weak references to its
        tasks)."""
        threading.Thread(target=self.loop.run_forever, name="p2pexec-actor-loop",
                         daemon=True).start()

    def start(self, work: p.Execute) -> None:
        self.loop.call_soon_threadsafe(self._spawn, work)

    def cancel(self, task_id: bytes) -> None:
        """px.cancel of a call, from any thread: its asyncio task is cancelled (one not
        spawned yet sees the id in `cancelled` and never starts)."""
        self.loop.call_soon_threadsafe(self._cancel, task_id)

    def _cancel(self, task_id: bytes) -> None:
        task = self.tasks.get(task_id)
        if task is not None:
            task.cancel()

    def _spawn(self, work: p.Execute) -> None:
        task = self.loop.create_task(self._run(work))
        self.tasks[work.task_id] = task
        task.add_done_callback(lambda _task: self.tasks.pop(work.task_id, None))

    async def _run(self, work: p.Execute) -> None:
        import asyncio

        runtime = self.runtime
        started = time.perf_counter()
        mappings: list = []
        try:
            if work.task_id in runtime.cancelled:
                raise asyncio.CancelledError
            async with self.slots:
                payloads, contained = await runtime.runner.run_async(work, mappings)
        except asyncio.CancelledError:
            payloads, contained = runtime.runner.cancelled(work), []
        runtime.cancelled.discard(work.task_id)
        runtime.finish(work, started, payloads, contained, mappings)


def _die_with_parent(parent_pid: int) -> None:
    """Never outlive the node: kernel signal on Linux, plus a watchdog everywhere."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="p2pexec-parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    fd, parent_pid, interrupts = int(argv[0]), int(argv[1]), int(argv[2])
    _die_with_parent(parent_pid)
    sock = socket.socket(fileno=fd)
    runtime = WorkerRuntime(sock)
    runtime.raw_output = capture_output(runtime)  # what tasks print goes to their driver
    runtime.listen_for_interrupts(interrupts)  # SIGINT: only to stop a cancelled task
    context.set_worker_runtime(runtime)
    try:
        runtime.serve()
    except (EOFError, ConnectionError):
        pass
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
