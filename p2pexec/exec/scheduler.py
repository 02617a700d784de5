"""The node's task state machine: tasks, workers, actors, resources. Sans-IO.

Every stimulus (a submit, a worker's reply, a worker's death, the clock) is a frozen
event from `exec.events`; `handle(*events)` applies a batch and returns what the node must
do as a list of instructions (dask's worker state machine shape). Tests feed it events and
compare instruction lists; the trio driver in `exec.service` does the I/O.

Rules it keeps:
- A task runs once its top-level ObjectRef arguments are ready and its resources fit.
- A busy worker queues more tasks that fit in what it already holds: about
  `prefetch_seconds` of work, judged by how long the function took before.
- A worker blocked in get/wait hands back its queued tasks and lends its CPU; tasks it
  waits for are sent to it to run on its own stack (`nested`), which keeps recursive
  task trees depth-first; more workers start while CPUs are lent and work is waiting.
- A worker that dies has its tasks retried up to `max_retries`, then they fail with
  WorkerCrashedError; an actor's worker death fails its calls with ActorDiedError.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pexec import errors
from p2pexec.exec import protocol as p
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
from p2pexec.exec.objects import ObjectTable
from p2pexec.exec.refs import task_of
from p2pexec.exec.serialization import payload_segment, system_error_payload
from p2pexec.exec.task import ACTOR_CALL, ACTOR_CREATE, TASK, TaskSpec

DRIVER = 0
"""Holder id of the driver embedded in the node's own process."""
CPU = "CPU"


# ---- instructions ----
@dataclass(frozen=True, slots=True)
class Send:
    worker: int
    message: list


@dataclass(frozen=True, slots=True)
class StartWorker:
    worker: int
    actor_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class StopWorker:
    worker: int


@dataclass(frozen=True, slots=True)
class Completed:
    """These objects now have a value (or an error); wake whoever waits in the driver."""

    object_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Unlink:
    segment: str


@dataclass(frozen=True, slots=True)
class Recycle:
    """A finished task's argument segment that no process maps any more: reuse it."""

    segment: str


@dataclass(frozen=True, slots=True)
class Warn:
    text: str


Instruction = Send | StartWorker | StopWorker | Completed | Unlink | Recycle | Warn

# ---- state ----
WAITING, READY, QUEUED, RUNNING = "waiting", "ready", "queued", "running"


@dataclass(slots=True)
class TaskState:
    spec: TaskSpec
    missing: int = 0
    state: str = WAITING
    attempts: int = 0
    worker: int | None = None
    held: dict[str, float] = field(default_factory=dict)
    request: GetRequest | None = None
    args_unmapped: bool = False
    """The worker that ran it last reported its argument segment unmapped."""


@dataclass(slots=True)
class GetRequest:
    worker: int
    request_id: int
    object_ids: list[bytes]
    num_returns: int
    """-1: every value is wanted (get); k >= 0: ids of the first k ready (wait)."""
    deadline: float | None
    task_id: bytes


@dataclass(slots=True)
class WorkerState:
    worker_id: int
    actor_id: bytes | None = None
    ready: bool = False
    stack: list[bytes] = field(default_factory=list)
    """Tasks started on this worker, outermost first; nested ones run on top."""
    queued: deque[bytes] = field(default_factory=deque)
    """Tasks sent ahead, not started yet."""
    known_code: set[bytes] = field(default_factory=set)

    @property
    def idle(self) -> bool:
        return self.ready and not self.stack and not self.queued


@dataclass(slots=True)
class ActorState:
    actor_id: bytes
    creation: TaskSpec
    worker: int
    name: str | None
    restarts_left: int
    alive: bool = False
    dead_reason: str | None = None
    calls: deque[bytes] = field(default_factory=deque)
    """Calls not yet sent, in submission order."""
    in_flight: list[bytes] = field(default_factory=list)
    holds: TaskState | None = None
    """The creation task, whose resources the actor keeps for its whole life."""


class Scheduler:
    """Decides what runs where on this node. No I/O, no clock: `now` is passed in."""

    def __init__(self, config: ExecConfig, resources: dict[str, float] | None = None) -> None:
        self.config = config
        self.total: dict[str, float] = {CPU: config.cpus(), **(resources or {})}
        self.available = dict(self.total)
        self.objects = ObjectTable(self._unlink)
        self.code: dict[bytes, bytes] = {}
        self.tasks: dict[bytes, TaskState] = {}
        self.ready: deque[bytes] = deque()
        self.workers: dict[int, WorkerState] = {}
        self.actors: dict[bytes, ActorState] = {}
        self.named: dict[str, bytes] = {}
        self.requests: dict[tuple[int, int], GetRequest] = {}
        self._out: list[Instruction] = []
        self._next_worker = 1
        self._pool_target = max(1, int(self.total[CPU]))
        self._warned_infeasible: set[bytes] = set()
        self._waiting_actors: list[bytes] = []
        self._dirty = False
        self._durations: dict[bytes | None, float] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            Started: self._on_started,
            ShutDown: self._on_shut_down,
            CodeRegistered: self._on_code_registered,
            Submitted: self._on_submitted,
            WorkerReady: self._on_worker_ready,
            TaskFinished: self._on_task_finished,
            WorkerDied: self._on_worker_died,
            GetRequested: self._on_get_requested,
            GaveBack: self._on_gave_back,
            Put: self._on_put,
            RefsChanged: self._on_refs_changed,
            Tick: self._on_tick,
            ActorKilled: self._on_actor_killed,
        }

    # ---- the one entry point ----
    def handle(self, *events: Event) -> list[Instruction]:
        """Apply a batch of stimuli and return what the node must do now. Scheduling runs
        once per batch, not once per event, so a burst of 10,000 submissions costs one pass
        over the workers, not 10,000."""
        handlers = self._handlers
        for event in events:
            handlers[type(event)](event)
        if self._dirty:
            self._dirty = False
            self._schedule()
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        deadlines = [r.deadline for r in self.requests.values() if r.deadline is not None]
        return min(deadlines) if deadlines else None

    def _unlink(self, segment: str) -> None:
        self._out.append(Unlink(segment))

    # ---- workers ----
    def _on_started(self, _event: Started) -> None:
        """Start the initial pool: one worker per CPU."""
        for _ in range(self._pool_target):
            self._start_worker(None)

    def _start_worker(self, actor_id: bytes | None) -> int:
        worker_id = self._next_worker
        self._next_worker += 1
        self.workers[worker_id] = WorkerState(worker_id, actor_id)
        self._out.append(StartWorker(worker_id, actor_id))
        return worker_id

    def _on_worker_ready(self, event: WorkerReady) -> None:
        worker = self.workers.get(event.worker)
        if worker is None:
            return
        worker.ready = True
        if worker.actor_id is not None:
            actor = self.actors[worker.actor_id]
            self._try_create_actor(actor)
        self._dirty = True

    def _on_worker_died(self, event: WorkerDied) -> None:
        worker_id, reason = event.worker, event.reason
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        self.objects.drop_holder_everywhere(worker_id)
        for key in [k for k in self.requests if k[0] == worker_id]:
            del self.requests[key]
        if worker.actor_id is not None:
            self._actor_worker_died(worker, reason)
        else:
            self._pool_worker_died(worker, reason)
        self._dirty = True

    def _pool_worker_died(self, worker: WorkerState, reason: str) -> None:
        for task_id in reversed(worker.queued):
            task = self.tasks.get(task_id)
            if task is not None:
                task.state, task.worker = READY, None
                self.ready.appendleft(task_id)
        for depth, task_id in enumerate(reversed(worker.stack)):
            task = self.tasks[task_id]
            self._release(task)
            task.request, task.worker = None, None
            if depth:  # an outer frame waiting for a nested task: it runs again, uncharged
                task.state = READY
                self.ready.appendleft(task_id)
                continue
            task.attempts += 1
            retries = task.spec.max_retries
            if retries < 0 or task.attempts <= retries:
                task.state = READY
                self.ready.appendleft(task_id)
                self._out.append(Warn(
                    f"the worker process running task {task.spec.name} died ({reason}); "
                    f"retrying it (retry {task.attempts} of "
                    f"{'unlimited' if retries < 0 else retries})"))
            else:
                self._fail(task, errors.WorkerCrashedError(
                    f"the worker process running task {task.spec.name} died ({reason}) and "
                    f"the task ran out of retries after {task.attempts} attempts"))
        if self._pool_size() < self._pool_target:
            self._start_worker(None)

    def _pool_size(self) -> int:
        return sum(1 for w in self.workers.values() if w.actor_id is None)

    # ---- callables ----
    def _on_code_registered(self, event: CodeRegistered) -> None:
        self.code.setdefault(event.code_hash, event.pickled)

    # ---- submission ----
    def _on_submitted(self, event: Submitted) -> None:
        spec, submitter = event.spec, event.submitter
        for object_id in spec.return_ids:
            self.objects.expect(object_id, submitter)
        self.objects.pin_all(spec.contained)
        task = TaskState(spec)
        self.tasks[spec.task_id] = task
        for dep in spec.deps:
            if self.objects.when_ready(dep, lambda _oid, t=task: self._dep_arrived(t)):
                task.missing += 1
            elif not self.objects.known(dep):
                self._fail(task, errors.ObjectLostError(
                    f"argument {dep.hex()} of task {spec.name} no longer exists"))
                return
        if task.missing == 0 and self._failed_dependency(task):
            return
        if spec.kind == TASK:
            if task.missing == 0:
                task.state = READY
                self.ready.append(spec.task_id)
                self._dirty = True
        elif spec.kind == ACTOR_CREATE:
            self._create_actor(task)
        else:
            self._queue_actor_call(task)

    def _dep_arrived(self, task: TaskState) -> None:
        task.missing -= 1
        if task.missing or task.spec.task_id not in self.tasks:
            return
        if self._failed_dependency(task):
            if task.spec.kind == ACTOR_CALL:
                actor = self.actors.get(task.spec.actor_id)
                if actor is not None:
                    self._pump_actor(actor)
            return
        kind = task.spec.kind
        if kind == TASK:
            task.state = READY
            self.ready.append(task.spec.task_id)
            self._dirty = True
        elif kind == ACTOR_CREATE:
            self._try_create_actor(self.actors[task.spec.actor_id])
        else:
            actor = self.actors.get(task.spec.actor_id)
            if actor is not None:
                self._pump_actor(actor)

    def _failed_dependency(self, task: TaskState) -> bool:
        """An argument's task failed: this one fails with the same error, unrun (as Ray);
        an actor whose constructor argument failed is dead."""
        for dep in task.spec.deps:
            payload = self.objects.payload(dep)
            if payload is not None and payload[0] in (p.ERROR, p.SYSTEM_ERROR):
                self._finish(task, [payload] * len(task.spec.return_ids), None)
                if task.spec.kind == ACTOR_CREATE:
                    reason = "an argument of its constructor failed"
                    actor = self.actors.get(task.spec.actor_id)
                    if actor is None:
                        self._dead_on_arrival(task.spec, reason)
                    else:
                        self._actor_dead(actor, reason, stop=True)
                return True
        return False

    def _dead_on_arrival(self, spec: TaskSpec, reason: str) -> None:
        """An actor that never started: remember why, so its calls fail saying so."""
        self.actors[spec.actor_id] = ActorState(spec.actor_id, spec, 0, None, 0,
                                                dead_reason=reason)
        self._forget_arguments(spec)

    def _on_put(self, event: Put) -> None:
        self._out.append(Completed((event.object_id,)))  # a driver may already wait for it
        self.objects.put(event.object_id, event.payload, event.contained, event.holder)

    def _on_refs_changed(self, event: RefsChanged) -> None:
        holder = event.holder
        for object_id, delta in event.deltas.items():
            if delta > 0:
                self.objects.add_holder(object_id, holder)
            else:
                self.objects.remove_holder(object_id, holder)

    # ---- scheduling ----
    def _fits(self, demand: dict[str, float]) -> bool:
        available = self.available
        return all(available.get(name, 0.0) >= amount for name, amount in demand.items())

    def _feasible(self, demand: dict[str, float]) -> bool:
        total = self.total
        return all(total.get(name, 0.0) >= amount for name, amount in demand.items())

    def _acquire(self, task: TaskState, demand: dict[str, float]) -> None:
        available = self.available
        for name, amount in demand.items():
            available[name] = available.get(name, 0.0) - amount
        task.held = dict(demand)

    def _release(self, task: TaskState | None) -> None:
        if task is None:
            return
        available = self.available
        for name, amount in task.held.items():
            if name in available:
                available[name] += amount
        task.held = {}

    def _schedule(self) -> None:
        if self._waiting_actors:
            waiting, self._waiting_actors = self._waiting_actors, []
            for actor_id in waiting:
                actor = self.actors.get(actor_id)
                if actor is not None and actor.dead_reason is None:
                    self._try_create_actor(actor)
        ready = self.ready
        while ready:
            task = self.tasks.get(ready[0])
            if task is None or task.state != READY:
                ready.popleft()
                continue
            demand = task.spec.resources
            if not self._fits(demand):
                if not self._feasible(demand):
                    ready.popleft()
                    self._park_infeasible(task)
                    continue
                break
            worker = self._idle_worker()
            if worker is None:
                self._maybe_start_extra_worker()
                break
            ready.popleft()
            self._acquire(task, demand)
            self._run_on(worker, task, nested=False)
        if ready:
            self._prefetch()

    def _idle_worker(self) -> WorkerState | None:
        for worker in self.workers.values():
            if worker.actor_id is None and worker.idle:
                return worker
        return None

    def _maybe_start_extra_worker(self) -> None:
        pool = [w for w in self.workers.values() if w.actor_id is None]
        if any(not w.ready for w in pool):
            return  # one is starting already
        if len(pool) < self._pool_target + self.config.extra_workers():
            self._start_worker(None)

    def _park_infeasible(self, task: TaskState) -> None:
        """No node we know can ever run it; keep it (a bigger node may join) and say so."""
        task.state = WAITING
        spec = task.spec
        if spec.task_id not in self._warned_infeasible:
            self._warned_infeasible.add(spec.task_id)
            self._out.append(Warn(
                f"task {spec.name} needs {spec.resources} but this node has {self.total}; "
                f"it waits until a node with those resources is available"))

    def _prefetch(self) -> None:
        """Queue work behind busy workers when no worker is idle."""
        ready = self.ready
        for worker in self.workers.values():
            if worker.actor_id is not None or not worker.stack or worker.ready is False:
                continue
            top = self.tasks.get(worker.stack[-1])
            if top is None or top.request is not None or len(worker.stack) > 1:
                continue
            while ready:
                task = self.tasks.get(ready[0])
                if task is None or task.state != READY:
                    ready.popleft()
                    continue
                if (len(worker.queued) >= self._depth(task.spec.callable_hash)
                        or not _covers(top.held, task.spec.resources)):
                    break
                ready.popleft()
                task.state, task.worker = QUEUED, worker.worker_id
                worker.queued.append(task.spec.task_id)
                self._send_work(worker, task, p.EXEC, nested=False)
            if not ready:
                return

    def _depth(self, code_hash: bytes | None) -> int:
        """How many tasks of this function may queue at a busy worker: about
        `prefetch_seconds` of work, judged from how long its earlier runs took."""
        duration = self._durations.get(code_hash)
        if duration is None:
            return 1
        config = self.config
        return max(1, min(config.max_prefetch, int(config.prefetch_seconds / duration)))

    def _run_on(self, worker: WorkerState, task: TaskState, nested: bool) -> None:
        task.state, task.worker = RUNNING, worker.worker_id
        worker.stack.append(task.spec.task_id)
        self._send_work(worker, task, p.EXEC, nested)

    def _send_work(self, worker: WorkerState, task: TaskState, kind: int, nested: bool) -> None:
        spec = task.spec
        code_hash = spec.callable_hash
        code_bytes = None
        if code_hash is not None and code_hash not in worker.known_code:
            code_bytes = self.code[code_hash]
            worker.known_code.add(code_hash)
        deps = {dep: self._payload_or_lost(dep) for dep in spec.deps} if spec.deps else {}
        target = spec.method if kind == p.ACTOR_CALL else code_hash
        self._out.append(Send(worker.worker_id, [
            kind, spec.task_id, target, code_bytes, spec.args, deps, spec.return_ids,
            spec.name, nested]))

    def _payload_or_lost(self, object_id: bytes) -> list:
        payload = self.objects.payload(object_id)
        if payload is None:
            return system_error_payload(errors.ObjectLostError(
                f"object {object_id.hex()} was lost before it could be read"))
        return payload

    # ---- results ----
    def _on_task_finished(self, event: TaskFinished) -> None:
        worker_id, task_id, payloads = event.worker, event.task_id, event.payloads
        contained, duration = event.contained, event.seconds
        task = self.tasks.get(task_id)
        worker = self.workers.get(worker_id)
        if task is None or worker is None or task.worker != worker_id:
            for payload in payloads:  # a late result for a failed or killed task
                segment = payload_segment(payload)
                if segment is not None:
                    self._unlink(segment)
            return
        if worker.stack and worker.stack[-1] == task_id:
            worker.stack.pop()
        spec = task.spec
        task.args_unmapped = event.args_unmapped
        if duration is not None and spec.kind == TASK:
            previous = self._durations.get(spec.callable_hash)
            self._durations[spec.callable_hash] = max(1e-6, duration if previous is None
                                                      else 0.8 * previous + 0.2 * duration)
        if spec.kind == ACTOR_CREATE and spec.actor_id in self.actors:
            self.actors[spec.actor_id].holds = TaskState(spec, held=task.held)
            task.held = {}
        self._release(task)
        task.worker = None
        if spec.kind == ACTOR_CALL or spec.kind == ACTOR_CREATE:
            self._actor_task_done(task, payloads, contained)
        elif (spec.retry_exceptions and payloads and payloads[0][0] == p.ERROR
              and (spec.max_retries < 0 or task.attempts < spec.max_retries)):
            task.attempts += 1
            task.state = READY
            self.ready.append(task_id)
        else:
            self._finish(task, payloads, contained)
        self._after_worker_step(worker)
        self._dirty = True

    def _after_worker_step(self, worker: WorkerState) -> None:
        """A task left `worker`'s stack: start its next queued one or go back to waiting."""
        if worker.stack:
            outer = self.tasks.get(worker.stack[-1])
            if outer is not None and outer.request is None:
                self._reacquire_cpu(outer)
            elif outer is not None:
                self._dispatch_awaited(worker, outer.request)
            return
        if worker.queued:
            next_id = worker.queued.popleft()
            task = self.tasks.get(next_id)
            if task is not None:
                self._acquire(task, task.spec.resources)
                task.state = RUNNING
                worker.stack.append(next_id)

    def _finish(self, task: TaskState, payloads: list[list],
                contained: list[list[bytes]] | None) -> None:
        spec = task.spec
        del self.tasks[spec.task_id]
        self._out.append(Completed(tuple(spec.return_ids)))  # wake drivers first
        for index, (object_id, payload) in enumerate(zip(spec.return_ids, payloads,
                                                          strict=True)):
            inside = contained[index] if contained else []
            self.objects.complete(object_id, payload, inside)
        if spec.kind != ACTOR_CREATE:  # a restart needs them; freed when the actor dies
            self._forget_arguments(spec, recycle=task.args_unmapped)

    def _forget_arguments(self, spec: TaskSpec, recycle: bool = False) -> None:
        """The task is over for good: its argument objects and segment may go."""
        self.objects.unpin_all(spec.contained)
        segment = payload_segment(spec.args)
        if segment is not None:
            self._out.append(Recycle(segment) if recycle else Unlink(segment))

    def _fail(self, task: TaskState, error: errors.P2PExecError) -> None:
        self._release(task)
        self.tasks.pop(task.spec.task_id, None)
        self._finish_failed(task.spec, error)

    def _finish_failed(self, spec: TaskSpec, error: errors.P2PExecError) -> None:
        payload = system_error_payload(error)
        self._out.append(Completed(tuple(spec.return_ids)))
        for object_id in spec.return_ids:
            self.objects.complete(object_id, payload, [])
        if spec.kind != ACTOR_CREATE:
            self._forget_arguments(spec)

    # ---- get / wait from workers ----
    def _on_get_requested(self, event: GetRequested) -> None:
        worker_id, request_id, object_ids = event.worker, event.request_id, event.object_ids
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        self._take_back(worker, event.given_back)
        caller = self._current_task(worker)
        timeout = event.timeout
        request = GetRequest(worker_id, request_id, object_ids, event.num_returns,
                             None if timeout is None else event.now + timeout,
                             caller.spec.task_id if caller is not None else b"")
        if self._satisfied(request):
            self._answer(request, timed_out=False)
            self._dirty = True
            return
        self.requests[(worker_id, request_id)] = request
        for object_id in object_ids:
            self.objects.when_ready(object_id, lambda _oid, r=request: self._awaited(r))
        if caller is not None:
            caller.request = request
            self._lend_cpu(caller)
            self._dispatch_awaited(worker, request)
        self._dirty = True

    def _on_gave_back(self, event: GaveBack) -> None:
        worker = self.workers.get(event.worker)
        if worker is None:
            return
        self._take_back(worker, event.task_ids)
        top = self.tasks.get(worker.stack[-1]) if worker.stack else None
        if top is not None and top.request is not None:
            self._dispatch_awaited(worker, top.request)
        self._dirty = True

    def _current_task(self, worker: WorkerState) -> TaskState | None:
        if worker.stack:
            return self.tasks.get(worker.stack[-1])
        actor = self.actors.get(worker.actor_id) if worker.actor_id is not None else None
        if actor is not None and actor.in_flight:
            return self.tasks.get(actor.in_flight[0])
        return None

    def _take_back(self, worker: WorkerState, given_back: list[bytes]) -> None:
        for task_id in reversed(given_back):
            task = self.tasks.get(task_id)
            if task is None or task.worker != worker.worker_id or task.state != QUEUED:
                continue
            worker.queued.remove(task_id)
            task.state, task.worker = READY, None
            self.ready.appendleft(task_id)

    def _lend_cpu(self, task: TaskState) -> None:
        cpus = task.held.pop(CPU, 0.0)
        self.available[CPU] += cpus
        task.held["_lent"] = cpus

    def _reacquire_cpu(self, task: TaskState) -> None:
        """Back from get: take the CPU again even if that oversubscribes (as Ray does)."""
        cpus = task.held.pop("_lent", None)
        if cpus is not None:
            self.available[CPU] -= cpus
            task.held[CPU] = cpus

    def _dispatch_awaited(self, worker: WorkerState, request: GetRequest) -> None:
        """Run one task the blocked worker waits for on its own stack, if it is ready here."""
        if worker.actor_id is not None:
            return
        top = self.tasks.get(worker.stack[-1]) if worker.stack else None
        if top is None or top.request is not request:
            return
        if request.deadline is not None:
            return  # on this stack the caller could not give up when its timeout expires
        for object_id in request.object_ids:
            task = self.tasks.get(task_of(object_id))
            if task is None or task.state != READY or task.spec.kind != TASK:
                continue
            if task.attempts:
                continue  # it crashed a worker once: never again under a waiting caller
            if not self._fits(task.spec.resources):
                continue
            self._acquire(task, task.spec.resources)
            self._run_on(worker, task, nested=True)
            return

    def _satisfied(self, request: GetRequest) -> bool:
        ready = sum(1 for oid in request.object_ids if not self._pending(oid))
        if request.num_returns < 0:
            return ready == len(request.object_ids)
        return ready >= min(request.num_returns, len(request.object_ids))

    def _pending(self, object_id: bytes) -> bool:
        return self.objects.known(object_id) and not self.objects.is_ready(object_id)

    def _awaited(self, request: GetRequest) -> None:
        key = (request.worker, request.request_id)
        if key in self.requests and self._satisfied(request):
            del self.requests[key]
            self._answer(request, timed_out=False)

    def _answer(self, request: GetRequest, timed_out: bool) -> None:
        if request.num_returns < 0:
            body: dict[bytes, list] | list[bytes] = {
                oid: self._payload_or_lost(oid) for oid in request.object_ids
                if not self._pending(oid)}
        else:
            body = [oid for oid in request.object_ids if not self._pending(oid)]
            body = body[:request.num_returns] if not timed_out else body
        self._out.append(Send(request.worker, [p.VALUES, request.request_id, body, timed_out]))
        caller = self.tasks.get(request.task_id)
        if caller is not None and caller.request is request:
            caller.request = None
            worker = self.workers.get(request.worker)
            if worker is not None and worker.stack and worker.stack[-1] == request.task_id:
                self._reacquire_cpu(caller)

    def _on_tick(self, event: Tick) -> None:
        now = event.now
        expired = [r for r in self.requests.values()
                   if r.deadline is not None and r.deadline <= now]
        for request in expired:
            del self.requests[(request.worker, request.request_id)]
            self._answer(request, timed_out=True)
        if expired:
            self._dirty = True

    # ---- actors ----
    def _create_actor(self, task: TaskState) -> None:
        spec = task.spec
        if spec.actor_name is not None and spec.actor_name in self.named:
            existing = self.actors.get(self.named[spec.actor_name])
            if existing is not None and existing.dead_reason is None:
                reason = f"an actor named {spec.actor_name!r} already exists"
                self._fail(task, errors.LocalUsageError(reason))
                self._dead_on_arrival(spec, reason)
                return
        worker_id = self._start_worker(spec.actor_id)
        actor = ActorState(spec.actor_id, spec, worker_id, spec.actor_name, spec.max_restarts)
        self.actors[spec.actor_id] = actor
        if spec.actor_name is not None:
            self.named[spec.actor_name] = spec.actor_id

    def _try_create_actor(self, actor: ActorState) -> None:
        task = self.tasks.get(actor.creation.task_id)
        worker = self.workers.get(actor.worker)
        if task is None or worker is None or not worker.ready or task.missing:
            return
        if task.state == RUNNING:
            return
        if not self._fits(task.spec.resources):
            self._waiting_actors.append(actor.actor_id)
            return
        self._acquire(task, task.spec.resources)
        task.state, task.worker = RUNNING, worker.worker_id
        worker.stack.append(task.spec.task_id)
        self._send_work(worker, task, p.CREATE_ACTOR, nested=False)

    def _queue_actor_call(self, task: TaskState) -> None:
        actor = self.actors.get(task.spec.actor_id)
        if actor is None or actor.dead_reason is not None:
            reason = actor.dead_reason if actor is not None else "it is unknown to this node"
            self._fail(task, errors.ActorDiedError(
                f"cannot call {task.spec.name}: the actor is dead ({reason})"))
            return
        actor.calls.append(task.spec.task_id)
        self._pump_actor(actor)

    def _pump_actor(self, actor: ActorState) -> None:
        """Send calls in submission order while the head's arguments are ready."""
        worker = self.workers.get(actor.worker)
        if not actor.alive or worker is None:
            return
        while actor.calls:
            task = self.tasks.get(actor.calls[0])
            if task is None:
                actor.calls.popleft()
                continue
            if task.missing:
                return
            actor.calls.popleft()
            task.state, task.worker = QUEUED, worker.worker_id
            actor.in_flight.append(task.spec.task_id)
            self._send_work(worker, task, p.ACTOR_CALL, nested=False)

    def _actor_task_done(self, task: TaskState, payloads: list[list],
                         contained: list[list[bytes]] | None) -> None:
        spec = task.spec
        actor = self.actors.get(spec.actor_id)
        if spec.kind == ACTOR_CREATE:
            self._finish(task, payloads, contained)
            if actor is None:
                return
            if payloads and payloads[0][0] == p.ERROR:
                self._actor_dead(actor, f"its constructor {spec.name} raised", stop=True)
            else:
                actor.alive = True
                self._pump_actor(actor)
            return
        if actor is not None and spec.task_id in actor.in_flight:
            actor.in_flight.remove(spec.task_id)
        self._finish(task, payloads, contained)

    def _actor_worker_died(self, worker: WorkerState, reason: str) -> None:
        actor = self.actors.get(worker.actor_id)
        if actor is None:
            return
        lost = [tid for tid in actor.in_flight]
        actor.in_flight = []
        for task_id in lost:
            task = self.tasks.get(task_id)
            if task is not None:
                self._fail(task, errors.ActorDiedError(
                    f"the actor's process died ({reason}) while running {task.spec.name}"))
        if actor.dead_reason is not None:
            return
        creation = self.tasks.get(actor.creation.task_id)
        if actor.restarts_left != 0:
            actor.restarts_left -= 1
            actor.alive = False
            self._release(actor.holds)  # the new incarnation acquires them again
            actor.holds = None
            if creation is None:
                creation = TaskState(actor.creation)
                self.tasks[actor.creation.task_id] = creation
                for object_id in actor.creation.return_ids:
                    self.objects.reset(object_id)
            creation.state, creation.worker = WAITING, None
            actor.worker = self._start_worker(actor.actor_id)
            return
        if creation is not None:
            self._fail(creation, errors.ActorDiedError(f"the actor's process died ({reason})"))
        self._actor_dead(actor, f"its process died ({reason})", stop=False)

    def _actor_dead(self, actor: ActorState, reason: str, stop: bool) -> None:
        actor.alive = False
        actor.dead_reason = reason
        if stop and actor.worker in self.workers:
            self._out.append(StopWorker(actor.worker))
        pending = list(actor.calls) + list(actor.in_flight)
        actor.calls.clear()
        actor.in_flight = []
        for task_id in pending:
            task = self.tasks.get(task_id)
            if task is not None:
                self._fail(task, errors.ActorDiedError(
                    f"cannot run {task.spec.name}: the actor is dead ({reason})"))
        self._release(actor.holds)
        self._forget_arguments(actor.creation)
        if actor.name is not None and self.named.get(actor.name) == actor.actor_id:
            del self.named[actor.name]

    def actor_alive(self, actor_id: bytes) -> bool:
        """Known here and not dead: what px.kill reports it stopped."""
        actor = self.actors.get(actor_id)
        return actor is not None and actor.dead_reason is None

    def _on_actor_killed(self, event: ActorKilled) -> None:
        """Its pending calls fail with ActorDiedError; a dead or unknown actor is left be."""
        actor = self.actors.get(event.actor_id)
        if actor is None or actor.dead_reason is not None:
            return
        creation = self.tasks.get(actor.creation.task_id)
        if creation is not None:
            self._fail(creation, errors.ActorDiedError("the actor was killed"))
        self._actor_dead(actor, "it was killed with px.kill", stop=True)

    def lookup_actor(self, name: str) -> bytes | None:
        return self.named.get(name)

    # ---- shutdown ----
    def _on_shut_down(self, _event: ShutDown) -> None:
        for worker_id in list(self.workers):
            self._out.append(StopWorker(worker_id))
        self.objects.clear()



def _covers(held: dict[str, float], demand: dict[str, float]) -> bool:
    return all(held.get(name, 0.0) >= amount for name, amount in demand.items())
