"""A worker process: runs tasks and actor methods its node sends, one at a time.

Plain blocking sockets and no trio: a worker's only job is the hot path, and every
microsecond here is paid per task. Started as `python -m p2pexec.exec.worker FD PARENT_PID`
with one end of a socketpair. It dies with its node: the kernel kills it when the node
thread that spawned it exits (PR_SET_PDEATHSIG), a watchdog thread notices a new parent,
and end-of-file on the socket ends the loop.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections import deque
from typing import Any

from p2pexec.errors import RemoteProtocolError
from p2pexec.exec import context, refs, serialization
from p2pexec.exec import protocol as p
from p2pexec.exec.link import LinkEnd
from p2pexec.exec.refs import IdGenerator, ObjectRef, RefCounter
from p2pexec.exec.shm import segment_name
from p2pexec.exec.task import ACTOR_CALL, ACTOR_CREATE, TASK, TaskSpec


class WorkerRuntime:
    """The node as seen from inside a worker: the API's calls become frames on the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.link = LinkEnd(sock)
        self.inbox: deque[Any] = deque()
        self.replies: dict[int, Any] = {}
        self.callables: dict[bytes, Any] = {}
        self.unloaded: dict[bytes, bytes] = {}
        self.registered: set[bytes] = set()
        self.requests = itertools.count(1)
        self.ids = IdGenerator()
        self.owner_pid = os.getppid()
        self.node_id = b""
        self.inline_limit = 100 * 1024
        self.segments = None  # argument segments are recycled for the node's own process
        self.actor: Any = None
        self.lock = threading.RLock()
        self.counter = RefCounter(None)  # changes ride on the next message sent
        refs.install_counter(self.counter)

    # ---- I/O ----
    def send(self, message: Any) -> None:
        with self.lock:
            self.link.sock.sendall(self.link.frame(message, self.counter.take_pending()))

    def receive(self) -> Any:
        """The next message from the node, blocking."""
        while not self.inbox:
            self.inbox.extend(self.link.receive())
        return self.inbox.popleft()

    # ---- serving ----
    def serve(self) -> None:
        self.send(p.Hello(p.WORKER, os.getpid()))
        while True:
            self.handle(self.receive())

    def handle(self, message: Any) -> None:
        kind = type(message)
        if kind is p.Execute:
            self.execute(message)
        elif kind is p.Configure:
            for entry in reversed(message.sys_path):
                if entry not in sys.path:
                    sys.path.insert(0, entry)
            if message.cwd and os.path.isdir(message.cwd):
                os.chdir(message.cwd)
            self.owner_pid, self.inline_limit = message.owner_pid, message.inline_limit
            self.node_id = message.node_id
        elif kind is p.Values or kind is p.Reply:
            self.replies[message.request_id] = message
        else:
            raise RemoteProtocolError(f"worker got a {kind.__name__} message, which only "
                                      f"the node accepts")

    def execute(self, work: p.Execute) -> None:
        started = time.perf_counter()
        mappings: list = []
        payloads, contained = self._run(work, mappings)
        # the arguments are garbage now unless the task kept them: if their segment is
        # unmapped, the node may hand it back for reuse instead of freeing it
        released = bool(mappings) and all(
            [serialization.close_mapping(mapping) for mapping in mappings])
        self.send(p.Done(work.task_id, payloads, contained, time.perf_counter() - started,
                         released))

    def _run(self, work: p.Execute, mappings: list) -> tuple[list, list[list[bytes]]]:
        try:
            arguments = serialization.from_payload(work.args, mappings)
            args, kwargs = _resolve_arguments(arguments, work.deps)
            if work.kind == ACTOR_CALL:
                result = getattr(self.actor, work.method)(*args, **kwargs)
            else:
                target = self._load(work.code_hash, work.code)
                if work.kind == ACTOR_CREATE:
                    self.actor = target(*args, **kwargs)
                    result = None
                else:
                    result = target(*args, **kwargs)
            return self._store_results(result, work.return_ids, work.name)
        except Exception as exc:
            return [serialization.task_error_payload(exc, work.name)] * len(work.return_ids), []

    def _keep_code(self, work: p.Execute) -> None:
        """The node ships a function once per worker: keep it even if the task goes back."""
        if work.code is not None:
            self.unloaded[work.code_hash] = work.code

    def _load(self, code_hash: bytes | None, code_bytes: bytes | None) -> Any:
        target = self.callables.get(code_hash)
        if target is None:
            code_bytes = code_bytes or self.unloaded.pop(code_hash, None)
            if code_bytes is None:
                raise RemoteProtocolError("node sent a task for a function it never shipped")
            target = self.callables[code_hash] = pickle.loads(code_bytes)
        return target

    def _store_results(self, result: Any, return_ids: list[bytes], name: str
                       ) -> tuple[list, list[list[bytes]]]:
        """Payloads of the return values, and the ObjectRef ids inside each."""
        if len(return_ids) == 1:
            values = [result]
        else:
            try:
                values = list(result)
            except TypeError:
                values = [result]
            if len(values) != len(return_ids):
                raise ValueError(f"task {name} declared num_returns={len(return_ids)} "
                                 f"but returned {len(values)} values")
        payloads, contained = [], []
        for value, object_id in zip(values, return_ids, strict=True):
            payload, inside = serialization.to_payload(
                value, self.inline_limit, self.segment_name(object_id),
                f"the return value of {name}")
            payloads.append(payload)
            contained.append(inside)
        if not any(contained):
            contained = []
        return payloads, contained

    # ---- the API, from inside a task ----
    def request(self, build: Any, blocking: bool = False) -> Any:
        """Send the request `build(request_id)` and pump messages until its reply arrives.

        A blocking request (get/wait) first hands unstarted queued tasks back to the node,
        so they run elsewhere while this worker lends its CPU; tasks the node sends marked
        `nested` (ones this worker is waiting for) run right here, on this stack.
        """
        with self.lock:  # threads inside a task take turns on the one link (re-entrant
            return self._request(build, blocking)  # for nested tasks on this stack)

    def _request(self, build: Any, blocking: bool) -> Any:
        request_id = next(self.requests)
        self.send(build(request_id, self._give_back()) if blocking else build(request_id))
        deferred: list[Any] = []
        while request_id not in self.replies:
            message = self.receive()
            if type(message) is p.Execute and not message.nested:
                if blocking and message.kind == TASK:
                    self._keep_code(message)
                    self.send(p.GiveBack([message.task_id]))  # was on its way as we blocked
                else:
                    deferred.append(message)
            else:
                self.handle(message)
        self.inbox.extendleft(reversed(deferred))
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

    def segment_name(self, object_id: bytes) -> str:
        return segment_name(self.owner_pid, object_id)


def _resolve_arguments(arguments: tuple, deps: dict[bytes, Any]) -> tuple[tuple, dict]:
    """Replace top-level ObjectRef arguments by their values (refs in containers stay)."""
    args, kwargs = arguments
    if not deps:
        return args, kwargs
    values = {object_id: serialization.from_payload(payload)
              for object_id, payload in deps.items()}
    args = tuple(values[a.id] if isinstance(a, ObjectRef) and a.id in values else a
                 for a in args)
    kwargs = {k: values[v.id] if isinstance(v, ObjectRef) and v.id in values else v
              for k, v in kwargs.items()}
    return args, kwargs


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
    fd, parent_pid = int(argv[0]), int(argv[1])
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the driver
    sock = socket.socket(fileno=fd)
    runtime = WorkerRuntime(sock)
    context.set_worker_runtime(runtime)
    try:
        runtime.serve()
    except (EOFError, ConnectionError):
        pass
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
