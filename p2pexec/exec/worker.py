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
from p2pexec.exec import protocol as p
from p2pexec.exec import refs, serialization
from p2pexec.exec.refs import IdGenerator, ObjectRef, RefCounter
from p2pexec.exec.shm import segment_name
from p2pexec.exec.task import TaskSpec

RECEIVE_SIZE = 1 << 18


class WorkerRuntime:
    """The node as seen from inside a worker: the API's calls become frames on the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = p.FrameReader()
        self.inbox: deque[list] = deque()
        self.replies: dict[int, list] = {}
        self.callables: dict[bytes, Any] = {}
        self.unloaded: dict[bytes, bytes] = {}
        self.registered: set[bytes] = set()
        self.requests = itertools.count(1)
        self.ids = IdGenerator()
        self.owner_pid = os.getppid()
        self.inline_limit = 100 * 1024
        self.segments = None  # argument segments are recycled for the node's own process
        self.actor: Any = None
        self.lock = threading.RLock()
        self.counter = RefCounter(None)  # changes ride on the next message sent
        refs.install_counter(self.counter)

    # ---- I/O ----
    def send(self, message: list) -> None:
        with self.lock:
            self._send(message)

    def _send(self, message: list) -> None:
        """Send one message with the reference changes made since the last one: refs this
        process took go first (they must count before the message can unpin their
        objects), refs it dropped go after (the message may pin them first, e.g. a result
        that contains them)."""
        frame = p.encode_frame(message)
        pending = self.counter.take_pending()
        if pending:
            taken = {oid: delta for oid, delta in pending.items() if delta > 0}
            dropped = {oid: delta for oid, delta in pending.items() if delta < 0}
            if taken:
                frame = p.encode_frame([p.REFS, taken]) + frame
            if dropped:
                frame += p.encode_frame([p.REFS, dropped])
        self.sock.sendall(frame)

    def receive(self) -> list:
        """The next message from the node, blocking."""
        while not self.inbox:
            data = self.sock.recv(RECEIVE_SIZE)
            if not data:
                raise EOFError("node closed the worker link")
            self.inbox.extend(self.reader.feed(data))
        return self.inbox.popleft()

    # ---- serving ----
    def serve(self) -> None:
        self.send([p.READY, os.getpid()])
        while True:
            self.handle(self.receive())

    def handle(self, message: list) -> None:
        kind = message[0]
        if kind in (p.EXEC, p.ACTOR_CALL, p.CREATE_ACTOR):
            self.execute(message)
        elif kind == p.CONFIGURE:
            _, sys_path, owner_pid, inline_limit, cwd = message
            for entry in reversed(sys_path):
                if entry not in sys.path:
                    sys.path.insert(0, entry)
            if cwd and os.path.isdir(cwd):
                os.chdir(cwd)
            self.owner_pid, self.inline_limit = owner_pid, inline_limit
        elif kind in (p.VALUES, p.REPLY):
            self.replies[message[1]] = message
        else:
            raise RemoteProtocolError(f"worker got unknown message kind {kind!r}")

    def execute(self, message: list) -> None:
        kind, task_id, code, code_bytes, args_payload, deps, return_ids, name, _nested = message
        started = time.perf_counter()
        mappings: list = []
        payloads, contained = self._run(kind, code, code_bytes, args_payload, deps,
                                        return_ids, name, mappings)
        # the arguments are garbage now unless the task kept them: if their segment is
        # unmapped, the node may hand it back for reuse instead of freeing it
        released = bool(mappings) and all(
            [serialization.close_mapping(mapping) for mapping in mappings])
        self.send([p.DONE, task_id, payloads, contained, time.perf_counter() - started,
                   released])

    def _run(self, kind: int, code: Any, code_bytes: bytes | None, args_payload: list,
             deps: dict, return_ids: list[bytes], name: str, mappings: list
             ) -> tuple[list[list], list[list[bytes]]]:
        try:
            arguments = serialization.from_payload(args_payload, mappings)
            args, kwargs = _resolve_arguments(arguments, deps)
            if kind == p.ACTOR_CALL:
                result = getattr(self.actor, code)(*args, **kwargs)
            else:
                target = self._load(code, code_bytes)
                if kind == p.CREATE_ACTOR:
                    self.actor = target(*args, **kwargs)
                    result = None
                else:
                    result = target(*args, **kwargs)
            return self._store_results(result, return_ids, name)
        except Exception as exc:
            return [serialization.task_error_payload(exc, name)] * len(return_ids), []

    def _keep_code(self, message: list) -> None:
        """The node ships a function once per worker: keep it even if the task goes back."""
        if message[3] is not None:
            self.unloaded[message[2]] = message[3]

    def _load(self, code_hash: bytes, code_bytes: bytes | None) -> Any:
        target = self.callables.get(code_hash)
        if target is None:
            code_bytes = code_bytes or self.unloaded.pop(code_hash, None)
            if code_bytes is None:
                raise RemoteProtocolError("node sent a task for a function it never shipped")
            target = self.callables[code_hash] = pickle.loads(code_bytes)
        return target

    def _store_results(self, result: Any, return_ids: list[bytes], name: str
                       ) -> tuple[list[list], list[list[bytes]]]:
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
    def request(self, kind: int, *fields: Any, blocking: bool = False) -> list:
        """Send a request and pump messages until its reply arrives.

        A blocking request (get/wait) first hands unstarted queued tasks back to the node,
        so they run elsewhere while this worker lends its CPU; tasks the node sends marked
        `nested` (ones this worker is waiting for) run right here, on this stack.
        """
        with self.lock:  # threads inside a task take turns on the one link (re-entrant
            return self._request(kind, fields, blocking)  # for nested tasks on this stack)

    def _request(self, kind: int, fields: tuple, blocking: bool) -> list:
        request_id = next(self.requests)
        if blocking:
            fields = (*fields, self._give_back())
        self.send([kind, request_id, *fields])
        deferred: list[list] = []
        while request_id not in self.replies:
            message = self.receive()
            if message[0] == p.EXEC and blocking and not message[-1]:
                self._keep_code(message)
                self.send([p.GIVE_BACK, [message[1]]])  # was on its way as we blocked
            elif message[0] in _WORK and not message[-1]:
                deferred.append(message)
            else:
                self.handle(message)
        self.inbox.extendleft(reversed(deferred))
        return self.replies.pop(request_id)

    def _give_back(self) -> list[bytes]:
        kept: deque[list] = deque()
        given: list[bytes] = []
        for message in self.inbox:
            if message[0] == p.EXEC:
                self._keep_code(message)
                given.append(message[1])
            else:
                kept.append(message)
        self.inbox = kept
        return given

    def register(self, code_hash: bytes, pickled: bytes) -> None:
        if code_hash not in self.registered:
            self.send([p.REGISTER, code_hash, pickled])
            self.registered.add(code_hash)

    def submit(self, spec: TaskSpec) -> None:
        self.send([p.SUBMIT, *spec.to_wire()])

    def get_payloads(self, object_ids: list[bytes], timeout: float | None
                     ) -> tuple[dict[bytes, list], bool]:
        reply = self.request(p.GET, object_ids, -1, timeout, blocking=True)
        return reply[2], reply[3]

    def wait(self, object_ids: list[bytes], num_returns: int, timeout: float | None
             ) -> list[bytes]:
        return self.request(p.GET, object_ids, num_returns, timeout, blocking=True)[2]

    def put(self, object_id: bytes, payload: list, contained: list[bytes]) -> None:
        self.send([p.PUT, object_id, payload, contained])

    def call(self, operation: str, argument: Any) -> Any:
        reply = self.request(p.CALL, operation, argument)
        _, _, ok, value = reply
        if not ok:
            raise serialization.system_error(value[0], value[1])
        return value

    def segment_name(self, object_id: bytes) -> str:
        return segment_name(self.owner_pid, object_id)


_WORK = (p.EXEC, p.ACTOR_CALL, p.CREATE_ACTOR)


def _resolve_arguments(arguments: tuple, deps: dict[bytes, list]) -> tuple[tuple, dict]:
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
    from p2pexec import api

    api.set_worker_runtime(runtime)
    try:
        runtime.serve()
    except (EOFError, ConnectionError):
        pass
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
