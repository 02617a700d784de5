"""The stimuli the scheduler reacts to, one frozen class each.

The driver (`exec.service`) turns what happens outside (a frame from a worker, a process
exit, a driver call, the clock) into these and hands a batch to `Scheduler.handle`, which
answers with instructions. Being plain values, a batch can be logged, replayed in a test
or generated at random (tests/exec/test_scheduler_stateful.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pexec.exec.stealing import PeerLoad
from p2pexec.exec.task import TaskSpec


@dataclass(frozen=True, slots=True)
class Started:
    """The node came up: start the initial worker pool."""


@dataclass(frozen=True, slots=True)
class ShutDown:
    """The node stops: stop every worker and release every segment."""


@dataclass(frozen=True, slots=True)
class CodeRegistered:
    """A submitter made a function or class known once, so tasks name it by hash."""

    code_hash: bytes
    pickled: bytes


@dataclass(frozen=True, slots=True)
class Submitted:
    """A task, actor creation or actor call arrived from `submitter` (driver 0 or a worker)."""

    spec: TaskSpec
    submitter: int


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """A started worker process said READY."""

    worker: int


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """A worker reported a task's results (values or error payloads), one per return id."""

    worker: int
    task_id: bytes
    payloads: list[list]
    contained: list[list[bytes]] | None = None
    """Per return value, the ids of ObjectRefs inside it."""
    seconds: float | None = None
    """How long it ran: feeds the prefetch depth of its function."""
    args_unmapped: bool = False
    """The worker no longer maps the argument segment, so it may be recycled."""


@dataclass(frozen=True, slots=True)
class WorkerDied:
    """A worker's process is gone; `reason` says how (exit code or signal)."""

    worker: int
    reason: str = "it exited"


@dataclass(frozen=True, slots=True)
class GetRequested:
    """A task blocked in get (num_returns -1) or wait (num_returns k) on a worker."""

    worker: int
    request_id: int
    object_ids: list[bytes]
    num_returns: int
    timeout: float | None
    given_back: list[bytes]
    """Tasks that were queued at the worker: it will not run them while it waits."""
    now: float


@dataclass(frozen=True, slots=True)
class GaveBack:
    """A blocked worker returned tasks that reached it after it blocked."""

    worker: int
    task_ids: list[bytes]


@dataclass(frozen=True, slots=True)
class Put:
    """`holder` stored a value under `object_id` (px.put)."""

    object_id: bytes
    payload: list
    contained: list[bytes]
    holder: int


@dataclass(frozen=True, slots=True)
class RefsChanged:
    """`holder` took (+1) or dropped (-1) its last reference to these objects; `owners`
    names the owner of taken refs it received from elsewhere."""

    holder: int
    deltas: dict[bytes, int]
    owners: dict[bytes, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Tick:
    """The clock moved: answer gets whose timeout expired."""

    now: float


@dataclass(frozen=True, slots=True)
class ActorKilled:
    """px.kill (or the actor's own exit_actor): stop the actor for good; its pending
    calls fail, saying `reason`."""

    actor_id: bytes
    reason: str = "it was killed with px.kill"


@dataclass(frozen=True, slots=True)
class ClientLeft:
    """An attached driver's connection ended (exit, kill or px.shutdown): what it held,
    queued or created goes (see `Scheduler._on_client_left`)."""

    client: int


@dataclass(frozen=True, slots=True)
class Fetched:
    """A `Fetch` ended: the copy's payload (in this node's shared memory), or the error
    payload saying why no copy could be had."""

    object_id: bytes
    payload: list


@dataclass(frozen=True, slots=True)
class Prefetched:
    """A `Prefetch` from `holder` ended: the copy's payload, or None when it got none (no
    connection kept to the holder, no large copy there, or the transfer failed)."""

    object_id: bytes
    holder: bytes
    payload: list | None


@dataclass(frozen=True, slots=True)
class SpillEnded:
    """A `Spill` finished: `ok` when the copy is complete on disk."""

    object_id: bytes
    segment: str
    ok: bool


@dataclass(frozen=True, slots=True)
class StealRequested:
    """Peer `thief` (raw node id) asks for work: it has `cpus` CPUs with nothing to run,
    these total `resources` and, of them, `free` unheld now (None: not said). The
    answer is one `Grant` (possibly empty)."""

    thief: bytes
    request_id: int
    cpus: float
    resources: dict[str, float]
    free: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class TasksGranted:
    """Peer `owner` gave this node tasks it owns: their specs, the small values their
    arguments name (larger ones are fetched) and the code they call."""

    owner: bytes
    specs: list[TaskSpec]
    values: dict[bytes, list]
    code: dict[bytes, bytes]
    placed: bool = False
    """Work the owner placed here unasked (actors, least loaded; work its scheduling
    strategy sends here): an actor is handed back if it no longer fits."""


@dataclass(frozen=True, slots=True)
class RemoteFinished:
    """Peer `node` ran a task this node gave it: its results, one per return id
    (`object_ids`), as `TaskFinished` has them. Large ones stay at `node` until fetched."""

    node: bytes
    task_id: bytes
    object_ids: list[bytes]
    payloads: list[list]
    contained: list[list[bytes]] | None = None
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Released:
    """Peer `node` has its own copies of these results now, or let go of what it
    borrowed: this node's holds for it may go (a lent one after `counts` lends, as in
    `Release`)."""

    node: bytes
    object_ids: list[bytes]
    counts: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TasksReturned:
    """Peer `node` will not run these tasks this node gave it (a grant it did not ask
    for, or no longer waited for): they queue here again, no attempt charged."""

    node: bytes
    task_ids: list[bytes]


@dataclass(frozen=True, slots=True)
class HeldAsked:
    """Peer `node`'s held check: does this node still hold these tasks it gave it?"""

    node: bytes
    task_ids: list[bytes]


@dataclass(frozen=True, slots=True)
class ActorLocated:
    """The answer to a `LocateActor`: the node the actor lives on (None: none has it)."""

    actor_id: bytes
    node: bytes | None


@dataclass(frozen=True, slots=True)
class PeerLoads:
    """The live peers' gossiped loads changed (where new actors are placed)."""

    peers: tuple[PeerLoad, ...]


@dataclass(frozen=True, slots=True)
class PeersResources:
    """Membership changed: the total resources of every live peer, as gossip has them."""

    totals: tuple[dict[str, float], ...]
    now: float


@dataclass(frozen=True, slots=True)
class BorrowRequested:
    """Processes on peer `node` hold refs to these objects of this node's: keep them for
    it, and send it their values once they have them."""

    node: bytes
    object_ids: list[bytes]


@dataclass(frozen=True, slots=True)
class BorrowAnswered:
    """Values of objects this node borrowed from `node`: payloads sent inline (errors
    among them), and the ids of large ones to fetch from it. When the lender cannot be
    reached the mesh answers for it, with errors."""

    node: bytes
    values: dict[bytes, list]
    large: list[bytes]


@dataclass(frozen=True, slots=True)
class PeerGone:
    """Membership declared peer `node` dead or gone: what it ran for this node runs
    again here, and what this node ran or kept for it is dropped. `left`: it left
    gracefully, so the tasks it was running are not charged an attempt."""

    node: bytes
    left: bool = False


@dataclass(frozen=True, slots=True)
class Draining:
    """This node is leaving its cluster gracefully: it takes no more work from peers
    and hands back what they gave it that has not started."""


@dataclass(frozen=True, slots=True)
class NameLost:
    """Two nodes created an actor named `name` at once and the actor `winner` keeps it
    (the smaller actor id wins): the actor `actor_id` here stops."""

    actor_id: bytes
    name: str
    winner: bytes


@dataclass(frozen=True, slots=True)
class RemoteActorKilled:
    """px.kill of an actor on another node was sent there: the calls still queued here
    for it fail (those already sent fail there)."""

    actor_id: bytes


@dataclass(frozen=True, slots=True)
class CodeFetched:
    """A `FetchCode` ended: the pickled code (its hash checked), or None and why no
    holder could give it."""

    code_hash: bytes
    pickled: bytes | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class StreamYielded:
    """A streaming task on `worker` yielded a value, or ended (`protocol.Yielded`)."""

    worker: int
    task_id: bytes
    index: int
    payload: Any
    contained: list[bytes]
    end: bool


@dataclass(frozen=True, slots=True)
class RemoteYielded:
    """A streaming task this node gave peer `node` (stolen, or a call of an actor
    there) yielded its `index`-th value there, or ended (`StreamYielded` as that peer
    saw it). A large value stays at `node` until fetched."""

    node: bytes
    task_id: bytes
    index: int
    payload: Any
    contained: list[bytes]
    end: bool


@dataclass(frozen=True, slots=True)
class PackageReady:
    """A package of a runtime_env is stored and unpacked here (a local client stored it,
    or a `FetchPackage` from `holder` ended), or, with `error`, could not be had."""

    package: bytes
    holder: bytes | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """px.cancel of a task here (submitted here, or given by a peer), from a local client
    or from the peer that gave it: `force` kills a running task's process, `recursive`
    cancels the tasks it submitted too."""

    task_id: bytes
    force: bool
    recursive: bool
    owner: bytes = b""
    """The node that owns the task's results, as the ref says: a task unknown here is
    cancelled there ("": nowhere else)."""


Event = (Started | ShutDown | CodeRegistered | Submitted | WorkerReady | TaskFinished
         | WorkerDied | GetRequested | GaveBack | Put | RefsChanged | Tick | ActorKilled
         | ClientLeft | Fetched | Prefetched | SpillEnded | StealRequested | TasksGranted
         | RemoteFinished | Released | TasksReturned | HeldAsked | PeersResources | PeerLoads
         | PeerGone | ActorLocated | BorrowRequested | BorrowAnswered | Draining | NameLost
         | RemoteActorKilled | CodeFetched | CancelRequested | StreamYielded | RemoteYielded
         | PackageReady)
