"""Each stepper node's scheduler and stealing policy, on the stepper's clock.

What `exec/service.py` and `exec/mesh.py` do around the sans-IO `Scheduler` in a node,
done here for thousands of nodes in one thread: workers are simulated (ready at once,
each task finishing after its simulated duration), an idle node asks a peer its gossip
shows loaded (`stealing.Thief`) with a one-way `StealRequested`, the victim's `Grant`
arrives as `TasksGranted`, results go back as `RemoteFinished` and releases as
`Released`, membership failures are `PeerGone`, and each node gossips its load. Every
message between nodes crosses the stepper's links on a reliable connection: a link
delay, a stall across a partition until it heals (no datagram loss), and lost only when
the receiving process is (a node that is down receives nothing). Only plain tasks:
actors, borrowing and object transfers need whole nodes (`SimCluster`).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pexec.errors import LocalUsageError
from p2pexec.exec import protocol as p
from p2pexec.exec.config import ExecConfig
from p2pexec.exec.events import (
    CodeRegistered,
    HeldAsked,
    PeerGone,
    Released,
    RemoteFinished,
    Started,
    StealRequested,
    Submitted,
    TaskFinished,
    TasksGranted,
    TasksReturned,
    Tick,
    WorkerReady,
)
from p2pexec.exec.instructions import (
    AskHeld,
    CodeHere,
    Completed,
    Grant,
    HandBack,
    Release,
    ReturnResult,
    Send,
    StartWorker,
    StopWorker,
    Warn,
)
from p2pexec.exec.mesh import code_key
from p2pexec.exec.refs import return_id
from p2pexec.exec.scheduler import DRIVER, Scheduler
from p2pexec.exec.stealing import PeerLoad, Thief
from p2pexec.exec.task import TASK, TaskSpec
from p2pexec.gossip.core import LIVE, EventKind, MemberEvent
from p2pexec.ids import NodeId
from p2pexec.testing.stepper import ClusterStepper

CODE = b"simulated task".ljust(16, b".")
"""The one function every simulated task calls."""
VALUE = [p.INLINE, b"done", []]
"""What every simulated task returns (the value does not matter; arriving once does)."""
PEERS_SEEN = 16
"""Of the nodes that published a queue, how many a thief looks at per attempt (it picks
the more loaded of two among them): all of them would cost O(n) per attempt once
thousands of thieves hold batches."""
LOADED_MEMORY = 5.0
"""Seconds a node that published a queue stays among the peers thieves look up after
its queue emptied: longer than its "empty" sample takes to reach every table."""
STALL_RETRY = 0.5
"""Seconds between two looks whether a stalled connection's partition has healed."""
_IGNORED = (Warn, StopWorker)


@dataclass
class _NodeTasks:
    core: Scheduler
    thief: Thief
    life: int
    stealing: bool = False
    """A steal attempt is scheduled or waits for its grant."""
    asked: dict[int, PeerLoad] = field(default_factory=dict)
    """Steal requests waiting for a grant, by request id."""
    tick_at: float | None = None
    """When the scheduler's next `Tick` is set to come (its held checks)."""
    busy_until: dict[int, float] = field(default_factory=dict)
    """Per worker, when the last task sent to it will have finished: a worker runs
    what it is sent one after another, as a real one does."""


class TaskLayer:
    """Schedulers on the nodes of `cluster`; see the module docstring."""

    def __init__(self, cluster: ClusterStepper, *, cpus: int = 2,
                 duration: Callable[[bytes], float] = lambda task_id: 0.1,
                 config: ExecConfig | None = None) -> None:
        self.cluster = cluster
        self.loop = cluster.loop
        self.config = config or ExecConfig(num_cpus=cpus)
        self.duration = duration
        self.nodes: dict[int, _NodeTasks] = {}
        self.lives: Counter[int] = Counter()
        self.completions: Counter[bytes] = Counter()
        """Result id -> times its owner completed it (exactly once is right)."""
        self.ids = itertools.count(1)
        self.requests = itertools.count(1)
        self.messages = 0
        self.loaded: dict[int, float] = {}
        """Nodes that published a queue lately, and when they last did."""
        cluster.watchers.append(self._membership)
        cluster.started.append(self.start)
        cluster.stopped.append(self.stop)
        for i in cluster.up_nodes():
            self.start(i)
        self._publish_loads()

    # ---- nodes -------------------------------------------------------------------------

    def start(self, i: int) -> None:
        """Node i's execution starts (with the node, or again after a restart)."""
        self.lives[i] += 1
        core = Scheduler(self.config, in_cluster=True, node_id=self._raw(i))
        self.nodes[i] = _NodeTasks(core, Thief(self.config.steal, random.Random(
            self.loop.rng.getrandbits(64))), self.lives[i])
        self._apply(i, core.handle(CodeRegistered(CODE, b"simulated"), Started()))
        self._steal_soon(i, 0.0)

    def stop(self, i: int) -> None:
        """Node i crashed or left: its scheduler is gone with everything it held."""
        self.nodes.pop(i, None)

    def submit(self, i: int, tasks: int) -> list[bytes]:
        """Node i's driver submits `tasks` tasks; their result ids."""
        node = self.nodes[i]
        results = []
        events = []
        for _ in range(tasks):
            task_id = (next(self.ids)).to_bytes(16, "big")
            result = return_id(task_id, 1)
            events.append(Submitted(TaskSpec(task_id, TASK, CODE, None, [p.INLINE, b"", []],
                                             (), (), (result,), "simulated", {"CPU": 1.0}),
                                    DRIVER))
            results.append(result)
        self._apply(i, node.core.handle(*events))
        return results

    # ---- what the scheduler decided ---------------------------------------------------

    def _apply(self, i: int, instructions: list[Any]) -> None:
        node = self.nodes.get(i)
        if node is None:
            return
        for ins in instructions:
            kind = type(ins)
            if kind is StartWorker:
                self.loop.call_at(self.loop.now, self._event, i, node.life,
                                  WorkerReady(ins.worker))
            elif kind is Send:
                if type(ins.message) is p.Execute:
                    work = ins.message
                    seconds = self.duration(work.task_id)
                    end = max(self.loop.now, node.busy_until.get(ins.worker, 0.0)) + seconds
                    node.busy_until[ins.worker] = end
                    self.loop.call_at(end, self._event, i, node.life,
                                      TaskFinished(ins.worker, work.task_id,
                                                   [VALUE] * len(work.return_ids), None,
                                                   seconds))
            elif kind is Completed:
                for object_id in ins.object_ids:
                    self.completions[object_id] += 1
            elif kind is Grant:
                self._send(i, self._index(ins.thief), (ins.request_id, TasksGranted(
                    self._raw(i), list(ins.specs), ins.values, ins.code)))
            elif kind is ReturnResult:
                self._send(i, self._index(ins.owner), RemoteFinished(
                    self._raw(i), ins.task_id, list(ins.object_ids), ins.payloads,
                    ins.contained, ins.seconds))
            elif kind is Release:
                self._send(i, self._index(ins.node), Released(
                    self._raw(i), list(ins.object_ids), list(ins.counts)))
            elif kind is CodeHere:
                # as the mesh does: a DHT record saying this node holds the code
                self.cluster.dht.publish(i, code_key(ins.code_hash), b"code")
            elif kind is HandBack:
                self._send(i, self._index(ins.owner), TasksReturned(
                    self._raw(i), list(ins.task_ids)))
            elif kind is AskHeld:
                self._send(i, self._index(ins.node), HeldAsked(self._raw(i),
                                                               list(ins.task_ids)))
            elif kind not in _IGNORED:
                raise LocalUsageError(f"the task stepper runs plain tasks only; "
                                      f"{kind.__name__} needs whole nodes (SimCluster)")
        deadline = node.core.next_deadline()
        if deadline is not None and (node.tick_at is None or deadline < node.tick_at):
            node.tick_at = max(deadline, self.loop.now)
            self.loop.call_at(node.tick_at, self._tick, i, node.life, node.tick_at)

    def _tick(self, i: int, life: int, at: float) -> None:
        """The scheduler's timer (only the latest one set counts)."""
        node = self.nodes.get(i)
        if node is None or node.life != life or node.tick_at != at:
            return
        node.tick_at = None
        self._apply(i, node.core.handle(Tick(self.loop.now)))

    def _event(self, i: int, life: int, event: Any) -> None:
        node = self.nodes.get(i)
        if node is None or node.life != life:
            return  # for a process that is gone
        self._apply(i, node.core.handle(event))
        if not node.stealing and node.core.idle_cpus() >= 1:
            self._steal_soon(i, node.thief.backoff)

    def _send(self, source: int, target: int, event: Any) -> None:
        """A message between nodes, on their connection: it arrives after a link delay,
        or, across a partition, once it heals (the connection stalls, as TCP does); it
        is lost only with the receiving process."""
        if self.cluster.is_up(target):
            self.messages += 1
            self.loop.call_later(self._arrive, source, target, self.lives[target], event)

    def _arrive(self, source: int, target: int, life: int, event: Any) -> None:
        if not self.loop.reachable(source, target):
            self.loop.call_at(self.loop.now + STALL_RETRY, self._arrive, source, target, life,
                              event)
            return
        self.loop.note(source, target, event)
        if type(event) is StealRequested and not self._member(target, source):
            return  # as the mesh: no work for a thief this node's membership lacks
        if type(event) is tuple:  # a grant, with the id of the request it answers
            request_id, event = event
            node = self.nodes.get(target)
            if node is not None and node.life == life:
                victim = node.asked.pop(request_id, None)
                if victim is not None:
                    node.thief.granted(victim, len(event.specs), self.loop.now)
                    node.stealing = False
        self._event(target, life, event)

    # ---- stealing ----------------------------------------------------------------------

    def _steal_soon(self, i: int, delay: float) -> None:
        node = self.nodes[i]
        node.stealing = True
        self.loop.call_at(self.loop.now + delay, self._steal, i, node.life)

    def _steal(self, i: int, life: int) -> None:
        node = self.nodes.get(i)
        if node is None or node.life != life:
            return
        node.stealing = False
        cpus = node.core.idle_cpus()
        if cpus < 1:
            return  # a task finishing here calls again
        now = self.loop.now
        victim = node.thief.choose(self._peers(i), now)
        if victim is None:
            node.thief.nothing_to_steal()
            self._steal_soon(i, node.thief.backoff)
            return
        request_id = next(self.requests)
        node.asked[request_id] = victim
        node.stealing = True
        self._send(i, self.cluster.index[victim.node], StealRequested(
            self._raw(i), request_id, float(cpus), dict(node.core.total), node.core.free()))
        self.loop.call_at(now + self.config.steal.request_timeout, self._unanswered, i, life,
                          request_id)

    def _unanswered(self, i: int, life: int, request_id: int) -> None:
        """No grant within request_timeout: give up on that victim (a late grant still
        runs)."""
        node = self.nodes.get(i)
        if node is None or node.life != life:
            return
        victim = node.asked.pop(request_id, None)
        if victim is not None:
            node.thief.granted(victim, 0, self.loop.now)
            self._steal_soon(i, node.thief.backoff)

    def _peers(self, i: int) -> list[PeerLoad]:
        """Peers node i's gossip shows with queued work (the only ones a thief
        considers), as its own table has them: a sample of the nodes that published a
        queue, not a walk over thousands of members."""
        core = self.cluster.gossip.nodes[i].core
        peers = []
        loaded = list(self.loaded)
        for j in self.loop.rng.sample(loaded, min(PEERS_SEEN, len(loaded))):
            if j == i:
                continue
            node_id = self.cluster.node_id(j)
            member = core.member(node_id)
            if member is None or member.state not in LIVE or member.load.queue_length <= 0:
                continue
            peers.append(PeerLoad(node_id, member.address, member.load.queue_length,
                                  member.load.version, member.resources,
                                  member.load.running_tasks))
        return peers

    # ---- membership and load -----------------------------------------------------------

    def _membership(self, observer: int, event: MemberEvent) -> None:
        node = self.nodes.get(observer)
        if node is None or event.kind not in (EventKind.FAILED, EventKind.LEFT):
            return
        self._apply(observer, node.core.handle(PeerGone(event.member.node_id.raw,
                                                        left=event.kind == EventKind.LEFT)))

    def _publish_loads(self) -> None:
        """What a node gossips of its load, every load_update_interval."""
        now = self.loop.now
        for i, node in self.nodes.items():
            if self.cluster.is_up(i):
                queued = node.core.queue_length()
                self.cluster.gossip.set_load(i, queued, int(node.core.cpus_in_use()))
                if queued:
                    self.loaded[i] = now
        # a node stays a candidate until every table has heard its queue emptied
        self.loaded = {i: at for i, at in self.loaded.items()
                       if now - at < LOADED_MEMORY and self.cluster.is_up(i)}
        interval = self.cluster.gossip.cfg.load_update_interval
        self.loop.call_at(self.loop.now + interval, self._publish_loads)

    def _member(self, i: int, j: int) -> bool:
        """Whether node i's membership shows node j alive (or suspect)."""
        member = self.cluster.gossip.nodes[i].core.member(self.cluster.node_id(j))
        return member is not None and member.state in LIVE

    def _raw(self, i: int) -> bytes:
        return self.cluster.node_id(i).raw

    def _index(self, raw: bytes) -> int:
        return self.cluster.index[NodeId(raw)]
