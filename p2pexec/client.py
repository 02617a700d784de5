"""The sync facade for user code: the runtime `api` calls in a driver process.

Two kinds, one interface:
- `DriverRuntime` embeds a node on a background trio thread. User threads hand work to
  the node loop through `ExecService.post` (a deque plus at most one wake-up per burst)
  and wait on threading events the loop sets when results arrive.
- `AttachedRuntime` talks to a node already running on this machine (`p2pexec join`)
  through its control socket, over the same link worker processes use.
Values are deserialised in the user's thread, never in the node loop.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from p2pexec.config import CONTROL_SOCKET, NodeConfig
from p2pexec.control import short_socket_path
from p2pexec.errors import (
    LocalUsageError,
    NodeDiedError,
    NodeNotRunning,
    ObjectLostError,
    P2PExecError,
    RemoteProtocolError,
)
from p2pexec.exec import refs, shm
from p2pexec.exec.link import LinkEnd, split_changes
from p2pexec.exec.output import Output, job_id, print_output
from p2pexec.exec.protocol import (
    DRIVER_ROLE,
    OUTPUT_ROLE,
    Call,
    Configure,
    Get,
    Hello,
    Put,
    Refs,
    Register,
    Reply,
    Submit,
    Values,
)
from p2pexec.exec.refs import IdGenerator, RefCounter, owners_of
from p2pexec.exec.runtime_env import RuntimeEnv
from p2pexec.exec.scheduler import DRIVER
from p2pexec.exec.serialization import system_error, system_error_payload
from p2pexec.exec.service import Wakeup
from p2pexec.exec.shm import segment_name
from p2pexec.exec.task import TaskSpec
from p2pexec.node import Node

log = logging.getLogger("p2pexec")


class DriverRuntime:
    """What the public API calls when it runs in the user's own process."""

    STEP_PATIENCE = 0.0005
    """Seconds a thread the node loop has just woken (a sync get) waits, at its next
    submit, for the loop to go back to sleep so that it can step the scheduler itself
    (`ExecService.post_all`): the loop is then a few microseconds from its I/O wait.
    Other submits never wait (a burst of them would pay it each time)."""

    def __init__(self, config: NodeConfig, log_to_driver: bool = True) -> None:
        self.node = Node(config)
        self.node_id = self.node.node_id.raw
        self.job = job_id(self.node_id, DRIVER)
        self.service = self.node.exec
        if log_to_driver:  # printed by the node's thread, before the results it precedes
            self.service.driver_output = print_output
        self.inline_limit = config.exec.inline_limit
        self.segments = self.service.segments
        self.ids = IdGenerator()
        self._registered: set[bytes] = set()
        self.runtime_env: RuntimeEnv | None = None
        """The job's environment (`px.init(runtime_env=...)`): every task's and actor's
        unless its own option says otherwise."""
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._running = False
        self._pid = os.getpid()
        self._woken = threading.local()
        """`by_loop`: this thread's last wait ended with the loop waking it."""
        self._thread = threading.Thread(target=self._run, name="p2pexec-node", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise LocalUsageError(f"the embedded node failed to start: {self._failure!r}")
        self._refs = _RefBatcher(self._post_refs)
        self.counter = RefCounter(self._refs.changed)
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
            await self.node.drain()
            nursery.cancel_scope.cancel()

    def shutdown(self) -> None:
        """Stop the node and its workers; idempotent."""
        if refs.counter is self.counter:
            refs.install_counter(None)
        self._refs.stop()
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
    def _post_refs(self, changes: dict[bytes, int]) -> None:
        if self._running:
            for op in _around(changes, []):
                self.service.post(op)

    def _post(self, op: tuple) -> None:
        """Hand `op` to the loop with the reference changes since the last one (refs
        taken before it, refs dropped after it)."""
        ops = _around(self._refs.take(), [op])
        woken, self._woken.by_loop = getattr(self._woken, "by_loop", False), False
        self.service.post_all(ops, self.STEP_PATIENCE if woken else 0.0)

    def segment_name(self, object_id: bytes) -> str:
        return segment_name(self._pid, object_id)

    def register(self, code_hash: bytes, pickled: bytes) -> None:
        if code_hash not in self._registered:
            self._registered.add(code_hash)
            self._post(("register", code_hash, pickled))

    def submit(self, spec: TaskSpec) -> None:
        self._check()
        self._post(("submit", spec))

    def put(self, object_id: bytes, payload: list, contained: list[bytes]) -> None:
        self._check()
        self._post(("put", object_id, payload, contained))

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
        timed_out = self._wait_for_all(pending, timeout, found)
        return found, timed_out

    def wait(self, object_ids: list[bytes], num_returns: int, timeout: float | None
             ) -> list[bytes]:
        found: dict[bytes, list] = {}
        self._wait_until(list(object_ids), num_returns, timeout, found)
        return [object_id for object_id in object_ids if object_id in found]

    def _deadline(self, pending: list[bytes], timeout: float | None) -> float | None:
        """Before a wait: when it ends; and refs received from elsewhere must reach the
        node now (it fetches another node's objects when told a process holds a ref)."""
        entries = self.service.core.objects.entries
        if any(object_id not in entries for object_id in pending):
            self._post_refs(self._refs.take())
        return None if timeout is None else time.monotonic() + timeout

    def _wait_for_all(self, pending: list[bytes], timeout: float | None,
                      found: dict[bytes, list]) -> bool:
        """Block until each of `pending` has a value (added to `found`), waiting on one
        at a time in order: the loop wakes this thread only for the value that holds the
        rest up, and the values before it are never looked at again (waiting on all of
        them at once woke it per value and rescanned the rest each time). True: timed
        out."""
        entries = self.service.core.objects.entries
        deadline = self._deadline(pending, timeout)
        event, watched = Wakeup(), None
        last = len(pending) - 1  # only the last waits by reading a reply here: while
        # earlier ones wait, other workers' replies wake the loop, which must not wait
        # for this thread (a get of 10,000 refs ran ~10% slower reading each)
        try:
            for index, object_id in enumerate(pending):
                while object_id not in found:
                    entry = entries.get(object_id)
                    if entry is not None and entry.payload is not None:
                        found[object_id] = entry.payload
                    elif watched != object_id:  # registered first, then looked at again
                        if index == last and self.service.read_reply_here(
                                object_id, self._slice(deadline)):
                            continue  # read from its worker in this thread
                        if watched is not None:
                            self.service.unregister_waiter([watched], event)
                        self.service.register_waiter([object_id], event)
                        watched = object_id
                    elif self._sleep(event, deadline, pending[index:], found) is None:
                        return True
            return False
        finally:
            if watched is not None:
                self.service.unregister_waiter([watched], event)

    @staticmethod
    def _slice(deadline: float | None) -> float:
        """How long one wait lasts: up to a second, then the node's health is checked."""
        return 1.0 if deadline is None else max(0.0, min(deadline - time.monotonic(), 1.0))

    def _sleep(self, event: Wakeup, deadline: float | None, pending: list[bytes],
               found: dict[bytes, list]) -> int | None:
        """Wait for `event` up to a second; None when `deadline` has passed, else how
        many of `pending` turned out lost (after a quiet second: the node must be alive,
        and knows every id it was ever told of)."""
        if deadline is not None and deadline <= time.monotonic():
            return None
        if event.wait(self._slice(deadline)):
            self._woken.by_loop = True
            return 0
        self._check()
        return self._mark_lost(pending, found)

    def _wait_until(self, pending: list[bytes], wanted: int, timeout: float | None,
                    found: dict[bytes, list]) -> bool:
        """Block until `wanted` of `pending` have values (added to `found`). True: timed out."""
        entries = self.service.core.objects.entries
        deadline = self._deadline(pending, timeout)
        event = Wakeup()
        self.service.register_waiter(pending, event)
        try:
            got = 0
            while True:
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
                lost = self._sleep(event, deadline, pending, found)
                if lost is None:
                    return True
                got += lost
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

    def cancel(self, argument: list) -> None:
        """px.cancel without a round trip to the loop: checked here, then posted like a
        submit (10,000 cancels take well under a second)."""
        self._check()
        self._post(("cancel", self.service.cancel_event(argument)))

    def call(self, operation: str, argument: Any) -> Any:
        """A node operation: a plain one is answered inside `in_loop`, so the lock is
        free at once; an async one (DHT) releases it when its answer comes."""
        done = threading.Lock()
        done.acquire()
        outcome: list[tuple[Any, P2PExecError | None]] = []

        def answer(value: Any, error: P2PExecError | None) -> None:
            outcome.append((value, error))
            done.release()

        self.in_loop(self.service.call, operation, argument, answer)
        done.acquire()
        value, error = outcome[0]
        if error is not None:
            raise error
        return value


def _around(changes: dict[bytes, int], ops: list[tuple]) -> list[tuple]:
    """`ops` with the reference changes around them: refs taken first (with the owners
    of those received from elsewhere), refs dropped last."""
    taken, dropped = split_changes(changes)
    return ([("refs", taken, owners_of(taken))] if taken else []) + ops + (
        [("refs", dropped, {})] if dropped else [])


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


class AttachedRuntime:
    """What the public API calls in a driver attached to a running node.

    One socket to the node's control socket: requests go out from the user's threads
    (serialised by a lock). Replies are read by a thread that waits for one (leader and
    followers: whoever waits first reads and hands others their replies), so a sync round
    trip costs no wake-up of a separate reader thread; that thread reads only while
    `on_ready` callbacks wait. Reference drops are batched: they ride on the next message,
    or a flusher thread sends them within `REF_FLUSH_DELAY` when the driver goes quiet."""

    REF_FLUSH_DELAY = 0.005
    """Seconds dropped refs may wait for a message to ride on before they go alone."""

    def __init__(self, socket_path: Path, log_to_driver: bool = True) -> None:
        self.address = Path(socket_path)
        self.segments = None  # argument segments are recycled only inside the node
        self.ids = IdGenerator()
        self._registered: set[bytes] = set()
        self.runtime_env: RuntimeEnv | None = None
        """The job's environment (`px.init(runtime_env=...)`)."""
        self._send_lock = threading.Lock()
        self._requests = itertools.count(1)
        self._pending: dict[int, _PendingReply] = {}
        self._replies = threading.Condition()
        """Guards `_pending` and `_reading`; notified whenever replies were handed out."""
        self._reading = False
        """A thread is reading the socket (the leader)."""
        self._callbacks = 0
        """`on_ready` callbacks not yet called: while any, the callback thread reads."""
        self._callbacks_waiting = threading.Event()
        self._failure: str | None = None
        sock = _connect(self.address)
        self.link = LinkEnd(sock)
        try:
            sock.settimeout(ATTACH_TIMEOUT)
            sock.sendall(self.link.frame(Hello(DRIVER_ROLE, os.getpid(),
                                               sys_path=_import_paths())))
            configure = self.link.receive()[0]
            sock.settimeout(None)
        except (OSError, EOFError, P2PExecError) as exc:
            sock.close()
            raise RemoteProtocolError(f"the node at {self.address} did not accept this "
                                      f"driver ({exc or type(exc).__name__})") from None
        if type(configure) is not Configure:
            sock.close()
            raise RemoteProtocolError(f"the node at {self.address} answered the attach "
                                      f"with {type(configure).__name__}")
        self.node_id = configure.node_id
        self.job = configure.job
        self.inline_limit = configure.inline_limit
        self._owner_pid = configure.owner_pid
        self._output = _OutputReader(self.address, self.job) if log_to_driver else None
        shm.set_spill_dir(configure.spill_dir or None)
        self._refs = _RefBatcher(self._send_refs_alone, self.REF_FLUSH_DELAY)
        self.counter = RefCounter(self._refs.changed)
        refs.install_counter(self.counter)
        threading.Thread(target=self._read_for_callbacks, name="p2pexec-link",
                         daemon=True).start()
        atexit.register(self.shutdown)

    # ---- the link ----
    def _send(self, message: Any) -> None:
        self._check()
        data = self.link.frame(message, self._refs.take())
        try:
            with self._send_lock:
                self.link.sock.sendall(data)
        except OSError as exc:
            self._lost(f"sending failed: {exc}")
            self._check()

    def _send_refs_alone(self, changes: dict[bytes, int]) -> None:
        if self._failure is not None:
            return
        taken, dropped = split_changes(changes)
        frames = b"".join(self.link.codec.frame(Refs(part, owners_of(part)))
                          for part in (taken, dropped) if part)
        try:
            with self._send_lock:
                self.link.sock.sendall(frames)
        except OSError as exc:
            self._lost(f"sending failed: {exc}")

    def _read_until(self, done: Callable[[], bool]) -> None:
        """Return once `done()` (checked under `_replies`), reading the socket meanwhile
        whenever no other thread does."""
        replies = self._replies
        with replies:
            while not done():
                if not self._reading:
                    break
                replies.wait()
            else:
                return
            self._reading = True
        try:
            while True:
                messages = self._receive()
                with replies:
                    called = self._hand_out(messages)
                    replies.notify_all()
                    finished = done()
                for callback, reply in called:
                    callback(reply)
                if finished:
                    return
        finally:
            with replies:
                self._reading = False
                replies.notify_all()

    def _receive(self) -> list[Any]:
        """The next replies from the node ([] once it is lost: `_lost` handed out None)."""
        try:
            messages = self.link.receive()
        except (OSError, EOFError) as exc:
            self._lost(f"the connection closed ({exc or type(exc).__name__})")
            return []
        except P2PExecError as exc:
            self._lost(f"it sent something this driver cannot read ({exc})")
            return []
        for message in messages:
            if type(message) not in (Values, Reply):
                self._lost(f"it sent a driver {type(message).__name__}")
                return []
        return messages

    def _hand_out(self, messages: list[Any]) -> list[tuple[Callable[[Any], None], Any]]:
        """Deliver replies (under `_replies`); returns the callbacks to call outside it."""
        called = []
        for message in messages:
            slot = self._pending.pop(message.request_id, None)
            if slot is not None:
                slot.reply, slot.delivered = message, True
                if slot.callback is not None:
                    self._callbacks -= 1
                    called.append((slot.callback, message))
        return called

    def _read_for_callbacks(self) -> None:
        """Read while `on_ready` callbacks wait and no user thread is reading anyway."""
        while self._failure is None:
            self._callbacks_waiting.wait()
            self._callbacks_waiting.clear()
            self._read_until(lambda: self._callbacks <= 0 or self._failure is not None)

    def _lost(self, why: str) -> None:
        """The node is gone: every waiting call fails now, and every later one at once."""
        if self._failure is None:
            self._failure = why
        with self._replies:
            slots, self._pending = list(self._pending.values()), {}
            for slot in slots:
                slot.delivered = True
            self._callbacks = 0
            self._replies.notify_all()
        for slot in slots:
            if slot.callback is not None:
                slot.callback(None)
        self._refs.stop()
        self._callbacks_waiting.set()

    def _check(self) -> None:
        if self._failure is not None:
            raise NodeDiedError(f"lost the p2pexec node at {self.address}: {self._failure}; "
                                f"refs from it are lost (call px.shutdown() and px.init() "
                                f"to attach again)")

    def _request(self, build: Callable[[int], Any],
                 callback: Callable[[Any], None] | None = None) -> Any:
        """Send `build(request_id)` and wait for its reply (or, with `callback`, return at
        once and have `callback(reply)` called when it arrives; None if the node is lost)."""
        request_id = next(self._requests)
        slot = _PendingReply(callback)
        with self._replies:
            self._pending[request_id] = slot
            if callback is not None:
                self._callbacks += 1
        self._send(build(request_id))
        if callback is not None:
            self._callbacks_waiting.set()
            return None
        self._read_until(lambda: slot.delivered)
        if slot.reply is None:
            self._check()
        return slot.reply

    # ---- the runtime interface used by api.py ----
    @property
    def alive(self) -> bool:
        return self._failure is None

    def segment_name(self, object_id: bytes) -> str:
        return segment_name(self._owner_pid, object_id)

    def register(self, code_hash: bytes, pickled: bytes) -> None:
        if code_hash not in self._registered:
            self._send(Register(code_hash, pickled))
            self._registered.add(code_hash)

    def submit(self, spec: TaskSpec) -> None:
        self._send(Submit(spec))

    def put(self, object_id: bytes, payload: list, contained: list[bytes]) -> None:
        self._send(Put(object_id, payload, contained))

    def get_payloads(self, object_ids: list[bytes], timeout: float | None
                     ) -> tuple[dict[bytes, Any], bool]:
        reply = self._request(lambda rid: Get(rid, object_ids, -1, timeout))
        return reply.payloads, reply.timed_out

    def wait(self, object_ids: list[bytes], num_returns: int, timeout: float | None
             ) -> list[bytes]:
        return self._request(lambda rid: Get(rid, object_ids, num_returns, timeout)).ready

    def on_ready(self, object_id: bytes, callback: Callable[[bytes], None]) -> None:
        """Call `callback(object_id)` (on the link's reader thread) once it has a value
        (or the node is lost)."""
        self._request(lambda rid: Get(rid, [object_id], 1, None),
                      callback=lambda _reply: callback(object_id))

    def call(self, operation: str, argument: Any) -> Any:
        reply = self._request(lambda rid: Call(rid, operation, argument))
        if not reply.ok:
            raise system_error(reply.error_class, reply.error)
        return reply.value

    def cancel(self, argument: list) -> None:
        self.call("cancel", argument)

    def shutdown(self) -> None:
        """Detach: the node drops this driver's refs, queued tasks and actors."""
        if refs.counter is self.counter:
            refs.install_counter(None)
        if self._failure is None:
            self._failure = "this driver detached (px.shutdown)"
        with contextlib.suppress(OSError):
            self.link.sock.shutdown(socket.SHUT_RDWR)
        self._callbacks_waiting.set()
        self._read_until(lambda: not self._reading)  # the callback thread has let go
        self.link.sock.close()
        if self._output is not None:
            self._output.finish()
        atexit.unregister(self.shutdown)


class _OutputReader:
    """An attached driver's output stream: a second connection to the node, on which a
    thread of its own prints what the driver's tasks print (so a reply never waits
    behind output, and a driver that is busy elsewhere still shows it)."""

    FINISH_TIMEOUT = 2.0
    """Seconds a detaching driver waits for the output its node still had for it."""

    def __init__(self, address: Path, job: bytes) -> None:
        sock = _connect(address)
        self.link = LinkEnd(sock)
        try:
            sock.settimeout(ATTACH_TIMEOUT)
            sock.sendall(self.link.frame(Hello(OUTPUT_ROLE, os.getpid(), job=job)))
            opened = self.link.receive()  # an empty Output: the node will send here
            sock.settimeout(None)
        except (OSError, EOFError, P2PExecError) as exc:
            sock.close()
            raise RemoteProtocolError(f"the node at {address} did not open this driver's "
                                      f"output stream ({exc or type(exc).__name__})") from None
        self._print(opened)
        self._thread = threading.Thread(target=self._run, name="p2pexec-output",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                self._print(self.link.receive())
        except (OSError, EOFError, P2PExecError) as exc:
            if not isinstance(exc, EOFError):
                log.warning("stopped showing task output: %s", exc)
        finally:
            self.link.sock.close()

    @staticmethod
    def _print(messages: list[Any]) -> None:
        for message in messages:
            if type(message) is not Output:
                raise RemoteProtocolError(f"the node sent a {type(message).__name__} on "
                                          f"the output stream")
            print_output(message.records)

    def finish(self) -> None:
        """The driver detached: print what the node still sends, until it closes."""
        self._thread.join(self.FINISH_TIMEOUT)


class _RefBatcher:
    """A driver's reference changes, held until they ride on its next message to the
    node, or sent alone once `delay` seconds pass with changes pending and no message
    taking them: a burst of dropped refs costs the node one wake-up, not one per ref.

    Its thread is woken once when changes appear and then stays armed while messages
    keep carrying the changes, checking at doubling intervals up to `8 * delay`: a busy
    driver pays a few thread wake-ups a second, not one per dropped ref, and changes
    left when it goes quiet reach the node within `16 * delay`."""

    def __init__(self, send_alone: Callable[[dict[bytes, int]], None],
                 delay: float = 0.005) -> None:
        self._send_alone = send_alone
        self._delay = delay
        self._changes: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self._wake = Wakeup()
        self._armed = False
        """The thread is awake (sleeping out a delay): changes need not wake it."""
        self._taken = 0
        """How many messages took changes: the thread sends alone only if none did."""
        self._stopped = False
        threading.Thread(target=self._run, name="p2pexec-refs", daemon=True).start()

    def changed(self, deltas: dict[bytes, int]) -> None:
        """`RefCounter`'s report: merge, and make sure they go out soon."""
        with self._lock:
            merged = self._changes
            for object_id, delta in deltas.items():
                total = merged.get(object_id, 0) + delta
                if total:
                    merged[object_id] = total
                else:
                    merged.pop(object_id, None)
            if self._armed:
                return
            self._armed = True
        self._wake.set()

    def take(self) -> dict[bytes, int]:
        """The changes not sent yet (the caller sends them with its message)."""
        with self._lock:
            changes, self._changes = self._changes, {}
            self._taken += 1
        return changes

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            if not self._wake.wait(3600.0):
                continue
            pause = self._delay
            while not self._stopped:
                with self._lock:
                    taken = self._taken
                time.sleep(pause)
                with self._lock:
                    if self._stopped:
                        break
                    if self._taken != taken:  # messages are flowing and carry the changes
                        pause = min(2 * pause, 8 * self._delay)
                        continue
                    changes, self._changes = self._changes, {}
                    self._armed = False
                if not changes:
                    break
                self._send_alone(changes)
                break


class _PendingReply:
    """One request waiting for its reply (a thread in `_read_until`, or a callback)."""

    __slots__ = ("callback", "delivered", "reply")

    def __init__(self, callback: Callable[[Any], None] | None) -> None:
        self.callback = callback
        self.delivered = False
        self.reply: Any = None
        """The reply; None when the node was lost."""


ATTACH_TIMEOUT = 10.0
"""Seconds the node has to answer a driver's Hello."""


def _connect(path: Path) -> socket.socket:
    """A connected unix socket to the control socket at `path`; `NodeNotRunning` if
    nothing answers there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with short_socket_path(path) as short:
            sock.connect(short)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
        sock.close()
        raise NodeNotRunning(f"no p2pexec node answers at {path} ({exc.strerror or exc}); "
                             f"start one with `p2pexec join`, or call px.init() without "
                             f"an address to run one inside this program") from None
    return sock


def _import_paths() -> list[str]:
    """This driver's sys.path as absolute paths ('' is the current directory)."""
    return [os.path.abspath(path or os.curdir) for path in sys.path]


def socket_path_of(address: str | os.PathLike[str]) -> Path:
    """`px.init(address=...)`: a data dir or the path of its control socket."""
    path = Path(address).expanduser()
    return path if path.name == CONTROL_SOCKET or path.is_socket() else path / CONTROL_SOCKET
