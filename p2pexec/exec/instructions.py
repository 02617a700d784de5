"""What the scheduler tells its driver to do, one frozen class each."""

from __future__ import annotations

from dataclasses import dataclass

from p2pexec.exec.runtime_env import RuntimeEnv


@dataclass(frozen=True, slots=True)
class Send:
    worker: int
    message: list


@dataclass(frozen=True, slots=True)
class StartWorker:
    worker: int
    actor_id: bytes | None = None
    runtime_env: RuntimeEnv | None = None
    """The environment the worker runs work in, for its life."""


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


@dataclass(frozen=True, slots=True)
class Fetch:
    """A process here received a ref to an object another node made, or a peer ran a
    task whose large result it keeps: fetch a copy (the answer is a `Fetched` event).
    `holder`: a node known to have it (asked first), else the DHT says who has."""

    object_id: bytes
    holder: bytes | None = None


@dataclass(frozen=True, slots=True)
class Prefetch:
    """A borrow from `holder` just went out, and that node's last answer here was a large
    object: start fetching this one from it now, on a connection already kept to it, so
    that the borrow's round trip overlaps the transfer. A guess: the answer is a
    `Prefetched` event, with no copy if the guess was wrong (a small value, or none yet),
    and the borrow's answer decides then."""

    object_id: bytes
    holder: bytes


@dataclass(frozen=True, slots=True)
class Holding:
    """This node now holds (`held`) or no longer holds a value in shared memory: tell
    the cluster, so other nodes find a copy here."""

    object_id: bytes
    held: bool


@dataclass(frozen=True, slots=True)
class Spill:
    """Shared memory is over the node's cap: copy this object's segment to the spill dir
    (the answer is a `SpillEnded` event); readers then map the copy."""

    object_id: bytes
    segment: str


@dataclass(frozen=True, slots=True)
class DeleteSpilled:
    """Remove a spilled segment's file: its object was freed."""

    segment: str


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to a `StealRequested`: tasks now given to `thief`, the small values
    and code they need, and how many ready tasks are left here."""

    thief: bytes
    request_id: int
    specs: tuple
    values: dict[bytes, list]
    code: dict[bytes, bytes]
    queue_length: int


@dataclass(frozen=True, slots=True)
class ReturnResult:
    """Send a stolen task's results to its owner (large values stay here, held for the
    owner until it says `Released`)."""

    owner: bytes
    task_id: bytes
    object_ids: tuple[bytes, ...]
    payloads: list[list]
    contained: list[list[bytes]] | None
    seconds: float | None


@dataclass(frozen=True, slots=True)
class ReturnYielded:
    """Send a value a streaming task of `owner`'s yielded here, or its end, to the owner,
    which keeps the stream's links (a large value stays here, held for the owner until
    it says `Released`)."""

    owner: bytes
    task_id: bytes
    index: int
    payload: list | None
    contained: list[bytes]
    end: bool


@dataclass(frozen=True, slots=True)
class Release:
    """Tell `node` that this node no longer needs its copies of these objects: it has
    its own now (large results), or it let go of what it borrowed."""

    node: bytes
    object_ids: tuple[bytes, ...]
    counts: tuple[int, ...] = ()
    """For each object, how many times `node` lent it to this node (empty: once each);
    it holds the object for this node until as many have come back."""


@dataclass(frozen=True, slots=True)
class LocateActor:
    """A task here calls an actor another node made: find that node (the answer is an
    `ActorLocated` event)."""

    actor_id: bytes


@dataclass(frozen=True, slots=True)
class ActorHere:
    """An actor lives here now (`alive`) or no longer: tell the cluster, so that tasks on
    other nodes can call it."""

    actor_id: bytes
    alive: bool


@dataclass(frozen=True, slots=True)
class Forward:
    """Send calls of an actor that lives on `node` there, in order, with the small
    values their arguments name."""

    node: bytes
    specs: tuple
    values: dict[bytes, list]


@dataclass(frozen=True, slots=True)
class Borrow:
    """Processes here hold refs to these objects of `node`'s: ask it to keep them for
    this node and to send their values (the answer is a `BorrowAnswered` event)."""

    node: bytes
    object_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Lend:
    """Send `node`, which borrows them, these objects' values: small ones inline, the
    ids of large ones for it to fetch from this node."""

    node: bytes
    values: dict[bytes, list]
    large: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class HandBack:
    """Tell `owner` this node will not run these tasks of its after all: it is leaving,
    or it does not hold them when the owner asks (the owner queues them again,
    uncharged)."""

    owner: bytes
    task_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class AskHeld:
    """Ask peer `node` whether it still holds these tasks this node gave it (the ones
    it does not hold come back as `TasksReturned`)."""

    node: bytes
    task_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ActorNamed:
    """A named actor lives here now (`alive`) or no longer: publish (or withdraw) the
    name's record, so that `px.get_actor` finds it from any node and a second actor of
    that name anywhere is refused."""

    name: str
    actor_id: bytes
    alive: bool


@dataclass(frozen=True, slots=True)
class CodeHere:
    """This node holds the pickled function or class with this hash (once per hash for
    the node's life): tell the cluster, so that a node running a task of it for the
    first time can fetch it from here."""

    code_hash: bytes


@dataclass(frozen=True, slots=True)
class FetchCode:
    """Tasks here need code this node has never seen: fetch it from `holder` (the node
    that granted them) first, then from holders the DHT knows (the answer is a
    `CodeFetched` event)."""

    code_hash: bytes
    holder: bytes | None


@dataclass(frozen=True, slots=True)
class FetchPackage:
    """Tasks a peer gave need a runtime_env package this node lacks: fetch it from
    `holder` (the node that gave them, which holds it), check and unpack it (the answer
    is a `PackageReady` event)."""

    package: bytes
    holder: bytes


@dataclass(frozen=True, slots=True)
class StopRemoteActor:
    """The last handle of an actor this node made is gone and the actor lives on `node`:
    stop it there (Ray's rule, across nodes)."""

    node: bytes
    actor_id: bytes


@dataclass(frozen=True, slots=True)
class Interrupt:
    """A task cancelled while on `worker` (sent ahead or running): the worker skips it if
    it has not started, and interrupts it (`KeyboardInterrupt`, or cancels the asyncio
    task of an async actor's call) if it has."""

    worker: int
    task_id: bytes


@dataclass(frozen=True, slots=True)
class CancelRemote:
    """A cancelled task runs on `node` (stolen, or a call sent to an actor there): cancel
    it there too."""

    node: bytes
    task_id: bytes
    force: bool
    recursive: bool


Instruction = (Send | StartWorker | StopWorker | Completed | Unlink | Recycle | Warn | Fetch
               | Prefetch | Holding | Spill | DeleteSpilled | Grant | ReturnResult | ReturnYielded
               | Release | LocateActor | ActorHere | Forward | Borrow | Lend | HandBack | AskHeld
               | ActorNamed
               | CodeHere | FetchCode | StopRemoteActor | Interrupt | CancelRemote
               | FetchPackage)
