"""The node's task state machine: it composes the worker pool, resources, actors and
objects, and moves tasks between states. Sans-IO.

Every stimulus (a submit, a worker's reply, a worker's death, the clock) is a frozen
event from `exec.events`; `handle(*events)` applies a batch and returns what the node must
do as a list of instructions (dask's worker state machine shape). Tests feed it events and
compare instruction lists; the trio driver in `exec.service` does the I/O. Every task
state change goes through `_transition`, whose allowed moves are listed in `ALLOWED`, and
`validate()` checks the invariants that tie the parts together.

Rules it keeps:
- A task runs once its top-level ObjectRef arguments are ready and its resources fit.
- A busy worker queues more tasks that fit in what it already holds: about
  `prefetch_seconds` of work, judged by how long the function took before. Tasks that
  need GPUs never queue: the node names their GPU indices when they start.
- A worker blocked in get/wait hands back its queued tasks and lends its CPU; tasks it
  waits for are sent to it to run on its own stack (`nested`), which keeps recursive
  task trees depth-first; more workers start while CPUs are lent and work is waiting.
- A worker that dies has its tasks retried up to `max_retries`, then they fail with
  WorkerCrashedError; an actor's worker death fails its calls with ActorDiedError.
- In a cluster, a peer with nothing to run steals ready tasks this node owns (the cost
  model of `exec.stealing` decides which); their results come back to this node, and
  when the peer dies they run again here (`max_retries`). Tasks stolen from a peer run
  here like any other, and their results go back to that peer.
- Work with a scheduling strategy (SPREAD, node affinity) is never stolen: once its
  arguments are here, this node pushes it where the strategy says or keeps it (`_route`).
"""

from __future__ import annotations

import itertools
import math
import pickle
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from p2pexec import errors
from p2pexec.exec import protocol as p
from p2pexec.exec.actors import ActorState, ActorTable
from p2pexec.exec.borrowing import Loans
from p2pexec.exec.config import ExecConfig
from p2pexec.exec.events import (
    ActorKilled,
    ActorLocated,
    BorrowAnswered,
    BorrowRequested,
    CancelRequested,
    ClientLeft,
    CodeFetched,
    CodeRegistered,
    Draining,
    Event,
    Fetched,
    GaveBack,
    GetRequested,
    HeldAsked,
    NameLost,
    PackageReady,
    PeerGone,
    PeerLoads,
    PeersResources,
    Prefetched,
    Put,
    RefsChanged,
    Released,
    RemoteActorKilled,
    RemoteFinished,
    RemoteYielded,
    ShutDown,
    SpillEnded,
    Started,
    StealRequested,
    StreamYielded,
    Submitted,
    TaskFinished,
    TasksGranted,
    TasksReturned,
    Tick,
    WorkerDied,
    WorkerReady,
)
from p2pexec.exec.instructions import (
    ActorHere,
    ActorNamed,
    AskHeld,
    CancelRemote,
    CodeHere,
    Completed,
    DeleteSpilled,
    Fetch,
    FetchCode,
    FetchPackage,
    Forward,
    Grant,
    HandBack,
    Holding,
    Instruction,
    Interrupt,
    LocateActor,
    Recycle,
    Release,
    ReturnResult,
    ReturnYielded,
    Send,
    Spill,
    StopRemoteActor,
    StopWorker,
    Unlink,
    Warn,
)
from p2pexec.exec.objects import ObjectTable
from p2pexec.exec.pool import WorkerPool, WorkerState
from p2pexec.exec.refs import stream_item, stream_link, task_of
from p2pexec.exec.resources import CPU, GPU, Resources, covers, gpu_ids
from p2pexec.exec.runtime_env import RuntimeEnv
from p2pexec.exec.serialization import payload_segment, payload_size, system_error_payload
from p2pexec.exec.stealing import PLACEMENT, Placement, batch_size, worth_moving
from p2pexec.exec.task import (
    ACTOR_CALL,
    ACTOR_CREATE,
    DEFAULT,
    NODE_AFFINITY,
    SPREAD,
    STREAMING,
    TASK,
    TaskSpec,
)

DRIVER = 0
"""Holder id of the driver embedded in the node's own process."""
PEER_HOLDERS = 1 << 40
"""Holder ids of peer nodes start here (workers count up from 1, drivers down from -1):
a peer holds the arguments of tasks it gave this node and the large results kept for it."""


class TaskStatus(Enum):
    WAITING = "waiting"
    """Arguments missing, code not fetched yet (a task a peer gave), resources no node
    here could ever offer, an actor creation waiting for its worker or resources, or an
    actor call not yet sent."""
    READY = "ready"
    """Runnable: in the ready deque, waiting for resources and an idle worker."""
    QUEUED = "queued"
    """Sent ahead to a busy worker (prefetch); starts when the task under it ends."""
    RUNNING = "running"
    """On a worker's stack, or an actor call sent to its actor's worker."""
    STOLEN = "stolen"
    """Given to a peer that asked for work; its result comes back from there."""
    DONE = "done"
    """Finished or failed for good; no longer in the task table."""

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code
    # on the hot path (`_transition` runs several times per task)


WAITING, READY, QUEUED, RUNNING, STOLEN, DONE = TaskStatus
ALLOWED = frozenset({
    (WAITING, READY),  # its arguments arrived
    (WAITING, RUNNING),  # an actor creation started, an actor call was sent
    (READY, RUNNING),  # an idle worker took it, or a blocked one runs it nested
    (READY, QUEUED),  # prefetched behind a busy worker
    (READY, WAITING),  # no node here could ever fit it
    (QUEUED, RUNNING),  # the task under it finished
    (QUEUED, READY),  # given back by a blocked worker, or its worker died
    (RUNNING, READY),  # retried, or an outer frame of a dead worker's stack
    (RUNNING, WAITING),  # an actor's creation or a call runs again after its worker died
    (STOLEN, WAITING),  # a call runs again after its actor's node died
    (READY, STOLEN),  # a peer took it
    (WAITING, STOLEN),  # a peer took one no resources here could fit
    (STOLEN, READY),  # the peer died before its result came back
    (STOLEN, WAITING),  # an actor's node died (it may restart elsewhere) or handed it back
    *((state, DONE) for state in (WAITING, READY, QUEUED, RUNNING, STOLEN)),
})


@dataclass(slots=True)
class TaskState:
    spec: TaskSpec
    missing: int = 0
    state: TaskStatus = WAITING
    attempts: int = 0
    worker: int | None = None
    held: dict[str, float] = field(default_factory=dict)
    request: GetRequest | None = None
    args_unmapped: bool = False
    """The worker that ran it last reported its argument segment unmapped."""
    submitter: int = DRIVER
    """Holder id of the process that submitted it (its unstarted work dies with a driver)."""
    owner: bytes | None = None
    """The peer that gave it to this node (None: this node owns it)."""
    owner_gone: bool = False
    """That peer died after giving it: its result has nowhere to go."""
    node: bytes | None = None
    """The peer running it, while STOLEN."""
    seconds: float | None = None
    """How long its last run took (what its owner learns the function's cost from)."""
    handed_back: bool = False
    """An actor creation the peer it was placed on handed back: it stays here (or is
    parked for any peer that asks), never pushed again."""
    checked: bool = False
    """STOLEN already at the last held check: the next one asks its peer about it."""
    streamed: int = 0
    """A streaming task: the values it has yielded (its end or error goes to that link;
    a rerun's values before it are dropped)."""
    cancelled: bool = False
    """px.cancel settled its results while it was on a worker here: whatever that worker
    still reports of it is dropped, and it never runs again."""
    pinned: bool = False
    """Its scheduling strategy keeps it on this node (SPREAD's turn came here, or node
    affinity names this node): no thief takes it, and it is not counted as load."""


@dataclass(slots=True)
class RemoteActor:
    """An actor another node made, as the callers on this node see it: where it lives
    (None while being located) and the calls not yet sent there, in submission order."""

    node: bytes | None = None
    calls: deque[bytes] = field(default_factory=deque)
    creation: TaskSpec | None = None
    """Its creation, when this node made it (so it can be placed again if `node` dies)."""
    attempts: int = 0
    search: Relocation | None = None
    """Set while this node, which did not make it, looks for it after its node died."""


@dataclass(slots=True)
class Relocation:
    """The search for an actor another node made, whose node died: its creator may
    place it again (and its new node publishes that), so this node asks where it is
    until a live node has it or `deadline` passes."""

    gone: bytes
    """The node it lived on (named in the calls' error if the search fails)."""
    deadline: float | None = None
    """When the calls waiting for it fail (None: the next tick reads the clock)."""
    ask_at: float = -math.inf
    """When the next lookup is due."""
    asking: bool = True
    """A lookup is out (one at a time): its `ActorLocated` has not come back yet."""


@dataclass(slots=True)
class RemoteResult:
    """A task a peer ran whose large results are being fetched from it. The task keeps
    its arguments until every copy is here, so if the peer dies first it runs again."""

    task: TaskState
    node: bytes
    contained: dict[bytes, list[bytes]]
    pending: set[bytes]
    lineage: bool = True
    """The task's arguments are kept to run it again if a copy is lost; not so for a
    value a streaming task yielded (its loss is that item's error)."""


@dataclass(slots=True)
class GetRequest:
    worker: int
    request_id: int
    object_ids: list[bytes]
    num_returns: int
    """-1: every value is wanted (get); k >= 0: ids of the first k ready (wait)."""
    deadline: float | None
    task_id: bytes


class Scheduler:
    """Decides what runs where on this node. No I/O, no clock: `now` is passed in."""

    def __init__(self, config: ExecConfig, resources: dict[str, float] | None = None,
                 *, in_cluster: bool = False, node_id: bytes = b"") -> None:
        """`in_cluster`: other nodes exist, so a ref to an unknown object is borrowed from
        its owner (`Borrow`) or fetched from its holders (`Fetch`), and large values held
        here are announced (`Holding`); alone, an unknown object is lost for good.
        `node_id`: this node's raw id (what refs it owns name as their owner)."""
        self.config = config
        self.in_cluster = in_cluster
        self.node_id = node_id
        self._out: list[Instruction] = []
        self.resources = Resources({CPU: config.cpus(), **(resources or {})})
        self.objects = ObjectTable(self._unlink, self._object_freed,
                                   self._holding if in_cluster else None)
        self.objects.delete_spilled = lambda segment: self._out.append(DeleteSpilled(segment))
        self.store_cap = config.store_memory()
        """Bytes of shared memory objects may take before the oldest are spilled."""
        self._unreferenced: list[bytes] = []
        """Actors whose creation object was freed during the current event."""
        self.pool = WorkerPool(config, self.resources.total[CPU], self._out)
        self.actors = ActorTable()
        self.tasks: dict[bytes, TaskState] = {}
        self.ready: deque[bytes] = deque()
        self.requests: dict[tuple[int, int], GetRequest] = {}
        self._warned_infeasible: set[bytes] = set()
        self._owned_ready = 0
        """Tasks this node owns in the READY state: what peers may steal."""
        self._unrouted: dict[bytes, None] = {}
        """Work with hard node affinity not sent yet: its node has not been heard of
        while the membership fills in, or (an actor) its arguments are not all here."""
        self._pushes: dict[bytes, list[TaskState]] = {}
        """Per peer, the work this batch pushed there unasked (one grant each, at the end)."""
        self.parked: dict[bytes, None] = {}
        """Tasks no resources here could ever fit, and actor creations whose resources
        are held here now, oldest first: a peer may take them."""
        self._busy_actors: dict[bytes, None] = {}
        """The parked actor creations that could start here once their resources are
        free again (created here if that comes before a peer takes them)."""
        self._peer_holders: dict[bytes, int] = {}
        self._holder_ids = itertools.count(PEER_HOLDERS)
        """Never reused: a peer that comes back must not inherit another's holds."""
        self.loans = Loans(self.objects, self._out, self._peer_holder)
        """Objects borrowed from peers and lent to them."""
        self.remote_actors: dict[bytes, RemoteActor] = {}
        """Actors other nodes made that tasks here call."""
        self._relocating: set[bytes] = set()
        """The remote actors being looked for again (`RemoteActor.search`; an id whose
        entry went meanwhile is dropped at the next tick)."""
        self._code_sent: dict[bytes, set[bytes]] = {}
        """Per peer, the code hashes this node's grants have carried to it: a grant
        carries each only once (forgotten when the peer goes)."""
        self._code_waiting: dict[bytes, list[TaskState]] = {}
        """Per code hash this node lacks, the granted tasks waiting for its fetch."""
        self.packages: set[bytes] = set()
        """The runtime_env packages stored and unpacked here (by a local client, or
        fetched): work of an environment runs only once all of its are here."""
        self._package_waiting: dict[bytes, tuple[bytes, list[TaskState]]] = {}
        """Per package this node lacks, the node it is being fetched from and the granted
        tasks waiting for it."""
        self._peer_totals: tuple[dict[str, float], ...] = ()
        self.placement = Placement()
        """The peers' gossiped loads: where a new actor goes."""
        self._members_since: float | None = None
        self._membership_settled = False
        """`infeasible_grace` has passed since the first membership news."""
        self._remote_results: dict[bytes, RemoteResult] = {}
        """By object id: large results of tasks peers ran, on their way here."""
        self.kept: dict[bytes, bytes] = {}
        """Large results of tasks this node ran for peers, kept until their owner (the
        value) has fetched them."""
        self.draining = False
        """This node is leaving gracefully: it asks peers for no more work."""
        self.counts = {"done": 0, "stolen_in": 0, "stolen_out": 0, "steal_requests": 0}
        """Tasks this node finished, took from peers and gave to peers, and the steal
        requests it answered (for status and the figures)."""
        self._at_peers = 0
        """Tasks in the STOLEN state (given to peers, or calls sent to remote actors)."""
        self._next_check: float | None = None
        """When the next held check is due (None: the clock has not been read since
        tasks went to peers; the next tick starts it)."""
        self._dirty = False
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
            ClientLeft: self._on_client_left,
            Fetched: self._on_fetched,
            Prefetched: self._on_prefetched,
            SpillEnded: self._on_spill_ended,
            StealRequested: self._on_steal_requested,
            TasksGranted: self._on_tasks_granted,
            RemoteFinished: self._on_remote_finished,
            Released: self._on_released,
            TasksReturned: self._on_tasks_returned,
            HeldAsked: self._on_held_asked,
            PeersResources: self._on_peers_resources,
            PeerLoads: self._on_peer_loads,
            ActorLocated: self._on_actor_located,
            PeerGone: self._on_peer_gone,
            BorrowRequested: self._on_borrow_requested,
            BorrowAnswered: self._on_borrow_answered,
            Draining: self._on_draining,
            NameLost: self._on_name_lost,
            RemoteActorKilled: self._on_remote_actor_killed,
            CodeFetched: self._on_code_fetched,
            CancelRequested: self._on_cancel_requested,
            StreamYielded: self._on_stream_yielded,
            RemoteYielded: self._on_remote_yielded,
            PackageReady: self._on_package_ready,
        }
        self._children: dict[bytes, list[bytes]] = {}
        """The tasks each running task here submitted (what a recursive cancel reaches);
        forgotten when the parent ends."""

    # ---- the one entry point ----
    def handle(self, *events: Event) -> list[Instruction]:
        """Apply a batch of stimuli and return what the node must do now. Scheduling runs
        once per batch, not once per event, so a burst of 10,000 submissions costs one pass
        over the workers, not 10,000."""
        handlers = self._handlers
        for event in events:
            handlers[type(event)](event)
        if self._unreferenced:
            self._stop_unreferenced_actors()
        if self._dirty:
            self._dirty = False
            self._schedule()
        if self._pushes:
            self._send_pushes()
        if self.objects.memory_bytes > self.store_cap:
            for object_id, segment in self.objects.spill_candidates(self.store_cap):
                self._out.append(Spill(object_id, segment))
        out = self._out[:]
        self._out.clear()
        return out

    # ---- queries ----
    @property
    def total(self) -> dict[str, float]:
        return self.resources.total

    @property
    def available(self) -> dict[str, float]:
        return self.resources.available

    def free(self) -> dict[str, float]:
        """What is free here, as peers and users see it (CPUs that blocked tasks took
        back count as none, never below)."""
        return {name: max(0.0, amount) for name, amount in self.resources.available.items()}

    @property
    def workers(self) -> dict[int, WorkerState]:
        return self.pool.workers

    def next_deadline(self) -> float | None:
        """When this node wants a `Tick`: the first get timeout, while tasks are at
        peers the next held check, and while actors are looked for again the next
        lookup or deadline (-inf: tick at once, to start a clock)."""
        deadlines = [r.deadline for r in self.requests.values() if r.deadline is not None]
        if self._at_peers:
            deadlines.append(-math.inf if self._next_check is None else self._next_check)
        if self._relocating:
            deadlines.extend(self._search_deadlines())
        return min(deadlines) if deadlines else None

    @property
    def membership_settled(self) -> bool:
        """`infeasible_grace` had passed since the first membership news at the last
        news: a task no live member fits fails, and so does work bound to a node not
        heard of."""
        return self._membership_settled

    def actor_alive(self, actor_id: bytes) -> bool:
        """Known here and not dead: what px.kill reports it stopped."""
        return self.actors.alive(actor_id)

    def actor_node(self, actor_id: bytes) -> bytes | None:
        """The peer an actor this node calls lives on, if known here."""
        remote = self.remote_actors.get(actor_id)
        return remote.node if remote is not None else None

    def lookup_actor(self, name: str) -> bytes | None:
        return self.actors.lookup(name)

    def queue_length(self) -> int:
        """Tasks this node owns waiting for a CPU or for resources it lacks: the load
        peers see, and what a steal may take (tasks stolen from a peer are not given on)."""
        return self._owned_ready + len(self.parked)

    def cpus_in_use(self) -> float:
        """CPUs taken here: by running tasks and actors, and by the actors placed here
        that have not started yet (what this node's load counts, for placement)."""
        return max(0.0, self.total.get(CPU, 0.0) - self._free_for_actors().get(CPU, 0.0))

    def _free_for_actors(self) -> dict[str, float]:
        """What is free here once the actors placed here that have not started yet take
        what they need (one whose constructor runs holds it already, in its creation
        task)."""
        free = dict(self.resources.available)
        for actor in self.actors.actors.values():
            if actor.dead_reason is None and not actor.holds:
                creation = self.tasks.get(actor.creation.task_id)
                if creation is not None and creation.held:
                    continue
                for name, amount in actor.creation.resources.items():
                    free[name] = free.get(name, 0.0) - amount
        return free

    def idle_cpus(self) -> float:
        """CPUs a steal should fill: none while tasks are ready here, else every CPU the
        ready queue leaves short (so a thief asks before its last task ends)."""
        if self.draining:
            return 0.0
        ready, tasks = self.ready, self.tasks
        cpus = self.total.get(CPU, 0.0) - self.actors.cpus_for_life  # held for good
        while ready:
            task = tasks.get(ready[0])
            if task is not None and task.state is READY:
                break
            ready.popleft()
        return max(0.0, cpus - len(ready))

    # ---- task states ----
    def _transition(self, task: TaskState, to: TaskStatus) -> None:
        """The one place a task changes state."""
        assert (task.state, to) in ALLOWED, f"{task.spec.name}: {task.state} -> {to}"
        if task.owner is None and not task.pinned:
            if to is READY:
                self._owned_ready += 1
            elif task.state is READY:
                self._owned_ready -= 1
        if to is STOLEN:
            self._at_peers += 1
            task.checked = False
        elif task.state is STOLEN:
            self._at_peers -= 1
        task.state = to

    def _make_ready(self, task: TaskState, front: bool = False) -> None:
        """Runnable again; `front` for tasks that were already running or sent (they keep
        their turn ahead of later submissions)."""
        self._transition(task, READY)
        task.worker = None
        if front:
            self.ready.appendleft(task.spec.task_id)
        else:
            self.ready.append(task.spec.task_id)
        self._dirty = True

    def _unlink(self, segment: str) -> None:
        self._out.append(Unlink(segment))

    # ---- workers ----
    def _on_started(self, _event: Started) -> None:
        self.pool.start_pool()

    def _on_worker_ready(self, event: WorkerReady) -> None:
        worker = self.workers.get(event.worker)
        if worker is None:
            return
        worker.ready = True
        actor = self.actors.get(worker.actor_id)
        if actor is not None:
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
            if task is not None and task.cancelled:
                self._end_cancelled(task, [])
            elif task is not None:
                self._make_ready(task, front=True)
        for depth, task_id in enumerate(reversed(worker.stack)):
            task = self.tasks[task_id]
            self.resources.release(task.held)
            task.request = None
            if task.cancelled:  # px.cancel(force=True) killed it, or it died cancelled
                self._end_cancelled(task, [])
                continue
            if depth:  # an outer frame waiting for a nested task: it runs again, uncharged
                self._make_ready(task, front=True)
                continue
            task.attempts += 1
            retries = task.spec.max_retries
            if retries < 0 or task.attempts <= retries:
                self._make_ready(task, front=True)
                self._out.append(Warn(
                    f"the worker process running task {task.spec.name} died ({reason}); "
                    f"retrying it (retry {task.attempts} of "
                    f"{'unlimited' if retries < 0 else retries})"))
            else:
                self._fail(task, errors.WorkerCrashedError(
                    f"the worker process running task {task.spec.name} died ({reason}) and "
                    f"the task ran out of retries after {task.attempts} attempts"))
        self.pool.replace_lost()

    def _on_code_registered(self, event: CodeRegistered) -> None:
        self._register_code(event.code_hash, event.pickled)

    def _register_code(self, code_hash: bytes, pickled: bytes, publish: bool = True
                       ) -> None:
        """Code this node holds from now on; in a cluster its holder record is published
        once, so that nodes that never saw it can fetch it here. Code a peer gave or a
        holder sent (`publish` False) is not: the node that grants a task is the one a
        thief lacking its code asks first, and it made the code's record itself."""
        if code_hash in self.pool.code:
            return
        self.pool.register_code(code_hash, pickled)
        if self.in_cluster and publish:
            self._out.append(CodeHere(code_hash))

    # ---- submission ----
    def _on_submitted(self, event: Submitted) -> None:
        spec, submitter = event.spec, event.submitter
        for object_id in spec.return_ids:
            self.objects.expect(object_id, submitter)
        if submitter > 0:  # a worker: the task on top of its stack is the parent
            worker = self.workers.get(submitter)
            if worker is not None and worker.stack:
                self._children.setdefault(worker.stack[-1], []).append(spec.task_id)
        self._admit(TaskState(spec, submitter=submitter))

    def _admit(self, task: TaskState) -> None:
        """A task enters the table: pin its arguments, wait for them, route it by kind."""
        spec = task.spec
        self.objects.pin_all(spec.contained)
        self.tasks[spec.task_id] = task
        for dep in self._awaited_args(spec):
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
                self._arguments_ready(task)
        elif spec.kind == ACTOR_CREATE:
            self._create_actor(task)
        else:
            self._queue_actor_call(task)

    def _dep_arrived(self, task: TaskState) -> None:
        task.missing -= 1
        if task.missing or task.spec.task_id not in self.tasks:
            return
        kind = task.spec.kind
        if self._failed_dependency(task):
            if kind == ACTOR_CALL:
                self._pump_actor(self.actors.get(task.spec.actor_id), task.spec.actor_id)
            return
        if kind == TASK:
            self._arguments_ready(task)
        elif task.spec.task_id in self._unrouted:  # an actor bound to a peer: sent now
            del self._unrouted[task.spec.task_id]
            self._create_actor(task)
        elif kind == ACTOR_CREATE:
            self._try_create_actor(self.actors.get(task.spec.actor_id))
        else:
            self._pump_actor(self.actors.get(task.spec.actor_id), task.spec.actor_id)

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

    def _on_put(self, event: Put) -> None:
        self._out.append(Completed((event.object_id,)))  # a driver may already wait for it
        self.objects.put(event.object_id, event.payload, event.contained, event.holder)

    def _on_refs_changed(self, event: RefsChanged) -> None:
        holder = event.holder
        objects = self.objects
        for object_id, delta in event.deltas.items():
            if delta < 0:
                objects.remove_holder(object_id, holder)
            elif objects.known(object_id):
                objects.add_holder(object_id, holder)
            elif self.in_cluster:  # a ref from another node: borrow it (or fetch it) once
                objects.receive(object_id, holder)
                owner = event.owners.get(object_id, b"")
                if owner and owner != self.node_id:
                    self.loans.borrow(object_id, owner)
                else:  # no owner named: whoever the DHT says holds a copy
                    self._out.append(Fetch(object_id))

    def _on_borrow_requested(self, event: BorrowRequested) -> None:
        self.loans.lend(event.node, event.object_ids)

    def _on_borrow_answered(self, event: BorrowAnswered) -> None:
        if self.loans.answered(event.node, event.values, event.large):
            self._dirty = True  # tasks may have waited for them

    def _on_fetched(self, event: Fetched) -> None:
        if self._remote_result_fetched(event.object_id, event.payload):
            self._dirty = True
            return
        entry = self.objects.entries.get(event.object_id)
        if entry is None or not entry.remote or entry.payload is not None:
            return  # not asked for (a stray answer): nothing to complete
        self._out.append(Completed((event.object_id,)))
        self.objects.complete(event.object_id, event.payload, [])
        self._dirty = True  # tasks may have waited for it

    def _on_prefetched(self, event: Prefetched) -> None:
        if self.loans.prefetched(event.object_id, event.holder, event.payload):
            self._dirty = True  # tasks may have waited for it

    def _on_spill_ended(self, event: SpillEnded) -> None:
        segment = self.objects.spilled(event.object_id, event.segment, event.ok)
        if segment is not None:
            self._out.append(Unlink(segment))

    def _holding(self, object_id: bytes, held: bool) -> None:
        self._out.append(Holding(object_id, held))

    # ---- scheduling ----
    def _schedule(self) -> None:
        if self._busy_actors:
            self._place_busy_actors()
        for actor in self.actors.take_waiting():
            self._try_create_actor(actor)
        resources = self.resources
        ready = self.ready
        # environments whose worker is starting, and their tasks: these keep their turn
        # while work of environments with an idle worker goes by
        starting: set[RuntimeEnv | None] = set()
        skipped: list[bytes] = []
        while ready:
            task = self.tasks.get(ready[0])
            if task is None or task.state is not READY:
                ready.popleft()
                continue
            demand = task.spec.resources
            if not resources.fits(demand):
                if not resources.feasible(demand):
                    ready.popleft()
                    self._park_infeasible(task)
                    continue
                break
            env = task.spec.runtime_env
            worker = None if env in starting else self.pool.idle_worker(env)
            if worker is None:
                if env not in starting:
                    self.pool.maybe_start_extra(env)
                    if not self.pool.has_idle():
                        break
                    starting.add(env)
                skipped.append(ready.popleft())
                continue
            ready.popleft()
            task.held = resources.acquire(demand)
            self._run_on(worker, task, nested=False)
        ready.extendleft(reversed(skipped))
        if ready:
            self._prefetch()

    def _place_busy_actors(self) -> None:
        """Parked actor creations whose resources are free here again start here (no
        peer took them first)."""
        free = self._free_for_actors()
        for task_id in list(self._busy_actors):
            task = self.tasks.get(task_id)
            if task is None or task_id not in self.parked:
                del self._busy_actors[task_id]
            elif not task.missing and covers(free, _placement_demand(task.spec)):
                del self._busy_actors[task_id]
                del self.parked[task_id]
                self._place_actor_here(task)
                for name, amount in task.spec.resources.items():  # it takes them
                    free[name] = free.get(name, 0.0) - amount

    def _actor_fits_now(self, demand: dict[str, float]) -> bool:
        return covers(self._free_for_actors(), demand)

    def _park_infeasible(self, task: TaskState) -> None:
        """No node we know can ever run it; keep it (a bigger node may join) and say so."""
        self._transition(task, WAITING)
        spec = task.spec
        self.parked[spec.task_id] = None
        if self.in_cluster:  # a peer that fits may steal it (it counts in this node's load)
            self._fail_if_unsatisfiable(task)
            return
        if spec.task_id not in self._warned_infeasible:
            self._warned_infeasible.add(spec.task_id)
            self._out.append(Warn(
                f"task {spec.name} needs {spec.resources} but this node has {self.total}; "
                f"it waits until a node with those resources is available"))

    def _prefetch(self) -> None:
        """Queue work behind busy workers when no worker is idle. While a worker is
        starting, only tasks known to be tiny queue: it takes the next task sooner than a
        worker busy with a task of unknown length (on a cold node, two long tasks must
        not queue on one worker). A queued task starts with what the task before it
        gives back, so it must fit in that: the running task's holding for the first,
        the previous queued task's demand for the next. A task needing GPUs never
        queues: its message names its GPU indices, which are only chosen when it
        starts."""
        ready = self.ready
        depth = self.pool.depth
        starting = self.pool.starting()
        for worker in self.workers.values():  # the hot path: no generator, checks inline
            if (worker.actor_id is not None or not worker.stack or not worker.ready
                    or len(worker.stack) > 1):
                continue
            top = self.tasks.get(worker.stack[-1])
            if top is None or top.request is not None:
                continue
            last = self.tasks.get(worker.queued[-1]) if worker.queued else None
            inherited = top.held if last is None else last.spec.resources
            while ready:
                task = self.tasks.get(ready[0])
                if task is None or task.state is not READY:
                    ready.popleft()
                    continue
                if (len(worker.queued) >= depth(task.spec.callable_hash)
                        or task.spec.runtime_env != worker.runtime_env
                        or not covers(inherited, task.spec.resources)
                        or GPU in task.spec.resources
                        or (starting and not self.pool.is_tiny(task.spec.callable_hash))):
                    break
                inherited = task.spec.resources
                ready.popleft()
                self._transition(task, QUEUED)
                task.worker = worker.worker_id
                worker.queued.append(task.spec.task_id)
                self._send_work(worker, task, nested=False)
            if not ready:
                return

    def _run_on(self, worker: WorkerState, task: TaskState, nested: bool) -> None:
        self._start_on(worker, task)
        self._send_work(worker, task, nested)

    def _start_on(self, worker: WorkerState, task: TaskState) -> None:
        self._transition(task, RUNNING)
        task.worker = worker.worker_id
        worker.stack.append(task.spec.task_id)

    def _send_work(self, worker: WorkerState, task: TaskState, nested: bool) -> None:
        spec = task.spec
        code = self.pool.code_to_ship(worker, spec.callable_hash)
        deps = {dep: self._payload_or_lost(dep) for dep in spec.deps} if spec.deps else {}
        for dep in deps:
            self.objects.touch(dep)
        self._out.append(Send(worker.worker_id, work_message(spec, code, deps, nested,
                                                             gpu_ids(task.held))))

    def _payload_or_lost(self, object_id: bytes) -> list:
        payload = self.objects.payload(object_id)
        if payload is None:
            return system_error_payload(errors.ObjectLostError(
                f"object {object_id.hex()} was lost before it could be read"))
        return payload

    # ---- results ----
    def _on_task_finished(self, event: TaskFinished) -> None:
        worker_id, task_id, payloads = event.worker, event.task_id, event.payloads
        task = self.tasks.get(task_id)
        worker = self.workers.get(worker_id)
        if task is None or worker is None or task.worker != worker_id \
                or task.state is not RUNNING:
            if task is not None and task.state is QUEUED and task.worker == worker_id:
                self._out.append(Warn(f"worker {worker_id} reported task {task.spec.name} "
                                      f"done before starting it; result dropped"))
            self._drop_payloads(payloads)  # a late result for a failed or killed task
            return
        if worker.stack and worker.stack[-1] == task_id:
            worker.stack.pop()
        spec = task.spec
        task.args_unmapped = event.args_unmapped
        if event.seconds is not None and spec.kind == TASK:
            task.seconds = event.seconds
            self.pool.record_duration(spec.callable_hash, event.seconds)
        actor = self.actors.get(spec.actor_id)
        if spec.kind == ACTOR_CREATE and actor is not None:
            actor.holds, task.held = task.held, {}
        self.resources.release(task.held)
        task.worker = None
        if task.cancelled:
            self._end_cancelled(task, payloads)
        elif spec.kind == ACTOR_CALL or spec.kind == ACTOR_CREATE:
            self._actor_task_done(task, payloads, event.contained)
        elif (spec.retry_exceptions and payloads and payloads[0][0] == p.ERROR
              and (spec.max_retries < 0 or task.attempts < spec.max_retries)):
            task.attempts += 1
            self._make_ready(task)
        else:
            self._finish(task, payloads, event.contained)
        self._after_worker_step(worker)
        self._dirty = True

    def _after_worker_step(self, worker: WorkerState) -> None:
        """A task left `worker`'s stack: start its next queued one or go back to waiting."""
        if worker.stack:
            outer = self.tasks.get(worker.stack[-1])
            if outer is not None and outer.request is None:
                self.resources.reacquire_cpu(outer.held)
            elif outer is not None:
                self._dispatch_awaited(worker, outer.request)
            return
        if worker.queued:
            next_id = worker.queued.popleft()
            task = self.tasks.get(next_id)
            if task is not None:
                task.held = self.resources.acquire(task.spec.resources)
                self._start_on(worker, task)

    def _finish(self, task: TaskState, payloads: list[list],
                contained: list[list[bytes]] | None) -> None:
        spec = task.spec
        self._retire(task)
        self.counts["done"] += 1
        self._deliver(task, payloads, contained)
        if spec.kind != ACTOR_CREATE:  # a restart needs them; freed when the actor dies
            self._forget_arguments(spec, recycle=task.args_unmapped)

    def _deliver(self, task: TaskState, payloads: list[list],
                 contained: list[list[bytes]] | None) -> None:
        """A task's results reach whoever waits for them: here, or its owner. A streaming
        task's came as it yielded (`_on_stream_yielded`); only an error that ends it
        (its worker died for good, it was cancelled) is delivered here, to the link its
        consumer waits on next."""
        if task.owner is not None:
            self._return_to_owner(task, payloads, contained)
            return
        return_ids = _result_ids(task, payloads)
        if not return_ids and task.spec.generator == STREAMING:
            return
        self._out.append(Completed(tuple(return_ids)))  # wake drivers first
        for index, (object_id, payload) in enumerate(zip(return_ids, payloads,
                                                          strict=True)):
            inside = contained[index] if contained else []
            self.objects.complete(object_id, payload, inside)

    def _retire(self, task: TaskState) -> None:
        """The task leaves the table for good."""
        self._transition(task, DONE)
        task_id = task.spec.task_id
        del self.tasks[task_id]
        self.parked.pop(task_id, None)
        self._busy_actors.pop(task_id, None)
        self._unrouted.pop(task_id, None)
        if self._children:
            self._children.pop(task_id, None)

    def _end_cancelled(self, task: TaskState, payloads: list[list]) -> None:
        """A cancelled task's worker is done with it (it skipped it, was interrupted,
        finished anyway, or died): it leaves, and what the worker made of it goes."""
        self._drop_payloads(payloads)
        self._retire(task)
        self._forget_arguments(task.spec, recycle=task.args_unmapped)

    def _drop_payloads(self, payloads: list[list]) -> None:
        for payload in payloads:
            segment = payload_segment(payload)
            if segment is not None:
                self._unlink(segment)

    def _forget_arguments(self, spec: TaskSpec, recycle: bool = False) -> None:
        """The task is over for good: its argument objects and segment may go."""
        self.objects.unpin_all(spec.contained)
        segment = payload_segment(spec.args)
        if segment is not None:
            self._out.append(Recycle(segment) if recycle else Unlink(segment))

    def _fail(self, task: TaskState, error: errors.P2PExecError) -> None:
        self.resources.release(task.held)
        task.held = {}
        task.args_unmapped = False
        payload = system_error_payload(error)
        self._finish(task, [payload] * len(task.spec.return_ids), None)

    # ---- get / wait from workers ----
    def _on_get_requested(self, event: GetRequested) -> None:
        worker_id, request_id, object_ids = event.worker, event.request_id, event.object_ids
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        self._take_back(worker, event.given_back)
        for object_id in object_ids:
            self.objects.touch(object_id)
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
            self.resources.lend_cpu(caller.held)
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
        actor = self.actors.get(worker.actor_id)
        if actor is not None and actor.in_flight:
            return self.tasks.get(actor.in_flight[0])
        return None

    def _take_back(self, worker: WorkerState, given_back: list[bytes]) -> None:
        for task_id in reversed(given_back):
            task = self.tasks.get(task_id)
            if task is None or task.worker != worker.worker_id or task.state is not QUEUED:
                continue
            worker.queued.remove(task_id)
            if task.cancelled:
                self._end_cancelled(task, [])
            else:
                self._make_ready(task, front=True)

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
            if task is None or task.state is not READY or task.spec.kind != TASK:
                continue
            if task.attempts:
                continue  # it crashed a worker once: never again under a waiting caller
            if task.spec.runtime_env != worker.runtime_env:
                continue  # it runs in another environment than this worker's
            if not self.resources.fits(task.spec.resources):
                continue
            task.held = self.resources.acquire(task.spec.resources)
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
        self._out.append(Send(request.worker, values_message(request.request_id, body,
                                                             timed_out)))
        caller = self.tasks.get(request.task_id)
        if caller is not None and caller.request is request:
            caller.request = None
            worker = self.workers.get(request.worker)
            if worker is not None and worker.stack and worker.stack[-1] == request.task_id:
                self.resources.reacquire_cpu(caller.held)

    def _on_tick(self, event: Tick) -> None:
        expired = [r for r in self.requests.values()
                   if r.deadline is not None and r.deadline <= event.now]
        for request in expired:
            del self.requests[(request.worker, request.request_id)]
            self._answer(request, timed_out=True)
        if expired:
            self._dirty = True
        if not self._at_peers:
            self._next_check = None
        elif self._next_check is None or event.now >= self._next_check:
            if self._next_check is not None:
                self._check_held()
            self._next_check = event.now + self.config.steal.check_interval
        if self._relocating:
            self._search_on(event.now)

    def _check_held(self) -> None:
        """Ask each peer whether it still holds the tasks it has had since the last
        check. A peer drops an owner's tasks when it declares the owner failed, and that
        verdict can be false (loss, a partition) while the owner never declared the
        peer failed; a restarted peer has forgotten them; a grant can be lost with a
        broken connection. The tasks a peer says it does not hold come back
        (`TasksReturned`) and run again: results that still arrive are dropped, so each
        reaches its owner once."""
        asks: dict[bytes, list[bytes]] = {}
        for task in self.tasks.values():
            if task.state is STOLEN and task.node is not None:
                if task.checked:
                    asks.setdefault(task.node, []).append(task.spec.task_id)
                else:
                    task.checked = True
        for node, task_ids in asks.items():
            self._out.append(AskHeld(node, tuple(task_ids)))

    def _on_held_asked(self, event: HeldAsked) -> None:
        """An owner's held check: the tasks of its this node does not hold (finished and
        answered, dropped when this node declared the owner failed, or never received)
        go back."""
        dropped = []
        for task_id in event.task_ids:
            task = self.tasks.get(task_id)
            if task is None or task.owner != event.node or task.owner_gone:
                dropped.append(task_id)
        if dropped:
            self._out.append(HandBack(event.node, tuple(dropped)))

    # ---- actors ----
    def _create_actor(self, task: TaskState) -> None:
        spec = task.spec
        if self.actors.name_taken(spec.actor_name):
            reason = f"an actor named {spec.actor_name!r} already exists"
            self._fail(task, errors.LocalUsageError(reason))
            self._dead_on_arrival(spec, reason)
            return
        if (task.owner is None and spec.strategy != DEFAULT and not task.handed_back
                and self._route(task)):
            return
        if self.in_cluster and task.owner is None and not self.resources.feasible(
                spec.resources):  # a peer that has what it needs may take it
            self.parked[spec.task_id] = None
            self._fail_if_unsatisfiable(task)
            return
        if self.in_cluster and task.owner is None and self._peer_totals:
            demand, free = _placement_demand(spec), self._free_for_actors()
            if not covers(free, demand):
                # no CPU free here to place it on, or what it holds for its life is
                # taken: offered to a peer that has it free, created here if it frees up
                # here first (`_place_busy_actors`)
                self.parked[spec.task_id] = None
                self._busy_actors[spec.task_id] = None
                return
            total = self.total.get(CPU, 0.0)
            peer = None if task.handed_back or not self._pushable(spec) else (
                self.placement.choose(demand, total, max(0.0, total - free.get(CPU, 0.0)),
                                      self.queue_length()))
            if peer is not None:  # less loaded than here with it: pushed there
                self._push(task, peer)
                return
        self._place_actor_here(task)

    def _place_actor_here(self, task: TaskState) -> None:
        """The actor lives on this node: its worker starts, and the cluster hears of it."""
        spec = task.spec
        actor = self.actors.add(spec, self.pool.start_worker(spec.actor_id, spec.runtime_env),
                                creator=task.submitter)
        if self.in_cluster:
            self._out.append(ActorHere(spec.actor_id, True))
            if spec.actor_name is not None:
                self._out.append(ActorNamed(spec.actor_name, spec.actor_id, True))
        remote = self.remote_actors.pop(spec.actor_id, None)
        if remote is not None:  # it ran on a peer that died, and restarts here
            actor.calls.extend(remote.calls)

    def _dead_on_arrival(self, spec: TaskSpec, reason: str) -> None:
        """An actor that never started: remember why, so its calls fail saying so."""
        self.actors.add_dead(spec, reason)
        self._forget_arguments(spec)

    def _try_create_actor(self, actor: ActorState | None) -> None:
        if actor is None:
            return
        task = self.tasks.get(actor.creation.task_id)
        worker = self.workers.get(actor.worker)
        if task is None or worker is None or not worker.ready or task.missing:
            return
        if task.state is RUNNING:
            return
        if not self.resources.fits(task.spec.resources):
            self.actors.waiting.append(actor.actor_id)
            return
        task.held = self.resources.acquire(task.spec.resources)
        self._start_on(worker, task)
        self._send_work(worker, task, nested=False)

    def _queue_actor_call(self, task: TaskState) -> None:
        actor = self.actors.get(task.spec.actor_id)
        if actor is None and self.in_cluster and task.owner is None:
            self._call_remote_actor(task)
            return
        if actor is None or actor.dead_reason is not None:
            reason = actor.dead_reason if actor is not None else "it is unknown to this node"
            self._fail(task, errors.ActorDiedError(
                f"cannot call {task.spec.name}: the actor is dead ({reason})"))
            return
        actor.calls.append(task.spec.task_id)
        self._pump_actor(actor)

    def _pump_actor(self, actor: ActorState | None, actor_id: bytes | None = None) -> None:
        """Send calls in submission order while the head's arguments are ready (to the
        actor's node when another node made it)."""
        if actor is None:
            remote = self.remote_actors.get(actor_id) if actor_id is not None else None
            if remote is not None:
                self._pump_remote(remote)
            return
        worker = self.workers.get(actor.worker)
        if not actor.alive or worker is None:
            return
        while (task := self._next_call(actor.calls)) is not None:
            self._transition(task, RUNNING)
            task.worker = worker.worker_id
            actor.in_flight.append(task.spec.task_id)
            self._send_work(worker, task, nested=False)

    def _next_call(self, calls: deque[bytes]) -> TaskState | None:
        """Take the head call off an actor's queue when its arguments are ready (calls
        that already ended are dropped on the way); None while the head waits."""
        while calls:
            task = self.tasks.get(calls[0])
            if task is None:
                calls.popleft()
                continue
            if task.missing:
                return None
            calls.popleft()
            return task
        return None

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
        lost, actor.in_flight = actor.in_flight, []
        retried = []
        for task_id in lost:
            task = self.tasks.get(task_id)
            if task is None:
                continue
            if actor.restarts_left != 0 and actor.dead_reason is None and _retry_call(task):
                self._transition(task, WAITING)
                task.worker = None
                retried.append(task_id)
            else:
                self._fail(task, errors.ActorDiedError(
                    f"the actor's process died ({reason}) while running {task.spec.name}"))
        actor.calls.extendleft(reversed(retried))  # first, in the order they were sent
        if actor.dead_reason is not None:
            return
        creation = self.tasks.get(actor.creation.task_id)
        if actor.restarts_left != 0:
            actor.restarts_left -= 1
            actor.alive = False
            self.resources.release(actor.holds)  # the new incarnation acquires them again
            if creation is None:
                creation = TaskState(actor.creation)
                self.tasks[actor.creation.task_id] = creation
                for object_id in actor.creation.return_ids:
                    self.objects.reset(object_id)
            else:  # it died while constructing: what it held and waited for die with it
                self.resources.release(creation.held)
                creation.request = None
                if creation.state is not WAITING:  # not when it died before it started
                    self._transition(creation, WAITING)
            creation.worker = None
            actor.worker = self.pool.start_worker(actor.actor_id, actor.creation.runtime_env)
            return
        if creation is not None:
            self._fail(creation, errors.ActorDiedError(f"the actor's process died ({reason})"))
        self._actor_dead(actor, f"its process died ({reason})", stop=False)

    def _actor_dead(self, actor: ActorState, reason: str, stop: bool) -> None:
        if stop and actor.worker in self.workers:
            self._out.append(StopWorker(actor.worker))
        for task_id in self.actors.mark_dead(actor, reason):
            task = self.tasks.get(task_id)
            if task is not None:
                self._fail(task, errors.ActorDiedError(
                    f"cannot run {task.spec.name}: the actor is dead ({reason})"))
        self.resources.release(actor.holds)
        self._dirty = True  # what it held may start something else
        self._forget_arguments(actor.creation)
        if self.in_cluster:
            self._out.append(ActorHere(actor.actor_id, False))
            if actor.name is not None:
                self._out.append(ActorNamed(actor.name, actor.actor_id, False))

    def _stop_actor(self, actor: ActorState, constructor_error: str, reason: str) -> None:
        """Stop a live actor for good: a constructor still running fails with
        `constructor_error`, pending calls with `reason`."""
        creation = self.tasks.get(actor.creation.task_id)
        if creation is not None:
            self._fail(creation, errors.ActorDiedError(constructor_error))
        self._actor_dead(actor, reason, stop=True)

    def _on_actor_killed(self, event: ActorKilled) -> None:
        """Its pending calls fail with ActorDiedError; a dead or unknown actor is left be."""
        actor = self.actors.get(event.actor_id)
        if actor is None or actor.dead_reason is not None:
            return
        self._stop_actor(actor, "the actor was killed", event.reason)

    def _on_name_lost(self, event: NameLost) -> None:
        """A name race (two nodes created an actor of one name within a DHT round trip):
        the smaller actor id keeps the name, so this node's actor stops if its id is the
        larger; anything else (unknown actor, another name, a claim against the rule) is
        ignored with one line."""
        actor = self.actors.get(event.actor_id)
        if (actor is None or actor.dead_reason is not None or actor.name != event.name
                or not event.winner < event.actor_id):
            self._out.append(Warn(f"ignored a name race for {event.name!r} that no live "
                                  f"actor here lost"))
            return
        reason = (f"another node created an actor named {event.name!r} at the same time, "
                  f"and that one kept the name (the smaller actor id wins a name race); "
                  f"use px.get_actor({event.name!r})")
        self._stop_actor(actor, reason, reason)

    def _object_freed(self, object_id: bytes) -> None:
        """Called by the object table as it frees an object. An actor's creation object is
        held by its handles and pinned by its pending calls, so when it goes the actor
        has no handle left; it is stopped after the event (not from inside the table)."""
        actor_id = task_of(object_id)
        actor = self.actors.get(actor_id)
        remote = self.remote_actors.get(actor_id)
        if ((actor is not None and object_id == actor.creation.return_ids[0])
                or (remote is not None and remote.creation is not None
                    and object_id == remote.creation.return_ids[0])):
            self._unreferenced.append(actor_id)
        self.loans.freed(object_id)
        self.kept.pop(object_id, None)

    def _stop_unreferenced_actors(self) -> None:
        """Stop the actors whose last handle is gone, unless named or detached (Ray). The
        handles of an actor a peer placed here live at that peer, which says when to
        stop it; an actor this node placed on a peer is stopped there."""
        for actor_id in self._unreferenced:
            remote = self.remote_actors.get(actor_id)
            if (remote is not None and remote.creation is not None
                    and remote.creation.actor_name is None and not remote.creation.detached):
                del self.remote_actors[actor_id]
                if remote.node is not None:
                    self._out.append(StopRemoteActor(remote.node, actor_id))
                continue
            actor = self.actors.get(actor_id)
            if (actor is not None and actor.dead_reason is None and actor.name is None
                    and not actor.creation.detached and actor.creator < PEER_HOLDERS):
                creation = self.tasks.get(actor.creation.task_id)
                if creation is not None:
                    self._fail(creation, errors.ActorDiedError("its last handle was dropped"))
                self._actor_dead(actor, "its last handle was dropped", stop=True)
                self._dirty = True
        self._unreferenced.clear()

    def _on_client_left(self, event: ClientLeft) -> None:
        """An attached driver went away: it holds nothing any more, the tasks it queued
        that have not started are cancelled, and the actors it created stop unless they
        were created with lifetime="detached" (Ray's driver lifetime)."""
        client = event.client
        self.objects.drop_holder_everywhere(client)
        for task in list(self.tasks.values()):
            if (task.submitter == client and task.spec.kind == TASK
                    and task.state in (WAITING, READY)):
                self._fail(task, errors.TaskCancelledError(
                    f"task {task.spec.name} was cancelled: its driver went away"))
        for actor in list(self.actors.actors.values()):
            if (actor.creator == client and actor.dead_reason is None
                    and not actor.creation.detached):
                creation = self.tasks.get(actor.creation.task_id)
                if creation is not None:
                    self._fail(creation, errors.ActorDiedError("its driver went away"))
                self._actor_dead(actor, "the driver that created it went away", stop=True)

    # ---- streaming generators ----
    def _on_stream_yielded(self, event: StreamYielded) -> None:
        """Link k of a streaming task becomes "item k exists", pinning item k and link
        k + 1 (which its consumer waits on next); or its end: "no more", or the error.
        So the consumer holds one link at a time, and a consumer that stops early frees
        what is left down the chain."""
        task = self.tasks.get(event.task_id)
        if (task is None or task.worker != event.worker or task.state is not RUNNING
                or task.cancelled or task.spec.generator != STREAMING
                or event.index != task.streamed):  # (a rerun's values before it)
            if event.payload is not None:
                self._drop_payloads([event.payload])
            return
        if task.owner is not None:
            self._yield_to_owner(task, event)
        else:
            self._take_yield(task, event.index, event.payload, event.contained, event.end)

    def _take_yield(self, task: TaskState, index: int, payload: list | None,
                    contained: list[bytes], end: bool, node: bytes | None = None) -> None:
        """Make link `index` of a stream this node owns (and its item): the value came
        from a worker here, or from peer `node` that runs the task."""
        task_id, objects = task.spec.task_id, self.objects
        link = stream_link(task_id, index)
        if end:
            objects.complete(link, payload or STREAM_END, [])
        else:
            item, following = stream_item(task_id, index), stream_link(task_id, index + 1)
            objects.expect_contained(item)
            objects.expect_contained(following)
            objects.complete(link, STREAM_MORE, [item, following])  # pins both
            if node is None:
                objects.complete(item, payload, contained)
            elif payload_segment(payload) is None:
                self.loans.adopt(node, contained)
                objects.complete(item, payload, contained)
            else:  # the value stays at the peer until fetched
                objects.entries[item].remote = True
                self._remote_results[item] = RemoteResult(task, node, {item: contained},
                                                          {item}, lineage=False)
                self._out.append(Fetch(item, node))
            task.streamed = index + 1
        self._out.append(Completed((link,)))

    def _yield_to_owner(self, task: TaskState, event: StreamYielded) -> None:
        """A streaming task a peer gave this node yielded: the value goes to the peer,
        which keeps the stream's links (a large value stays here until fetched)."""
        if not event.end:
            task.streamed = event.index + 1
        owner, payload = task.owner, event.payload
        if task.owner_gone:
            if payload is not None:
                self._drop_payloads([payload])
            return
        if payload is not None and payload_segment(payload) is not None:
            item = stream_item(task.spec.task_id, event.index)
            self.kept[item] = owner
            self.objects.put(item, payload, event.contained, self._peer_holder(owner))
        self.loans.lent_with_result(owner, [event.contained])
        self._out.append(ReturnYielded(owner, task.spec.task_id, event.index, payload,
                                       event.contained, event.end))

    def _on_remote_yielded(self, event: RemoteYielded) -> None:
        """A streaming task this node gave a peer yielded there (or ended): its link is
        made here, where its consumer reads; a value that is not wanted any more goes
        back (the peer holds a large one, and the refs inside, for this node)."""
        task = self.tasks.get(event.task_id)
        if (task is None or task.state is not STOLEN or task.node != event.node
                or task.cancelled or task.spec.generator != STREAMING
                or event.index != task.streamed):
            let_go = list(event.contained)
            if event.payload is not None and payload_segment(event.payload) is not None:
                let_go.append(stream_item(event.task_id, event.index))
            if let_go:
                self._out.append(Release(event.node, tuple(let_go)))
            return
        self._take_yield(task, event.index, event.payload, event.contained, event.end,
                         node=event.node)

    # ---- cancel ----
    def cancel_refusal(self, task_id: bytes, force: bool) -> str | None:
        """Why px.cancel of this task here is a usage error (Ray's rules), or None."""
        task = self.tasks.get(task_id)
        if task is None:
            return None
        if task.spec.kind == ACTOR_CREATE:
            return "px.cancel does not stop an actor; use px.kill(handle)"
        if force and task.spec.kind == ACTOR_CALL:
            return ("px.cancel(force=True) cannot cancel an actor call: killing its process "
                    "would kill the actor (use px.kill)")
        return None

    def _on_cancel_requested(self, event: CancelRequested) -> None:
        task = self.tasks.get(event.task_id)
        if task is None:
            owner = event.owner
            if self.in_cluster and owner and owner != self.node_id:  # it knows where
                self._out.append(CancelRemote(owner, event.task_id, event.force,
                                              event.recursive))
        elif self.cancel_refusal(event.task_id, event.force) is None:
            self._cancel(task, event.force, event.recursive)
            self._dirty = True

    def _cancel(self, task: TaskState, force: bool, recursive: bool) -> None:
        """Ray's cancel: a task that has not started never runs; one running here is
        interrupted (or its process killed, `force`); its results are
        `TaskCancelledError` at once. An actor call is skipped if its actor has not
        started it, and cancelled if it runs on an async actor's loop; its result says
        which. Children first, when `recursive`."""
        spec = task.spec
        if recursive:
            for child_id in self._children.pop(spec.task_id, ()):
                child = self.tasks.get(child_id)
                if child is not None and child.spec.kind != ACTOR_CREATE:
                    self._cancel(child, force and child.spec.kind == TASK, True)
        if task.cancelled:
            return
        error = errors.TaskCancelledError(f"task {spec.name} was cancelled (px.cancel)")
        state = task.state
        if state is WAITING or state is READY:
            self._fail(task, error)
        elif state is STOLEN:
            self._out.append(CancelRemote(task.node, spec.task_id, force, recursive))
            if spec.kind == TASK:  # a call's result tells whether its actor had started it
                self._fail(task, error)
        elif spec.kind == TASK:  # QUEUED or RUNNING on a worker here
            task.cancelled = True
            self._deliver(task, [system_error_payload(error)] * len(spec.return_ids), None)
            self._out.append(Interrupt(task.worker, spec.task_id))
            if force:
                self._out.append(StopWorker(task.worker))
        else:
            self._out.append(Interrupt(task.worker, spec.task_id))

    # ---- the mesh: tasks given to peers and taken from them ----
    def _peer_holder(self, node: bytes) -> int:
        holder = self._peer_holders.get(node)
        if holder is None:
            holder = self._peer_holders[node] = next(self._holder_ids)
        return holder

    def _on_steal_requested(self, event: StealRequested) -> None:
        """Give the thief tasks from the back of the ready queue (the ones that would wait
        longest here) while moving them pays, up to `batch_seconds` of expected work per
        thief CPU and half the queue; then any parked task it can fit."""
        config = self.config.steal
        self.counts["steal_requests"] += 1
        thief, fits_thief = event.thief, event.resources
        # what the thief has free for actors, less what the actors given so far take
        free = dict(event.free if event.free is not None else fits_thief)
        budget = max(1.0, event.cpus) * config.batch_seconds
        limit = batch_size(self.queue_length())
        given: list[TaskState] = []
        kept: list[bytes] = []
        ready, work = self.ready, 0.0
        while ready and len(given) < limit and work < budget:
            task_id = ready.pop()
            task = self.tasks.get(task_id)
            if task is None or task.state is not READY:
                continue
            if not self._stealable(task, fits_thief, free):
                kept.append(task_id)
                continue
            seconds = self.pool.expected_seconds(task.spec.callable_hash)
            seconds = config.unknown_task_seconds if seconds is None else seconds
            wait = self._expected_wait(len(ready), seconds)
            if not worth_moving(wait, 0, config):
                kept.append(task_id)
                break  # the tasks ahead of it wait even less
            if not worth_moving(wait, self._input_bytes(task.spec), config):
                kept.append(task_id)  # its inputs are here: cheaper to run it here
                continue
            work += seconds
            given.append(task)
        ready.extend(reversed(kept))
        for task_id in list(self.parked):
            if len(given) >= limit:
                break
            task = self.tasks.get(task_id)
            if task is not None and not task.missing and self._stealable(task, fits_thief,
                                                                         free):
                del self.parked[task_id]
                self._busy_actors.pop(task_id, None)
                given.append(task)
                if task.spec.kind == ACTOR_CREATE:
                    for name, amount in task.spec.resources.items():
                        free[name] = free.get(name, 0.0) - amount
        for task in given:
            self._give(task, thief)
        self._grant(thief, event.request_id, given)

    def _push(self, task: TaskState, node: bytes) -> None:
        """Work this node places on `node` unasked: an actor, or work its scheduling
        strategy sends there. It leaves with the batch's other pushes to that node; an
        actor counts as that node's load until its next gossiped sample."""
        if task.spec.kind == ACTOR_CREATE:
            self.placement.placed(node, _placement_demand(task.spec).get(CPU, 0.0))
        self._give(task, node)
        self._pushes.setdefault(node, []).append(task)

    def _send_pushes(self) -> None:
        """One grant (`PLACEMENT`) per peer for what this batch pushed there, less what
        came back within the batch (the peer died, say)."""
        for node, pushed in self._pushes.items():
            given = [task for task in pushed if task.state is STOLEN and task.node == node]
            if given:
                self._grant(node, PLACEMENT, given)
        self._pushes.clear()

    def _give(self, task: TaskState, node: bytes) -> None:
        """The task is `node`'s to run now."""
        self._transition(task, STOLEN)
        task.node = node
        self.counts["stolen_out"] += 1

    def _grant(self, thief: bytes, request_id: int, given: list[TaskState]) -> None:
        """The grant that carries `given` to `thief` (for steal request `request_id`, or
        `PLACEMENT`: pushed there unasked), with the small values and the code it lacks."""
        values: dict[bytes, list] = {}
        code: dict[bytes, bytes] = {}
        sent = self._code_sent.setdefault(thief, set())
        for task in given:
            spec = task.spec
            if spec.callable_hash is not None and spec.callable_hash not in sent:
                sent.add(spec.callable_hash)
                code[spec.callable_hash] = self.pool.code[spec.callable_hash]
            self._inline_values(spec, values)
        self._out.append(Grant(thief, request_id, tuple(task.spec for task in given),
                               values, code, self.queue_length()))

    def _expected_wait(self, ahead: int, seconds: float) -> float:
        """How long a task of `seconds` with `ahead` ready tasks before it would wait here:
        their share of this node's CPUs, plus one task's time when no CPU is free."""
        cpus = self.total.get(CPU, 0.0)
        if cpus <= 0:
            return math.inf
        busy = 1 if self.resources.available.get(CPU, 0.0) < 1 else 0
        return (ahead / cpus + busy) * seconds

    def _stealable(self, task: TaskState, fits_thief: dict[str, float],
                   free: dict[str, float]) -> bool:
        """Plain tasks this node owns and no strategy keeps here, with arguments a grant
        can carry, that the thief has the resources for (a task may queue there; an
        actor, which holds what it needs for its life, must find it free)."""
        spec = task.spec
        if spec.kind == TASK:
            fits = covers(fits_thief, spec.resources)
        else:
            fits = (spec.kind == ACTOR_CREATE and spec.task_id in self.parked
                    and covers(free, _placement_demand(spec)))
        return fits and task.owner is None and not task.pinned and self._pushable(spec)

    def _pushable(self, spec: TaskSpec) -> bool:
        """A grant can carry it: its arguments are inline, and every value they name is
        here (a peer's segment names mean nothing there)."""
        return payload_segment(spec.args) is None and all(
            self.objects.is_ready(oid) for oid in spec.contained)

    def _input_bytes(self, spec: TaskSpec) -> int:
        """Bytes a thief would have to fetch before running it: its large arguments."""
        total = 0
        for object_id in spec.contained:
            payload = self.objects.payload(object_id)
            if payload is not None and payload_segment(payload) is not None:
                total += payload_size(payload)
        return total

    def _on_tasks_granted(self, event: TasksGranted) -> None:
        """Tasks a peer gave this node: their small argument values arrive with them, the
        large ones are fetched; the peer is the holder of what it sent until they end."""
        owner = event.owner
        holder = self._peer_holder(owner)
        for code_hash, pickled in event.code.items():
            self._register_code(code_hash, pickled, publish=False)
        objects = self.objects
        for spec in event.specs:
            if spec.task_id in self.tasks:
                continue  # the same task granted twice: it runs once here
            if event.placed and (self.draining or (
                    spec.kind == ACTOR_CREATE and spec.affinity is None
                    and not self._actor_fits_now(_placement_demand(spec)))):
                # taken since its owner heard: back (an actor bound to this node waits
                # here for its resources, as in Ray)
                self._out.append(HandBack(owner, (spec.task_id,)))
                continue
            created = []
            for object_id in spec.contained:
                if objects.known(object_id):
                    continue
                created.append(object_id)
                payload = event.values.get(object_id)
                if payload is not None:
                    objects.put(object_id, payload, [], holder)
                else:
                    objects.receive(object_id, holder)
                    self._out.append(Fetch(object_id, owner))
            if spec.kind == TASK:
                self.counts["stolen_in"] += 1
            task = TaskState(spec, owner=owner, submitter=holder)
            self._await_code(task, owner)
            self._await_packages(task, owner)
            self._admit(task)
            for object_id in created:  # pinned by the task now
                objects.remove_holder(object_id, holder)

    def _await_code(self, task: TaskState, holder: bytes) -> None:
        """A task a peer gave needs code this node lacks (the peer sent it before, to a
        node that has since forgotten it, or another node has it): it waits for it as
        for an argument, and the first task to wait asks for a fetch."""
        code_hash = task.spec.callable_hash
        if code_hash is None or code_hash in self.pool.code:
            return
        task.missing += 1
        waiting = self._code_waiting.get(code_hash)
        if waiting is None:
            waiting = self._code_waiting[code_hash] = []
            self._out.append(FetchCode(code_hash, holder))
        waiting.append(task)

    def _on_code_fetched(self, event: CodeFetched) -> None:
        """The code came (its tasks go on) or could not be had (they fail, and an actor
        whose class it is dies)."""
        waiting = [task for task in self._code_waiting.pop(event.code_hash, [])
                   if self.tasks.get(task.spec.task_id) is task]
        if event.pickled is not None:
            self._register_code(event.code_hash, event.pickled, publish=False)
            for task in waiting:
                self._dep_arrived(task)
            return
        self._cannot_run(waiting, errors.CodeUnavailableError, lambda task: (
            f"the code of {task.spec.name} (hash {event.code_hash.hex()}) could not be had "
            f"from any node: {event.error}"))

    def _cannot_run(self, tasks: list[TaskState], error: type[errors.P2PExecError],
                    reason: Callable[[TaskState], str]) -> None:
        """Granted work this node cannot get what it needs for (code, a package): it
        fails, and an actor whose creation it is dies."""
        for task in tasks:
            actor = self.actors.get(task.spec.actor_id)  # a creation's (calls need none)
            if actor is not None and actor.dead_reason is None:
                self._stop_actor(actor, reason(task), reason(task))
            else:
                self._fail(task, error(reason(task)))

    def _await_packages(self, task: TaskState, holder: bytes) -> None:
        """A task a peer gave runs in an environment whose packages this node may lack:
        it waits for each as for an argument, and the first to wait asks `holder` (the
        node that gave it, which holds them: work is never given on) for it."""
        env = task.spec.runtime_env
        if env is None:
            return
        for package in env.packages():
            if package in self.packages:
                continue
            task.missing += 1
            fetching = self._package_waiting.get(package)
            if fetching is None:
                fetching = self._package_waiting[package] = (holder, [])
                self._out.append(FetchPackage(package, holder))
            fetching[1].append(task)

    def _on_package_ready(self, event: PackageReady) -> None:
        """A package is here (its tasks go on), or the fetch from `event.holder` failed:
        the tasks that node gave fail (`RuntimeEnvSetupError`); others wait for a fetch
        from their own owner."""
        holder, waiting = self._package_waiting.pop(event.package, (None, []))
        waiting = [task for task in waiting if self.tasks.get(task.spec.task_id) is task]
        if not event.error:
            self.packages.add(event.package)
            for task in waiting:
                self._dep_arrived(task)
            return
        others = [task for task in waiting if task.owner != holder]
        if others:
            self._package_waiting[event.package] = (others[0].owner, others)
            self._out.append(FetchPackage(event.package, others[0].owner))
        self._cannot_run([task for task in waiting if task.owner == holder],
                         errors.RuntimeEnvSetupError, lambda task: (
            f"the runtime_env of {task.spec.name} could not be set up on node "
            f"{self.node_id.hex()[:12]}: {event.error}"))

    def _return_to_owner(self, task: TaskState, payloads: list[list],
                         contained: list[list[bytes]] | None) -> None:
        """A stolen task ended: its results go to its owner; large values stay here, held
        for the owner, until it has fetched them."""
        spec = task.spec
        if task.owner_gone:
            for payload in payloads:
                segment = payload_segment(payload)
                if segment is not None:
                    self._unlink(segment)
            return
        holder = self._peer_holder(task.owner)
        self.loans.lent_with_result(task.owner, contained)
        return_ids = _result_ids(task, payloads)
        for index, (object_id, payload) in enumerate(zip(return_ids, payloads, strict=True)):
            if payload_segment(payload) is not None:
                self.kept[object_id] = task.owner
                self.objects.put(object_id, payload, contained[index] if contained else [],
                                 holder)
        self._out.append(ReturnResult(task.owner, spec.task_id, return_ids, payloads,
                                      contained, task.seconds))

    def _on_remote_finished(self, event: RemoteFinished) -> None:
        """A peer sent the results of a task this node gave it. Only the node the task is
        at may finish it, once: a late or duplicate result is dropped (at least once
        execution, exactly one result per task at its owner)."""
        node = event.node
        task = self.tasks.get(event.task_id)
        large = [oid for oid, payload in zip(event.object_ids, event.payloads, strict=True)
                 if payload_segment(payload) is not None]
        if (task is None or task.state is not STOLEN or task.node != node
                or list(_result_ids(task, event.payloads)) != list(event.object_ids)):
            if task is None or task.node != node:
                self._out.append(Warn(f"a peer sent the result of task {event.task_id.hex()} "
                                      f"that this node did not give it; dropped"))
            let_go = large + [oid for inside in event.contained or () for oid in inside]
            if let_go:  # what the peer keeps or holds for this node
                self._out.append(Release(node, tuple(let_go)))
            return
        spec, return_ids = task.spec, event.object_ids
        if event.seconds is not None:
            self.pool.record_duration(spec.callable_hash, event.seconds)
        contained = event.contained or [[] for _ in event.payloads]
        self._retire(task)
        task.node = None
        small = []
        for object_id, payload, inside in zip(return_ids, event.payloads, contained,
                                              strict=True):
            if payload_segment(payload) is None:
                small.append(object_id)
                self.loans.adopt(node, inside)
                self.objects.complete(object_id, payload, inside)
            else:  # the value stays at the peer until fetched (its entry waits for it)
                self.objects.entries[object_id].remote = True
                self._out.append(Fetch(object_id, node))
        if small:
            self._out.append(Completed(tuple(small)))
        if spec.kind == ACTOR_CREATE:
            self._remote_actor_created(spec, node, event.payloads[0])
        if large:
            result = RemoteResult(task, node, dict(zip(return_ids, contained, strict=True)),
                                  set(large))
            for object_id in large:
                self._remote_results[object_id] = result
        elif spec.kind != ACTOR_CREATE:  # a restart needs them
            self._forget_arguments(spec)
        self._dirty = True

    def _remote_result_fetched(self, object_id: bytes, payload: list) -> bool:
        """A large result a peer kept has been fetched (or not). True when it was one.
        When the copy could not be had, the task runs again (its lineage): the arguments
        were kept for that."""
        result = self._remote_results.pop(object_id, None)
        if result is None:
            return False
        self._out.append(Release(result.node, (object_id,)))
        result.pending.discard(object_id)
        entry = self.objects.entries.get(object_id)
        failed = payload[0] == p.SYSTEM_ERROR
        if entry is not None and not failed:
            self._out.append(Completed((object_id,)))
            inside = result.contained.get(object_id, [])
            self.loans.adopt(result.node, inside)
            self.objects.complete(object_id, payload, inside)
        elif entry is not None and not result.lineage:  # a lost item of a stream
            entry.remote = False
            self._out.append(Completed((object_id,)))
            self.objects.complete(object_id, payload, [])
        elif entry is not None:
            entry.remote = False
            if task_of(object_id) not in self.tasks:
                self._rerun(result.task)
        if not result.pending and result.lineage:
            self._forget_arguments(result.task.spec)
        return True

    def _rerun(self, done: TaskState) -> None:
        """Run a finished task again to rebuild a result whose only copy was lost."""
        spec = done.spec
        self._out.append(Warn(f"the only copy of a result of task {spec.name} was lost "
                              f"with the node that ran it; running the task again"))
        self._admit(TaskState(spec, attempts=done.attempts, submitter=done.submitter))

    def _on_released(self, event: Released) -> None:
        holder = self._peer_holders.get(event.node)
        if holder is not None:
            counts = event.counts or [1] * len(event.object_ids)
            for object_id, count in zip(event.object_ids, counts, strict=True):
                if self.kept.get(object_id) == event.node:
                    del self.kept[object_id]
                if self.loans.given_back(event.node, object_id, count):
                    self.objects.remove_holder(object_id, holder)

    def _call_remote_actor(self, task: TaskState) -> None:
        """A call of an actor this node does not have: queue it for the actor's node,
        which is looked up once."""
        actor_id = task.spec.actor_id
        remote = self.remote_actors.get(actor_id)
        if remote is None:
            remote = self.remote_actors[actor_id] = RemoteActor()
            if actor_id not in self.tasks:  # else: this node made it, a peer runs it
                self._out.append(LocateActor(actor_id))
        remote.calls.append(task.spec.task_id)
        self._pump_remote(remote)

    def _pump_remote(self, remote: RemoteActor) -> None:
        if remote.node is None:
            return
        specs, values = [], {}
        while (task := self._next_call(remote.calls)) is not None:
            self._transition(task, STOLEN)
            task.node = remote.node
            specs.append(task.spec)
            self._inline_values(task.spec, values)
        if specs:
            self._out.append(Forward(remote.node, tuple(specs), values))

    def _inline_values(self, spec: TaskSpec, values: dict[bytes, list]) -> None:
        """The small values a task's arguments name, to travel with it to a peer."""
        for object_id in spec.contained:
            payload = self.objects.payload(object_id)
            if payload is not None and payload_segment(payload) is None:
                values[object_id] = payload

    def _remote_actor_created(self, spec: TaskSpec, node: bytes, payload: list) -> None:
        """An actor this node made was created on `node`: its calls go there now (or
        fail, when its constructor failed)."""
        failed = payload[0] in (p.ERROR, p.SYSTEM_ERROR)
        remote = self.remote_actors.setdefault(spec.actor_id, RemoteActor())
        if not failed:
            remote.node, remote.creation = node, spec
            self._pump_remote(remote)
            return
        del self.remote_actors[spec.actor_id]
        self._fail_calls(remote.calls, f"the actor's constructor {spec.name} failed")

    def _fail_calls(self, calls: deque[bytes], why: str) -> None:
        """Calls queued here for an actor that will never run them."""
        for task_id in calls:
            task = self.tasks.get(task_id)
            if task is not None:
                self._fail(task, errors.ActorDiedError(f"cannot call {task.spec.name}: {why}"))

    def _on_remote_actor_killed(self, event: RemoteActorKilled) -> None:
        """px.kill went to the actor's node: calls queued here fail now; those already
        sent there fail there; a later call finds no node that has the actor."""
        remote = self.remote_actors.pop(event.actor_id, None)
        if remote is not None:
            self._fail_calls(remote.calls, "the actor is dead (it was killed with px.kill)")

    def _on_actor_located(self, event: ActorLocated) -> None:
        remote = self.remote_actors.get(event.actor_id)
        if remote is None:
            return
        if remote.search is not None:
            self._found_again(event.actor_id, remote, event.node)
            return
        if event.node is not None:
            remote.node = event.node
            self._pump_remote(remote)
            return
        del self.remote_actors[event.actor_id]
        self._fail_calls(remote.calls, "no node of the cluster has the actor")

    def _on_peer_loads(self, event: PeerLoads) -> None:
        self.placement.update(event.peers)
        if self._unrouted:
            self._reroute()

    def _on_peers_resources(self, event: PeersResources) -> None:
        self._peer_totals = event.totals
        if self._members_since is None:
            self._members_since = event.now
        self._membership_settled = (
            event.now - self._members_since >= self.config.infeasible_grace)
        for task_id in list(self.parked):
            task = self.tasks.get(task_id)
            if task is not None and task.state is WAITING:
                self._fail_if_unsatisfiable(task)
        if self._unrouted:
            self._reroute()

    def _fail_if_unsatisfiable(self, task: TaskState) -> None:
        """A parked task fails once the membership has settled and no live member (this
        node included) has the resources it asks for."""
        demand = task.spec.resources
        if not self._membership_settled or self.resources.feasible(demand) or any(
                covers(total, demand) for total in self._peer_totals):
            return
        self._fail(task, errors.ResourcesUnavailableError(
            f"task {task.spec.name} needs {demand}, which no live member of the cluster "
            f"has (this node: {self.total}; peers: {list(self._peer_totals)})"))

    def _actor_node_died(self, task: TaskState) -> None:
        """The peer running an actor this node made (still being created there) died:
        it is placed again (here, on the least loaded peer, or parked for one that fits)
        while `max_restarts` allows, else it is dead."""
        task.node = None
        task.attempts += 1
        restarts = task.spec.max_restarts
        if restarts < 0 or task.attempts <= restarts:
            self._transition(task, WAITING)
            self._create_actor(task)
            self._dirty = True
            return
        self._fail(task, errors.ActorDiedError(
            f"the node creating actor {task.spec.name} died"))

    def _on_tasks_returned(self, event: TasksReturned) -> None:
        for task_id in event.task_ids:
            task = self.tasks.get(task_id)
            if task is not None and task.state is STOLEN and task.node == event.node:
                task.node = None
                if task.spec.kind == ACTOR_CALL:  # the actor no longer runs there
                    self._fail(task, errors.ActorDiedError(
                        f"the node of the actor running {task.spec.name} no longer has "
                        f"the call (it declared this node failed, or restarted)"))
                    continue
                self.counts["stolen_out"] -= 1
                if _hard_affinity(task.spec):
                    self._unschedulable(task, f"node {event.node.hex()} gave it back (it is "
                                              f"leaving the cluster, or lost it)")
                elif task.spec.kind == ACTOR_CREATE:  # here after all, or to any peer
                    task.handed_back = True
                    self._transition(task, WAITING)
                    self._create_actor(task)
                else:
                    self._make_ready(task, front=True)

    def _retry_calls_sent_to(self, node: bytes) -> None:
        """Calls in flight to actors that lived on `node`, which just died: those their
        `max_task_retries` allows wait, first in line, for the actor to be placed again
        (by this node when it made the actor and `max_restarts` allows; else by its
        creator, which only it knows: they wait while the actor is looked for)."""
        retried: dict[bytes, list[bytes]] = {}
        for task in self.tasks.values():
            spec = task.spec
            if task.state is not STOLEN or task.node != node or spec.kind != ACTOR_CALL:
                continue
            remote = self.remote_actors.get(spec.actor_id)
            if remote is None or remote.node != node:
                continue
            restarts = -1 if remote.creation is None else remote.creation.max_restarts
            if (restarts < 0 or remote.attempts < restarts) and _retry_call(task):
                self._transition(task, WAITING)
                task.node = None
                retried.setdefault(spec.actor_id, []).append(spec.task_id)
        for actor_id, calls in retried.items():  # in the order they were sent
            self.remote_actors[actor_id].calls.extendleft(reversed(calls))

    def _on_draining(self, _event: Draining) -> None:
        """Leaving: tasks peers gave this node that have not started go back to their
        owners; the running ones finish (`drained` says when all have)."""
        self.draining = True
        back: dict[bytes, list[bytes]] = {}
        for task in list(self.tasks.values()):
            owner = task.owner
            if (owner is not None and not task.owner_gone and task.spec.kind == TASK
                    and task.state in (READY, WAITING)):
                self._retire(task)
                self._forget_arguments(task.spec)
                self.counts["stolen_in"] -= 1
                back.setdefault(owner, []).append(task.spec.task_id)
        for owner, task_ids in back.items():
            self._out.append(HandBack(owner, tuple(task_ids)))

    def drained(self) -> bool:
        """Nothing peers gave this node is left: their tasks ended or went back, and
        the large results kept for them have been fetched."""
        return not self.kept and not any(task.owner is not None and not task.owner_gone
                                         for task in self.tasks.values())

    def _on_peer_gone(self, event: PeerGone) -> None:
        """A peer died or left. Tasks it ran for this node run again here (charged an
        attempt); tasks it gave this node that have not started are dropped, running ones
        finish with nowhere to send their result; what it held here is let go."""
        node = event.node
        self.placement.forget(node)
        self._code_sent.pop(node, None)
        holder = self._peer_holders.pop(node, None)
        if holder is not None:
            self.objects.drop_holder_everywhere(holder)
        self.loans.borrower_gone(node)
        self.loans.lender_gone(node)
        self._retry_calls_sent_to(node)
        for actor_id, remote in list(self.remote_actors.items()):
            if remote.node != node:
                continue
            remote.node = None
            if remote.creation is None:  # another node made it, and may place it again
                self._search_for(actor_id, remote, node)
                continue
            remote.attempts += 1
            restarts = remote.creation.max_restarts
            if ((restarts < 0 or remote.attempts <= restarts)
                    and not _hard_affinity(remote.creation)):  # placed again, fresh state
                self._out.append(Warn(f"the node of actor {remote.creation.name} died; "
                                      f"restarting it (restart {remote.attempts})"))
                self._admit(TaskState(remote.creation, attempts=remote.attempts))
            else:  # its actor died with it
                del self.remote_actors[actor_id]
                self._fail_calls(remote.calls, "the actor's node died")
        for task in list(self.tasks.values()):
            if task.state is STOLEN and task.node == node and task.spec.kind == ACTOR_CALL:
                self._fail(task, errors.ActorDiedError(
                    f"the node of the actor running {task.spec.name} died"))
            elif task.state is STOLEN and task.node == node and task.spec.kind == ACTOR_CREATE:
                self._actor_node_died(task)
            elif task.state is STOLEN and task.node == node and _hard_affinity(task.spec):
                task.node = None
                self._unschedulable(task, f"node {node.hex()} {'left' if event.left else 'died'}"
                                          f" while it held the task")
            elif task.state is STOLEN and task.node == node:
                task.node = None
                if not event.left:
                    task.attempts += 1
                retries = task.spec.max_retries
                if retries < 0 or task.attempts <= retries:
                    self._make_ready(task, front=True)
                else:
                    self._fail(task, errors.NodeDiedError(
                        f"the node running task {task.spec.name} died and the task ran "
                        f"out of retries after {task.attempts} attempts"))
            elif task.owner == node:
                task.owner_gone = True
                if task.state in (READY, WAITING):
                    self._retire(task)
                    self._forget_arguments(task.spec)
        if holder is not None:  # actors it placed here have no owner left: they stop
            for actor in list(self.actors.actors.values()):
                if actor.creator == holder and actor.dead_reason is None:
                    self._stop_actor(actor, "its owner's node died",
                                     "the node that owns it died")
        self._dirty = True  # (a result being fetched from it fails, and its task reruns)

    # ---- actors other nodes made, looked for again after their node died ----
    def _search_for(self, actor_id: bytes, remote: RemoteActor, gone: bytes) -> None:
        """The node of an actor another node made died. Its creator places it again
        while its max_restarts allows, and its new node publishes that; this node cannot
        know whether it will, so it asks where the actor is (now, then every
        `actor_relocate_interval`) until a live node has it or `actor_relocate_timeout`
        has passed. Its calls wait meanwhile, with those made in between."""
        remote.search = Relocation(gone)
        self._relocating.add(actor_id)
        self._out.append(LocateActor(actor_id))

    def _searches(self) -> list[tuple[bytes, RemoteActor, Relocation]]:
        """The actors being looked for again, with their entries and searches."""
        found = []
        for actor_id in self._relocating:
            remote = self.remote_actors.get(actor_id)
            if remote is not None and remote.search is not None:
                found.append((actor_id, remote, remote.search))
        return found

    def _search_deadlines(self) -> list[float]:
        """When the searches want a tick: their next lookup or deadline."""
        return [-math.inf if search.deadline is None else min(search.deadline, search.ask_at)
                for _actor_id, _remote, search in self._searches()]

    def _search_on(self, now: float) -> None:
        """A tick: start the searches' clocks, fail the calls of those past their
        deadline, and ask again where one is due (and none of its lookups is out)."""
        searches = self._searches()
        self._relocating = {actor_id for actor_id, _remote, _search in searches}
        timeout, interval = self.config.actor_relocate_timeout, self.config.actor_relocate_interval
        for actor_id, remote, search in searches:
            if search.deadline is None:
                search.deadline, search.ask_at = now + timeout, now + interval
            elif now >= search.deadline:
                self._relocating.discard(actor_id)
                del self.remote_actors[actor_id]
                self._fail_calls(remote.calls, (
                    f"its node {search.gone.hex()[:12]} died and no live node had it again "
                    f"within {timeout:g} s (it was not restarted: its max_restarts ran out, "
                    f"it was killed, or the node that made it is gone too)"))
            elif now >= search.ask_at:
                search.ask_at = now + interval
                if not search.asking:
                    search.asking = True
                    self._out.append(LocateActor(actor_id))

    def _found_again(self, actor_id: bytes, remote: RemoteActor, node: bytes | None) -> None:
        """A lookup of the search came back: the waiting calls go to the node that has
        the actor now, or wait for the next lookup when none has it yet."""
        assert remote.search is not None
        remote.search.asking = False
        if node is None:
            return
        remote.search = None
        self._relocating.discard(actor_id)
        remote.node = node
        self._pump_remote(remote)

    # ---- scheduling strategies: work its owner sends where it says ----
    def _arguments_ready(self, task: TaskState) -> None:
        """A task's arguments are here: it queues to run here, unless its scheduling
        strategy sends it elsewhere (or keeps it waiting for its node)."""
        if task.owner is not None or task.spec.strategy == DEFAULT or not self._route(task):
            self._make_ready(task)

    def _awaited_args(self, spec: TaskSpec) -> tuple[bytes, ...]:
        """The objects that must have values before it may start: its top-level refs;
        work bound to another node waits for the refs inside its arguments too, since
        a grant carries only the values its owner has."""
        if spec.strategy and _hard_affinity(spec) and spec.affinity != self.node_id:
            return spec.contained
        return spec.deps

    def _route(self, task: TaskState) -> bool:
        """Send work with a scheduling strategy where it says: pushed to a peer (a grant
        nobody asked for, as actors are placed), or kept here for good (`pinned`). False
        when the DEFAULT rules apply after all: SPREAD alone or with no node that fits,
        soft affinity to a node that is not live or too small, or arguments a grant
        cannot carry. Hard affinity that cannot be honoured fails the work, or keeps it
        waiting for its node to be heard of or for its arguments."""
        spec = task.spec
        if spec.strategy == SPREAD:
            demand = spec.resources if spec.kind == TASK else _placement_demand(spec)
            node = self.placement.spread(self.node_id, self.total, demand) \
                if self.in_cluster else None
            if node is None:
                return False
        else:
            node = spec.affinity
            totals = self.total if node == self.node_id else self.placement.totals(node)
            if totals is None or not covers(totals, spec.resources):
                if spec.soft:
                    return False
                self._affinity_unmet(task, totals)
                return True
        if node == self.node_id:
            if spec.kind == TASK:
                task.pinned = True
                self._make_ready(task)
            else:
                self._place_actor_here(task)
            return True
        if not self._pushable(spec):
            if not _hard_affinity(spec):
                return False
            if task.missing:  # an actor's creation: sent once its arguments are here
                self._unrouted[spec.task_id] = None
            else:
                self._unschedulable(task, "its arguments are larger than a grant carries "
                                          "(pass large values as px.put refs)")
            return True
        self._push(task, node)
        return True

    def _affinity_unmet(self, task: TaskState, totals: dict[str, float] | None) -> None:
        """Hard affinity to a node that cannot have the work: it fails, unless that node
        has not been heard of while the membership fills in (`infeasible_grace`, as for a
        task no member fits); then it waits to hear of it (`_reroute`)."""
        node = task.spec.affinity
        if totals is not None:
            reason = f"node {node.hex()} has {totals}, not the {task.spec.resources} it needs"
        elif self.in_cluster and not (self._membership_settled
                                      or self.placement.was_live(node)):
            self._unrouted[task.spec.task_id] = None
            return
        else:
            reason = (f"node {node.hex()} is not a live member of the cluster"
                      if self.in_cluster else
                      f"node {node.hex()} is not this node, and this node is in no cluster")
        self._unschedulable(task, reason)

    def _reroute(self) -> None:
        """The membership changed: work waiting to hear of its node goes there now, or
        fails once the membership has settled without it."""
        for task_id in list(self._unrouted):
            task = self.tasks.get(task_id)
            if task_id not in self._unrouted or task.missing:
                continue  # failed meanwhile (an argument did), or routed when they arrive
            del self._unrouted[task_id]
            if task.spec.kind == TASK:
                self._arguments_ready(task)
            else:
                self._create_actor(task)

    def _unschedulable(self, task: TaskState, reason: str) -> None:
        """Hard node affinity that cannot be honoured: the work fails, and never runs
        elsewhere (an actor is dead, and the calls waiting for it fail)."""
        spec = task.spec
        why = f"{reason} (hard node affinity, soft=False: it runs nowhere else)"
        if spec.kind == TASK:
            self._fail(task, errors.TaskUnschedulableError(
                f"task {spec.name} cannot be scheduled: {why}"))
            return
        why = f"it cannot be scheduled: {why}"
        self._fail(task, errors.ActorDiedError(f"actor {spec.name}: {why}"))
        self._dead_on_arrival(spec, why)
        remote = self.remote_actors.pop(spec.actor_id, None)
        if remote is not None:
            self._fail_calls(remote.calls, f"the actor is dead ({why})")

    # ---- invariants ----
    def validate(self) -> None:
        """Check what must hold between any two batches; tests call it after every event.

        Resources are never negative or over the total and `available` is the total minus
        what tasks and actors hold; every task is in exactly one state and where that state
        says (the ready deque, one worker's queue, one worker's stack or actor's in-flight
        list, waiting for a named reason: arguments or code); every object a live task
        names is still here; an object without a value belongs to a task that will
        produce it."""
        self.resources.validate([t.held for t in self.tasks.values()]
                                + [a.holds for a in self.actors.actors.values()])
        self.objects.validate()
        self.loans.validate()
        for object_id in self.kept:
            assert self.objects.known(object_id), f"kept result {object_id.hex()} was freed"
        for task_id in self._busy_actors:
            assert task_id in self.parked, "an actor offered to peers is not parked"
        for task_id in self._unrouted:
            task = self.tasks.get(task_id)
            assert task is not None and task.state is WAITING and task.owner is None, (
                f"unrouted task {task_id.hex()} is {task and task.state}")
        self.actors.validate()
        places: dict[bytes, list[str]] = {}
        for worker in self.workers.values():
            for task_id in worker.stack:
                places.setdefault(task_id, []).append(f"stack of worker {worker.worker_id}")
            for task_id in worker.queued:
                places.setdefault(task_id, []).append(f"queue of worker {worker.worker_id}")
        for actor in self.actors.actors.values():
            for task_id in actor.in_flight:
                places.setdefault(task_id, []).append(f"in flight at {actor.worker}")
            for task_id in actor.calls:
                places.setdefault(task_id, []).append("actor calls")
        for actor_id, remote in self.remote_actors.items():
            for task_id in remote.calls:
                places.setdefault(task_id, []).append("actor calls")
            assert remote.search is None or (
                remote.node is None and remote.creation is None
                and actor_id in self._relocating), f"actor {actor_id.hex()} is searched wrongly"
        ready = set(self.ready)
        owned_ready = sum(1 for t in self.tasks.values()
                          if t.state is READY and t.owner is None and not t.pinned)
        assert self._owned_ready == owned_ready, (self._owned_ready, owned_ready)
        at_peers = sum(1 for t in self.tasks.values() if t.state is STOLEN)
        assert self._at_peers == at_peers, (self._at_peers, at_peers)
        requests = {id(r) for r in self.requests.values()}
        awaiting: dict[bytes, int] = {}  # the code and packages each task waits for
        for code_hash, waiting in self._code_waiting.items():
            assert code_hash not in self.pool.code, f"tasks wait for code {code_hash.hex()} held"
            self._count_waiting(waiting, awaiting)
        for package, (_holder, waiting) in self._package_waiting.items():
            assert package not in self.packages, f"tasks wait for package {package.hex()} held"
            self._count_waiting(waiting, awaiting)
        for task_id, task in self.tasks.items():
            self._validate_task(task_id, task, places.get(task_id, []), task_id in ready,
                                awaiting.get(task_id, 0))
            assert task.request is None or id(task.request) in requests, (
                f"{task.spec.name} waits for a request nobody will answer")
        for worker_id, _request_id in self.requests:
            assert worker_id in self.workers, f"a get of dead worker {worker_id} is pending"
        for object_id, entry in self.objects.entries.items():
            assert (entry.payload is not None or entry.remote
                    or task_of(object_id) in self.tasks), (
                f"object {object_id.hex()} has no value and no task or fetch to make one")

    def _count_waiting(self, waiting: list[TaskState], counts: dict[bytes, int]) -> None:
        for task in waiting:
            if self.tasks.get(task.spec.task_id) is task:
                counts[task.spec.task_id] = counts.get(task.spec.task_id, 0) + 1

    def _validate_task(self, task_id: bytes, task: TaskState, places: list[str],
                       in_ready: bool, awaits: int) -> None:
        spec, state = task.spec, task.state
        name = f"{spec.name} ({state.value})"
        assert spec.task_id == task_id and state is not DONE, name
        for object_id in spec.contained:
            assert self.objects.known(object_id), f"{name}: argument {object_id.hex()} freed"
        # an actor's restart makes its creation result pending again, under tasks that
        # already had it: more may be pending than a task waits for, never fewer
        pending = sum(1 for dep in self._awaited_args(spec) if self._pending(dep)) \
            + awaits
        assert task.missing <= pending, f"{name}: waits for {task.missing}, pending {pending}"
        assert state is WAITING or not task.missing, f"{name} waits for {task.missing}"
        if state is RUNNING:
            assert len(places) == 1 and places[0].startswith(("stack", "in flight")), (
                f"{name} is on {places}")
        elif state is QUEUED:
            assert places == [f"queue of worker {task.worker}"], f"{name} is on {places}"
        elif state is READY:
            assert in_ready and not places and task.worker is None, f"{name} is on {places}"
        elif state is STOLEN:
            assert not places and task.node is not None, f"{name} is on {places}"
        elif spec.kind == ACTOR_CALL:
            assert places == ["actor calls"], f"{name} is on {places}"
        else:
            assert not places, f"{name} is on {places}"
            assert (task.missing or spec.kind == ACTOR_CREATE or task_id in self._unrouted
                    or not self.resources.feasible(spec.resources)), (
                f"{name} waits for nothing")

    # ---- shutdown ----
    def _on_shut_down(self, _event: ShutDown) -> None:
        for worker_id in list(self.workers):
            self._out.append(StopWorker(worker_id))
        self.objects.clear()


def _hard_affinity(spec: TaskSpec | None) -> bool:
    """Node affinity with soft=False: the work runs on that node or nowhere."""
    return spec is not None and spec.strategy == NODE_AFFINITY and not spec.soft


def _result_ids(task: TaskState, payloads: list[list]) -> tuple[bytes, ...]:
    """Where a task's results go: its return ids; for a streaming task (whose values
    came as it yielded) the link its consumer reads next, when an error ends it."""
    spec = task.spec
    if spec.generator != STREAMING:
        return spec.return_ids
    return (stream_link(spec.task_id, task.streamed),) if payloads else ()


def _retry_call(task: TaskState) -> bool:
    """Charge an actor call an attempt for its actor's death: True while its
    max_task_retries (the call's `max_retries`, from the actor's handle) allows sending
    it again."""
    task.attempts += 1
    retries = task.spec.max_retries
    return retries < 0 or task.attempts <= retries


STREAM_MORE = [p.INLINE, pickle.dumps(True, protocol=5), []]
STREAM_END = [p.INLINE, pickle.dumps(False, protocol=5), []]
"""The values of a streaming task's links: another item follows, or none does."""


def work_message(spec: TaskSpec, code: bytes | None, deps: dict[bytes, list],
                 nested: bool, gpus: list[int]) -> p.Execute:
    """The message that hands a task, actor creation or actor call to a worker, with the
    GPU indices its holding took here (chosen by the node that runs it, not its owner)."""
    return p.Execute(spec.kind, spec.task_id, spec.callable_hash, code, spec.method, spec.args,
                     deps, list(spec.return_ids), spec.name, nested, spec.resources,
                     spec.max_concurrency, spec.generator, spec.namespace, gpus,
                     spec.job)


def values_message(request_id: int, body: dict[bytes, list] | list[bytes],
                   timed_out: bool) -> p.Values:
    """The answer to a worker's get (values by id) or wait (ids of ready objects)."""
    if isinstance(body, dict):
        return p.Values(request_id, body, [], timed_out)
    return p.Values(request_id, {}, body, timed_out)


def _placement_demand(spec: TaskSpec) -> dict[str, float]:
    """What must be free on a node of a cluster to place an actor there: what it holds
    for its life; an actor that asks for nothing needs one CPU free to be placed (Ray:
    1 CPU to place, 0 to run), so such actors go where a CPU is idle rather than pile up
    on a busy node."""
    if any(spec.resources.values()):
        return spec.resources
    return {**spec.resources, CPU: 1.0}
