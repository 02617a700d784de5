"""Tasks between nodes: the wire messages of work stealing and the trio driver that
sends them.

A thief asks with a one-way `StealRequest`; the victim's scheduler decides
(`Scheduler._on_steal_requested`) and the victim answers with a one-way `StealGrant`
(possibly empty). One-way both ways, so a grant that arrives after the thief stopped
waiting still runs: no task can be marked given at the victim and dropped at the thief
while their connection stays up. Results go to the owner in `TaskResults` batches (one
write per burst), and an owner that has fetched a large result sends `ReleaseObjects`.
A streaming task's values go to its owner one `Yielded` each, on the same connection
as its result, so they arrive in order and before it.

Everything a peer sends is checked before the scheduler sees it: message types by the
codec, payload shapes here (values that arrive inline must be inline: a peer's segment
names mean nothing on this node), grants only for requests this node made, and a cap
on how fast one peer may ask for work. A violation is a `RemoteProtocolError`, which
drops that peer's connection with one log line.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from p2pexec.dht.driver import DhtDriver
from p2pexec.errors import (
    DhtLookupError,
    ObjectLostError,
    OwnerDiedError,
    P2PExecError,
    RemoteProtocolError,
    RuntimeEnvSetupError,
)
from p2pexec.exec import packages
from p2pexec.exec.events import (
    ActorKilled,
    ActorLocated,
    BorrowAnswered,
    BorrowRequested,
    CancelRequested,
    CodeFetched,
    HeldAsked,
    NameLost,
    PackageReady,
    PeerLoads,
    Released,
    RemoteActorKilled,
    RemoteFinished,
    RemoteYielded,
    StealRequested,
    TasksGranted,
    TasksReturned,
)
from p2pexec.exec.instructions import (
    ActorHere,
    ActorNamed,
    AskHeld,
    Borrow,
    CancelRemote,
    CodeHere,
    FetchCode,
    FetchPackage,
    Forward,
    Grant,
    HandBack,
    Lend,
    LocateActor,
    Release,
    ReturnResult,
    ReturnYielded,
    StopRemoteActor,
)
from p2pexec.exec.output import Output, OutputBuffer, OutputLines
from p2pexec.exec.packages import CHUNK_BYTES, PackageChunk, PackageRequest
from p2pexec.exec.protocol import Yielded
from p2pexec.exec.serialization import (
    callable_hash,
    check_payload,
    payload_segment,
    system_error_payload,
)
from p2pexec.exec.stealing import LOAD_FEED_INTERVAL, PLACEMENT, PeerLoad, Thief
from p2pexec.exec.task import ACTOR_CALL, ACTOR_CREATE, TASK, TaskSpec
from p2pexec.exec.transfer import find_publishers, find_records
from p2pexec.ids import NodeId
from p2pexec.net.codec import message
from p2pexec.net.rpc import RpcNode
from p2pexec.net.transport import Address, Peer

if TYPE_CHECKING:
    from p2pexec.exec.service import ExecService

log = logging.getLogger("p2pexec.mesh")

MeshInstruction = (Grant | ReturnResult | ReturnYielded | Release | LocateActor | ActorHere
                   | Forward | Borrow | Lend | HandBack | AskHeld | ActorNamed | CodeHere
                   | FetchCode | StopRemoteActor | CancelRemote | FetchPackage)


@message(111)
@dataclass(frozen=True, slots=True)
class StealRequest:
    """A thief with `cpus` CPUs to fill, these total `resources` and, of them, `free`
    not held by anything now (what an actor needs to start there) asks for work."""

    request_id: int
    cpus: float
    resources: dict[str, float]
    free: dict[str, float]


@message(117)
@dataclass(frozen=True, slots=True)
class StealGrant:
    """The victim's answer: tasks it gives, the small argument values and code they
    need, the thief's workers' import path additions, and its queue length after. With
    `request_id` `PLACEMENT` nobody asked: work its owner placed here (actor creations,
    and work whose scheduling strategy names this node)."""

    request_id: int
    tasks: list[TaskSpec]
    values: dict[bytes, Any]
    code: dict[bytes, bytes]
    paths: list[str]
    queue_length: int


@message(118)
@dataclass(frozen=True, slots=True)
class TaskResult:
    task_id: bytes
    object_ids: list[bytes]
    payloads: list[Any]
    contained: list[list[bytes]] | None
    seconds: float | None


@message(119)
@dataclass(frozen=True, slots=True)
class TaskResults:
    """Results of tasks the receiver gave the sender."""

    results: list[TaskResult]


@message(120)
@dataclass(frozen=True, slots=True)
class ReleaseObjects:
    """The sender no longer needs the receiver's copies of these objects: it has its
    own copies of these large results now, or it let go of what it borrowed (`counts`:
    how many times each was lent to it; empty: once each)."""

    object_ids: list[bytes]
    counts: list[int]


@message(121)
@dataclass(frozen=True, slots=True)
class ReturnTasks:
    """The sender will not run these tasks of the receiver's (a grant it did not ask
    for, or it is leaving): the receiver queues them again."""

    task_ids: list[bytes]


@message(122)
@dataclass(frozen=True, slots=True)
class StatsRequest:
    """What `p2pexec status` shows of a node: asked of every member when it runs."""


@message(123)
@dataclass(frozen=True, slots=True)
class NodeStats:
    """A node's execution figures: tasks queued, running and done (finished or failed),
    tasks taken from and given to peers, shared-memory bytes its objects fill, and how
    many objects it has spilled to disk."""

    queued: int
    running: int
    done: int
    stolen_in: int
    stolen_out: int
    store_bytes: int
    spilled: int


@message(124)
@dataclass(frozen=True, slots=True)
class ActorCalls:
    """Calls of an actor that lives on the receiver, made by tasks on the sender (which
    owns them and gets their results), in submission order."""

    tasks: list[TaskSpec]
    values: dict[bytes, Any]


@message(125)
@dataclass(frozen=True, slots=True)
class BorrowObjects:
    """Processes on the sender hold refs to these objects of the receiver's: keep them
    until the sender releases them (`ReleaseObjects`) and send their values
    (`LentObjects`) as soon as they have them."""

    object_ids: list[bytes]


@message(160)
@dataclass(frozen=True, slots=True)
class LentObjects:
    """Values of objects the receiver borrowed: small ones inline (errors among them),
    the ids of large ones for it to fetch from the sender."""

    values: dict[bytes, Any]
    large: list[bytes]


@message(161)
@dataclass(frozen=True, slots=True)
class HeldCheck:
    """Does the receiver still hold these tasks the sender gave it? It answers with a
    `ReturnTasks` of those it does not (and nothing when it holds them all)."""

    task_ids: list[bytes]


@message(162)
@dataclass(frozen=True, slots=True)
class CancelTask:
    """px.cancel of a task the receiver runs (the sender gave it, or it is a call to an
    actor that lives there), or owns (a driver on the sender held a ref to its result)."""

    task_id: bytes
    force: bool
    recursive: bool


@message(126)
@dataclass(frozen=True, slots=True)
class KillActor:
    """Stop an actor that lives on the receiver: `px.kill` on another node (no `name`;
    with `restart`, `no_restart=False`: its process is killed and it restarts as after
    a crash), or the sender's actor `winner` took `name` in a race with this one (the
    receiver checks the rule itself: the smaller actor id wins)."""

    actor_id: bytes
    name: str | None = None
    winner: bytes | None = None
    restart: bool = False


@message(127)
@dataclass(frozen=True, slots=True)
class CodeRequest:
    """A node given a task of code it never saw asks a holder for the pickled bytes."""

    code_hash: bytes


@message(103)
@dataclass(frozen=True, slots=True)
class CodeReply:
    """The pickled code, or None when the node does not hold it (or it would not fit
    in a frame)."""

    pickled: bytes | None


MESH_MESSAGES = (StealRequest, StealGrant, TaskResults, ReleaseObjects, ReturnTasks,
                 ActorCalls, BorrowObjects, LentObjects, KillActor, HeldCheck, CancelTask,
                 Yielded, Output)
MESH_CODES = (range(111, 112), range(117, 127), range(160, 164), range(170, 171))
"""Type codes a connection may open with to carry mesh messages (over the node's RPC)."""

STEAL_REQUESTS_PER_SECOND = 200.0
"""How fast one peer may ask this node for work: an honest thief has one request out at
a time and waits at least a round trip, so even on loopback it stays well under this."""
STEAL_REQUEST_BURST = 10.0
"""Requests a peer may send at once before that rate applies."""
ACTOR_ID_SIZE = 16
"""Actor ids are task ids: 12 random bytes and a counter (`refs.IdGenerator`)."""
CODE_REQUEST_TIMEOUT = 5.0
"""Seconds one holder has to send a pickled function: a frame, even a large one."""
CODE_REPLY_OVERHEAD = 64
"""Bytes of a `CodeReply` frame besides the pickled code (type code, length headers)."""
PACKAGE_REQUEST_TIMEOUT = 10.0
"""Seconds one node has to send a `PackageChunk` (4 MiB)."""


SEND_ERRORS = (OSError, TimeoutError, P2PExecError, trio.BrokenResourceError,
               trio.ClosedResourceError)
"""What sending to a peer may raise when the peer or the connection is gone."""

LEND_RETRIES = 5
LEND_RETRY_SECONDS = 0.5
"""Answers to borrows lost with a broken connection go again after 0.5, 1, 2, 4 and 8 s
(15.5 s in all: longer than failure detection takes to declare a dead borrower)."""


class Mesh:
    """Steals work for an idle node and serves its peers' steals and results (see the
    module doc). `peers()` is the gossiped view of the other members; `address_of(node)`
    where a live member listens."""

    def __init__(self, service: ExecService, rpc: RpcNode, dht: DhtDriver,
                 peers: Callable[[], list[PeerLoad]],
                 address_of: Callable[[NodeId], Address | None],
                 rng: random.Random) -> None:
        self.service = service
        self.rpc = rpc
        self.dht = dht
        self.peers = peers
        self.address_of = address_of
        self.config = service.config.steal
        self.thief = Thief(self.config, rng)
        self._request_ids = itertools.count(1)
        self._outstanding: dict[int, tuple[NodeId, trio.Event, list[int]]] = {}
        self._outboxes: dict[NodeId, list[Any]] = {}
        self._output: dict[NodeId, OutputBuffer] = {}
        """Per home node, output of its jobs that ran here, bounded: it sits in that
        node's outbox until the next write turns it into an `Output` message."""
        self._nursery: trio.Nursery | None = None
        self._capacity = trio.Event()
        self._buckets: dict[NodeId, tuple[float, float]] = {}
        """Per asking peer: (tokens left, when last counted) of its request allowance."""
        self._warned: dict[NodeId, float] = {}
        self._rng = rng
        self.packages_fetched = 0
        """runtime_env packages this node fetched from peers (one per package, ever)."""
        self._names_in, self._names_out = trio.open_memory_channel[ActorNamed](math.inf)
        """Name records to publish or withdraw, in the order the scheduler decided them
        (a name withdrawn and taken again on this node must end published)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._name_loop)
            nursery.start_soon(self._feed_loads)
            task_status.started()
            try:
                await self._steal_loop()
            finally:  # stopping: what is decided from now on is not sent
                self._nursery = None

    # ---- the thief ----
    def poke(self) -> None:
        """Something finished here: an idle thief may look for work again."""
        self._capacity.set()

    async def _steal_loop(self) -> None:
        core = self.service.core
        while True:
            cpus = core.idle_cpus()
            if cpus < 1:
                self._capacity = trio.Event()
                await self._capacity.wait()
                continue
            now = trio.current_time()
            victim = self.thief.choose(self.peers(), now)
            if victim is None:
                self.thief.nothing_to_steal()
                await self._pause()
                continue
            tasks = await self._steal_from(victim, cpus)
            self.thief.granted(victim, tasks, trio.current_time())
            if not tasks:
                await self._pause()

    async def _feed_loads(self) -> None:
        """New actors go to the least loaded node: the scheduler hears the peers'
        gossiped loads whenever a sample changes."""
        seen: tuple | None = None
        while True:
            peers = tuple(self.peers())
            versions = tuple((peer.node, peer.version) for peer in peers)
            if versions != seen:
                seen = versions
                self.service.stimulus(PeerLoads(peers))
            await trio.sleep(LOAD_FEED_INTERVAL)

    async def _pause(self) -> None:
        """Wait out the back-off; local work finishing does not end it (it makes no
        peer's queue longer)."""
        await trio.sleep(self.thief.backoff)

    async def _steal_from(self, victim: PeerLoad, cpus: float) -> int:
        """Ask `victim` for work; how many tasks came (0 after `request_timeout`: a grant
        arriving later still runs)."""
        request_id = next(self._request_ids)
        done = trio.Event()
        count: list[int] = []
        self._outstanding[request_id] = (victim.node, done, count)
        core = self.service.core
        request = StealRequest(request_id, float(cpus), dict(core.total), core.free())
        try:
            await self.rpc.notify(victim.address, request, node=victim.node)
        except SEND_ERRORS as exc:
            log.debug("steal request to %s failed: %s", victim.node.short, exc)
            self._outstanding.pop(request_id, None)
            return 0
        with trio.move_on_after(self.config.request_timeout):
            await done.wait()
        if not done.is_set():
            # keep the id: a late grant is still honoured, once
            return 0
        return count[0]

    # ---- what peers send ----
    def handle_message(self, peer: Peer, msg: Any) -> None:
        """One-way messages from peers, inline in the connection's reader."""
        node = peer.node_id
        if type(msg) is StealRequest:
            self._serve_steal(node, msg)
        elif type(msg) is StealGrant:
            self._take_grant(node, msg)
        elif type(msg) is TaskResults:
            for result in msg.results:
                self._check_result(result)
            self.service.stimulus(*(RemoteFinished(node.raw, r.task_id, r.object_ids,
                                                   r.payloads, r.contained, r.seconds)
                                    for r in msg.results))
        elif type(msg) is ReleaseObjects:
            if msg.counts and (len(msg.counts) != len(msg.object_ids)
                               or min(msg.counts) < 1):
                raise RemoteProtocolError("a release with counts unlike its objects")
            self.service.stimulus(Released(node.raw, msg.object_ids, msg.counts))
        elif type(msg) is ReturnTasks:
            self.service.stimulus(TasksReturned(node.raw, msg.task_ids))
        elif type(msg) is HeldCheck:
            self.service.stimulus(HeldAsked(node.raw, msg.task_ids))
        elif type(msg) is ActorCalls:
            _check_tasks(msg.tasks, msg.values, ACTOR_CALL)
            self.service.stimulus(TasksGranted(node.raw, msg.tasks, msg.values, {}))
        elif type(msg) is BorrowObjects:
            self.service.stimulus(BorrowRequested(node.raw, msg.object_ids))
        elif type(msg) is LentObjects:
            for payload in msg.values.values():
                _check_inline(payload)
            self.service.stimulus(BorrowAnswered(node.raw, msg.values, msg.large))
        elif type(msg) is KillActor:
            self._take_kill(node, msg)
        elif type(msg) is CancelTask:
            self.service.stimulus(CancelRequested(msg.task_id, msg.force, msg.recursive))
        elif type(msg) is Yielded:
            if msg.payload is not None:
                check_payload(msg.payload)
            self.service.stimulus(RemoteYielded(node.raw, msg.task_id, msg.index, msg.payload,
                                                msg.contained, msg.end))
        elif type(msg) is Output:
            self.service.output_limits.check(msg)
            self.service.route_output(msg.records, from_peer=True)
        else:
            raise RemoteProtocolError(f"a {type(msg).__name__} is not a mesh message")

    def _take_kill(self, node: NodeId, msg: KillActor) -> None:
        """A peer stops an actor of this node (px.kill, or a name race it won)."""
        if not self.service.core.actor_alive(msg.actor_id):
            log.info("node %s asked to stop actor %s, which does not live here; ignored",
                     node.short, msg.actor_id.hex()[:12])
        elif msg.name is not None and msg.winner is not None:
            self.service.stimulus(NameLost(msg.actor_id, msg.name, msg.winner))
        elif msg.restart:
            log.info("actor %s killed (to restart) at the request of node %s",
                     msg.actor_id.hex()[:12], node.short)
            self.service.crash_actor(msg.actor_id)
        else:
            log.info("actor %s killed at the request of node %s", msg.actor_id.hex()[:12],
                     node.short)
            self.service.stimulus(ActorKilled(msg.actor_id))

    def serve_code(self, peer: Peer, request: Any) -> CodeReply:
        """A peer's `CodeRequest`: the pickled code if this node holds it and it fits in
        a reply frame (the codec's limits: a larger one could not be sent anyway)."""
        pickled = self.service.core.pool.code.get(request.code_hash)
        limits = self.rpc.codec.limits
        if pickled is not None and (len(pickled) + CODE_REPLY_OVERHEAD
                                    > min(limits.max_frame_size, limits.max_bin_len)):
            log.warning("code %s (%d bytes) is too large to send to %s", request.code_hash.hex(),
                        len(pickled), peer.node_id.short)
            pickled = None
        return CodeReply(pickled)

    def serve_package(self, peer: Peer, request: Any) -> PackageChunk:
        """A peer's `PackageRequest`: a chunk of a runtime_env package this node holds
        (stored whole: its hash checked, unpacked), from the offset asked."""
        package, offset = request.package, request.offset
        if package not in self.service.core.packages:
            return PackageChunk(None, b"")
        store = self.service.packages
        size = store.size(package)
        if not 0 <= offset < size:
            raise RemoteProtocolError(f"asked for package {package.hex()[:12]} from byte "
                                      f"{offset} of {size}")
        return PackageChunk(size, store.read(package, offset, CHUNK_BYTES))

    def _serve_steal(self, node: NodeId, msg: StealRequest) -> None:
        """A thief this node's membership does not show alive gets nothing: this node
        could never learn of its failure, and tasks it took would be waited for for ever
        (a restarted node asks before the gossip of its new life arrives). It asks
        another peer when its request times out."""
        if self.address_of(node) is None:
            log.debug("steal request from %s, not a live member here: ignored", node.short)
            return
        if not self._allowed(node):
            return
        if msg.cpus < 0 or any(v < 0 for v in (*msg.resources.values(), *msg.free.values())):
            raise RemoteProtocolError("a steal request with negative resources")
        if msg.request_id == PLACEMENT:  # its grant would read as a placement there
            log.warning("node %s sent a steal request numbered %d, which only placements "
                        "use; ignored", node.short, PLACEMENT)
            return
        self.service.stimulus(StealRequested(node.raw, msg.request_id, msg.cpus,
                                             msg.resources, msg.free))

    def _allowed(self, node: NodeId) -> bool:
        """A token bucket per peer; a peer over it is refused (one log line per 10 s)."""
        now = trio.current_time()
        tokens, last = self._buckets.get(node, (STEAL_REQUEST_BURST, now))
        tokens = min(STEAL_REQUEST_BURST, tokens + (now - last) * STEAL_REQUESTS_PER_SECOND)
        if tokens < 1:
            self._buckets[node] = (tokens, now)
            if now - self._warned.get(node, -10.0) >= 10.0:
                self._warned[node] = now
                log.warning("node %s asks for work faster than %g times a second; its "
                            "requests are refused", node.short, STEAL_REQUESTS_PER_SECOND)
            return False
        self._buckets[node] = (tokens - 1, now)
        return True

    def _take_grant(self, node: NodeId, msg: StealGrant) -> None:
        if msg.request_id == PLACEMENT:  # work its owner chose this node for
            _check_tasks(msg.tasks, msg.values, TASK, ACTOR_CREATE)
            self.service.learn_paths(msg.paths)
            self.service.stimulus(TasksGranted(node.raw, msg.tasks, msg.values, msg.code,
                                               placed=True))
            return
        waiting = self._outstanding.pop(msg.request_id, None)
        if waiting is None or waiting[0] != node:
            if msg.tasks:  # hand them back, so that they are not lost at their owner
                self._send(node.raw, ReturnTasks([spec.task_id for spec in msg.tasks]))
            log.warning("node %s sent a grant for steal request %d, which this node did "
                        "not send it; refused", node.short, msg.request_id)
            return
        _check_tasks(msg.tasks, msg.values, TASK, ACTOR_CREATE)
        if msg.tasks:
            self.service.learn_paths(msg.paths)
            self.service.stimulus(TasksGranted(node.raw, msg.tasks, msg.values, msg.code))
        _node, done, count = waiting
        count.append(len(msg.tasks))
        done.set()

    @staticmethod
    def _check_result(result: TaskResult) -> None:
        if len(result.payloads) != len(result.object_ids):
            raise RemoteProtocolError("a task result with a payload count unlike its ids")
        if result.contained and len(result.contained) != len(result.payloads):
            raise RemoteProtocolError("a task result whose contained refs do not match")
        for payload in result.payloads:
            check_payload(payload)

    def local_stats(self, _peer: Peer | None = None, _request: Any = None) -> NodeStats:
        """This node's figures (also the answer to a peer's `StatsRequest`)."""
        return node_stats(self.service)

    # ---- what this node sends ----
    def apply(self, instruction: MeshInstruction) -> None:
        """Do what the scheduler decided peers must hear (or the DHT must say)."""
        kind = type(instruction)
        if kind is ActorNamed:
            self._names_in.send_nowait(instruction)
            return
        if kind in (LocateActor, ActorHere, CodeHere, FetchCode):
            if self._nursery is not None:
                self._nursery.start_soon(self._dht_tasks[kind], self, instruction)
            return
        if kind is FetchPackage:
            if self._nursery is not None:
                self._nursery.start_soon(self._fetch_package, instruction)
            return
        if kind is Forward:
            self._send(instruction.node, ActorCalls(list(instruction.specs),
                                                    instruction.values))
        elif kind is StopRemoteActor:
            self._send(instruction.node, KillActor(instruction.actor_id))
        elif kind is CancelRemote:
            self._send(instruction.node, CancelTask(instruction.task_id, instruction.force,
                                                    instruction.recursive))
        elif kind is HandBack:
            self._send(instruction.owner, ReturnTasks(list(instruction.task_ids)))
        elif kind is AskHeld:
            self._send(instruction.node, HeldCheck(list(instruction.task_ids)))
        elif kind is Borrow:
            last = self._last_queued(instruction.node, BorrowObjects)
            if last is not None:  # one message per burst
                last.object_ids.extend(instruction.object_ids)
            else:
                self._send(instruction.node, BorrowObjects(list(instruction.object_ids)))
        elif kind is Lend:
            last = self._last_queued(instruction.node, LentObjects)
            if last is not None:
                last.values.update(instruction.values)
                last.large.extend(instruction.large)
            else:
                self._send(instruction.node, LentObjects(dict(instruction.values),
                                                         list(instruction.large)))
        elif kind is Grant:
            self._send(instruction.thief, StealGrant(
                instruction.request_id, list(instruction.specs), instruction.values,
                instruction.code, self.service.import_paths(), instruction.queue_length))
        elif type(instruction) is ReturnYielded:
            self._send(instruction.owner, Yielded(
                instruction.task_id, instruction.index, instruction.payload,
                list(instruction.contained), instruction.end))
        elif type(instruction) is ReturnResult:
            result = TaskResult(instruction.task_id, list(instruction.object_ids),
                                instruction.payloads, instruction.contained,
                                instruction.seconds)
            last = self._last_queued(instruction.owner, TaskResults)
            if last is not None:
                last.results.append(result)  # one message per burst of results
            else:
                self._send(instruction.owner, TaskResults([result]))
        else:
            self._send(instruction.node, ReleaseObjects(list(instruction.object_ids),
                                                        list(instruction.counts)))

    def send_output(self, node_raw: bytes, record: OutputLines) -> None:
        """Lines a task of `node_raw`'s job printed here, marked with this node's name;
        batched per burst and bounded (`_flush` makes the message)."""
        node = NodeId(node_raw)
        buffer = self._output.get(node)
        if buffer is None:
            buffer = self._output[node] = OutputBuffer(self.service.output_limits)
            self._send(node_raw, buffer)
        buffer.add([record], node=self.service.node_name)

    def _last_queued(self, node_raw: bytes, kind: type) -> Any:
        """The message last queued for `node_raw` if it is a `kind` (to add to it)."""
        outbox = self._outboxes.get(NodeId(node_raw))
        return outbox[-1] if outbox and type(outbox[-1]) is kind else None

    def _send(self, node_raw: bytes, msg: Any) -> None:
        node = NodeId(node_raw)
        outbox = self._outboxes.get(node)
        if outbox is not None:
            outbox.append(msg)
            return
        self._outboxes[node] = [msg]
        if self._nursery is not None:
            self._nursery.start_soon(self._flush, node)

    async def _flush(self, node: NodeId) -> None:
        """Send what is queued for `node` in one write per turn, until none is left."""
        try:
            while self._outboxes.get(node):
                await trio.lowlevel.checkpoint()  # let the burst that queued these finish
                messages = self._outboxes[node]
                self._outboxes[node] = []
                if node in self._output:  # later lines start a new batch
                    messages = [Output(self._output.pop(node).take())
                                if type(msg) is OutputBuffer else msg for msg in messages]
                address = self.address_of(node)
                if address is None:
                    log.info("dropped %d messages for %s: not a live member",
                             len(messages), node.short)
                    self._unanswered(node, messages, OwnerDiedError(
                        f"its owner, node {node.short}, is not a live member of the "
                        f"cluster"))
                    continue
                try:
                    await self.rpc.notify_many(address, messages, node=node)
                except SEND_ERRORS as exc:
                    log.info("dropped %d messages for %s: %s", len(messages), node.short,
                             exc or type(exc).__name__)
                    self._unanswered(node, messages, ObjectLostError(
                        f"its owner, node {node.short}, could not be reached: "
                        f"{exc or type(exc).__name__}"))
        finally:
            self._outboxes.pop(node, None)
            self._output.pop(node, None)

    def _unanswered(self, node: NodeId, dropped: list[Any], error: P2PExecError) -> None:
        """Borrows that could not be sent will get no answer: give the waiters `error`
        (a borrow must never hang). Tasks and actors a grant could not take there queue
        here again (their owner is this node: else they would wait on it for ever)."""
        failed = {object_id: system_error_payload(error)
                  for msg in dropped if type(msg) is BorrowObjects
                  for object_id in msg.object_ids}
        if failed:
            self.service.stimulus(BorrowAnswered(node.raw, failed, []))
        given = [spec.task_id for msg in dropped if type(msg) is StealGrant
                 for spec in msg.tasks]
        if given:
            self.service.stimulus(TasksReturned(node.raw, given))
        lent = [msg for msg in dropped if type(msg) is LentObjects]
        if lent and self._nursery is not None:
            self._nursery.start_soon(self._lend_again, node, lent)

    async def _lend_again(self, node: NodeId, lent: list[LentObjects]) -> None:
        """Answers to borrows that a broken connection lost go again while the borrower is
        a live member (else its gets would wait for its owner to leave): a few tries,
        further apart each time. A copy that did arrive after all is ignored there."""
        for attempt in range(LEND_RETRIES):
            await trio.sleep(LEND_RETRY_SECONDS * 2**attempt)
            address = self.address_of(node)
            if address is None:
                return
            try:
                await self.rpc.notify_many(address, lent, node=node)
                return
            except SEND_ERRORS as exc:
                log.info("answers to %s's borrows failed again: %s", node.short,
                         exc or type(exc).__name__)
        log.warning("gave up sending answers to %d borrows of node %s", sum(
            len(msg.values) + len(msg.large) for msg in lent), node.short)

    async def _locate(self, instruction: LocateActor) -> None:
        self.service.stimulus(ActorLocated(instruction.actor_id,
                                           await self._actor_home(instruction.actor_id)))

    async def _actor_home(self, actor_id: bytes) -> bytes | None:
        """Which node has the actor: the first live member that published its record
        (None: none). A dead node's record outlives it until every node holding it hears
        of the death, and the dead node cannot withdraw it, so membership decides."""
        try:
            found = await find_publishers(self.dht, actor_key(actor_id),
                                          self.rpc.local.node_id)
        except DhtLookupError as exc:
            log.info("actor %s is on no node: %s", actor_id.hex()[:12], exc)
            return None
        live = {peer.node for peer in self.peers()}
        return next((node.raw for node in found if node in live), None)

    async def _announce(self, instruction: ActorHere) -> None:
        key = actor_key(instruction.actor_id)
        try:
            if instruction.alive:
                await self.dht.publish(key, b"actor")
            else:
                await self.dht.withdraw(key)
        except trio.ClosedResourceError:
            pass  # the node is stopping

    def idle(self) -> bool:
        """Everything queued for peers has been sent (or dropped)."""
        return not self._outboxes

    async def _publish_code(self, instruction: CodeHere) -> None:
        """This node holds the code for its life: one record per hash, never withdrawn."""
        with contextlib.suppress(trio.ClosedResourceError):  # the node is stopping
            await self.dht.publish(code_key(instruction.code_hash), b"code")

    async def _fetch_code(self, instruction: FetchCode) -> None:
        """Get code this node never saw: from the node that granted the task first, then
        from the holders the DHT knows (in random order); bytes that do not hash to the
        code hash are refused. The answer is one `CodeFetched`."""
        code_hash, me = instruction.code_hash, self.rpc.local.node_id
        failures: list[str] = []
        tried: set[NodeId] = set()
        first = [NodeId(instruction.holder)] if instruction.holder is not None else []
        for phase in (first, None):
            if phase is None:
                try:
                    phase = await find_publishers(self.dht, code_key(code_hash), me)
                except DhtLookupError as exc:
                    failures.append(f"no holder in the DHT ({exc})")
                    break
                self._rng.shuffle(phase)
            for node in phase:
                if node in tried:
                    continue
                tried.add(node)
                pickled = await self._ask_code(node, code_hash, failures)
                if pickled is not None:
                    self.service.stimulus(CodeFetched(code_hash, pickled))
                    return
        self.service.stimulus(CodeFetched(code_hash, None, "; ".join(failures)))

    async def _ask_code(self, node: NodeId, code_hash: bytes, failures: list[str]
                        ) -> bytes | None:
        """One holder's copy of the code, checked against its hash; None (and the reason
        in `failures`) if it has none, cannot be reached or sends other bytes."""
        address = self.address_of(node)
        if address is None:
            failures.append(f"{node.short} is not a live member")
            return None
        try:
            reply = await self.rpc.call(address, CodeRequest(code_hash), node=node,
                                        timeout=CODE_REQUEST_TIMEOUT)
        except SEND_ERRORS as exc:
            failures.append(f"{node.short}: {exc or type(exc).__name__}")
            return None
        if type(reply) is not CodeReply or reply.pickled is None:
            failures.append(f"{node.short} does not have it")
            return None
        if callable_hash(reply.pickled) != code_hash:
            log.warning("node %s sent code that does not match hash %s; refused", node.short,
                        code_hash.hex())
            failures.append(f"{node.short} sent bytes of another hash")
            return None
        return reply.pickled

    async def _fetch_package(self, instruction: FetchPackage) -> None:
        """Get a runtime_env package from the node that gave work needing it, chunk by
        chunk into a file; the store checks its hash and limits and unpacks it (never
        trusting a peer's bytes). The answer is one `PackageReady`, with the reason when
        it failed."""
        package, node = instruction.package, NodeId(instruction.holder)
        store = self.service.packages
        part = store.part_path(package)
        error = ""
        try:
            size = await self._receive_package(node, package, part)
            await trio.to_thread.run_sync(store.install, package, part)
            self.packages_fetched += 1
            log.info("fetched runtime_env package %s (%d bytes) from node %s",
                     package.hex()[:12], size, node.short)
        except SEND_ERRORS as exc:
            error = (f"package {package.hex()[:12]} could not be fetched from node "
                     f"{node.short}: {exc or type(exc).__name__}")
            log.warning("%s", error)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
        self.service.stimulus(PackageReady(package, instruction.holder, error))

    async def _receive_package(self, node: NodeId, package: bytes, part: str) -> int:
        """Write the package's bytes from `node` into file `part`; its size. A peer that
        announces more than `MAX_PACKAGE_BYTES` or sends chunks unlike what it announced
        is refused."""
        address = self.address_of(node)
        if address is None:
            raise RuntimeEnvSetupError(f"node {node.short} is not a live member")
        offset, size = 0, None
        with open(part, "wb") as file:
            while size is None or offset < size:
                reply = await self.rpc.call(address, PackageRequest(package, offset),
                                            node=node, timeout=PACKAGE_REQUEST_TIMEOUT)
                if type(reply) is not PackageChunk:
                    raise RemoteProtocolError(f"answered a package request with "
                                              f"{type(reply).__name__}")
                if reply.size is None:
                    raise RuntimeEnvSetupError("it does not hold the package")
                if size is None:
                    size = reply.size
                    if size > packages.MAX_PACKAGE_BYTES:
                        raise RuntimeEnvSetupError(
                            f"it announced {size} bytes, over the "
                            f"{packages.MAX_PACKAGE_BYTES}-byte limit on a package")
                if reply.size != size or not reply.data or offset + len(reply.data) > size:
                    raise RemoteProtocolError("sent a package chunk unlike what it announced")
                await trio.to_thread.run_sync(file.write, reply.data)
                offset += len(reply.data)
        return size

    async def _name_loop(self) -> None:
        """Publish and withdraw name records one at a time, in order; after each publish
        the name is checked for a race (in its own task)."""
        async for instruction in self._names_out:
            key = name_key(instruction.name)
            try:
                if not instruction.alive:
                    await self.dht.withdraw(key)
                    continue
                await self.dht.publish(key, instruction.actor_id)
            except trio.ClosedResourceError:
                return  # the node is stopping
            self._nursery.start_soon(self._check_name, instruction)

    async def _check_name(self, instruction: ActorNamed) -> None:
        """Two nodes may create an actor of one name within a DHT round trip: once its
        record is stored, each looks the name up again. The smaller actor id keeps the
        name: a larger one here stops; a larger one elsewhere is told (it may not have
        seen this record yet: the later publisher always sees the earlier one, so at
        least one side of every race sees the other)."""
        name, mine = instruction.name, instruction.actor_id
        try:
            records = await self.dht.find_value(name_key(name))
        except DhtLookupError:
            return
        me = self.rpc.local.node_id
        rivals = [(r.value, r.publisher) for r in records
                  if r.publisher != me and len(r.value) == ACTOR_ID_SIZE and r.value != mine]
        for actor_id, node in rivals:
            if actor_id > mine:
                self._send(node.raw, KillActor(actor_id, name, mine))
        smaller = [actor_id for actor_id, _node in rivals if actor_id < mine]
        if smaller:
            self.service.stimulus(NameLost(mine, name, min(smaller)))

    async def find_named(self, name: str) -> bytes | None:
        """The id of the live actor named `name` anywhere in the cluster (the race
        winner, should two records exist); None if no node has one. A name is looked
        for a few times (`find_records`), since a creation may be a moment old."""
        try:
            records = await find_records(self.dht, name_key(name))
        except DhtLookupError:
            return None
        ids = [r.value for r in records if len(r.value) == ACTOR_ID_SIZE]
        return min(ids) if ids else None

    async def name_taken(self, name: str) -> bool:
        """Some node published a record for `name` (one lookup, no retries: this is on
        the path of every named creation)."""
        try:
            return bool(await self.dht.find_value(name_key(name)))
        except DhtLookupError:
            return False

    async def kill_remote(self, actor_id: bytes, restart: bool = False) -> bool:
        """px.kill of an actor that lives on another node: the kill goes there (where
        its calls fail), calls queued here fail now, unless it is to `restart` (then
        they wait for it). False if no node has it."""
        node = self.service.core.actor_node(actor_id) or await self._actor_home(actor_id)
        if node is None:
            return False
        self._send(node, KillActor(actor_id, restart=restart))
        if not restart:
            self.service.stimulus(RemoteActorKilled(actor_id))
        return True

    _dht_tasks = {LocateActor: _locate, ActorHere: _announce, CodeHere: _publish_code,
                  FetchCode: _fetch_code}
    """What runs (as a task of the mesh) for each instruction that waits on the DHT."""

    def forget(self, node: NodeId) -> None:
        """A peer died or left: no request of ours to it will be answered."""
        self.thief.forget(node)
        for request_id, (victim, done, count) in list(self._outstanding.items()):
            if victim == node:
                del self._outstanding[request_id]
                count.append(0)
                done.set()


def actor_key(actor_id: bytes) -> bytes:
    """The DHT key under which the node that has an actor says so."""
    return hashlib.sha256(b"p2pexec actor\0" + actor_id).digest()


def name_key(name: str) -> bytes:
    """The DHT key under which the node that has the actor named `name` publishes its id."""
    return hashlib.sha256(b"p2pexec actor name\0" + name.encode()).digest()


def code_key(code_hash: bytes) -> bytes:
    """The DHT key under which the nodes that hold a pickled function or class say so."""
    return hashlib.sha256(b"p2pexec code\0" + code_hash).digest()


def _check_tasks(tasks: list[TaskSpec], values: dict[bytes, Any], *kinds: int) -> None:
    """Specs a peer sends must be of the kinds that message carries, with inline
    arguments and values."""
    for spec in tasks:
        if spec.kind not in kinds:
            raise RemoteProtocolError(f"a peer sent a task of kind {spec.kind} where only "
                                      f"kinds {kinds} may come")
        _check_inline(spec.args)
    for payload in values.values():
        _check_inline(payload)


def _check_inline(payload: Any) -> None:
    """A value a peer sends inline must be inline: its segment names are its own."""
    check_payload(payload)
    if payload_segment(payload) is not None:
        raise RemoteProtocolError("a peer sent a shared-memory payload where a value "
                                  "must travel inline")


def node_stats(service: ExecService) -> NodeStats:
    """The figures of the node `service` runs."""
    core = service.core
    counts = core.counts
    return NodeStats(core.queue_length(), sum(len(w.stack) for w in core.workers.values()),
                     counts["done"], counts["stolen_in"], counts["stolen_out"],
                     core.objects.memory_bytes,
                     sum(1 for entry in core.objects.entries.values() if entry.spilled))
