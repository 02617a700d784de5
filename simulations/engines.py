"""The two engines a scenario runs on, behind one interface.

- `StepperEngine`: `p2pexec.testing.stepper.ClusterStepper`, the sans-IO gossip and DHT
  cores of every node on a trio-free discrete-event loop, and (`task_stepper.TaskLayer`,
  from the first submission) each node's scheduler with the stealing policy. Bit-exact
  replay from the seed; the engine for 1,000 to 10,000 nodes. Plain tasks only.
- `NodeEngine`: `p2pexec.testing.SimCluster`, the production `Node` (gossip and DHT
  drivers, scheduler, mesh, object transfer) of every node on `SimNetwork` under trio's
  `MockClock`. Everything a node does, up to a few hundred nodes; trio's scheduling
  order within one instant is not replayed exactly.

Both start from a converged cluster (every node joined and seeing all others) and then
count simulated time from 0. Operations on a node that is already in the asked state
(crashing a down node, joining an up one) do nothing: a shrunk schedule may ask for them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection
from typing import Any

import trio

from p2pexec.errors import DhtLookupError
from p2pexec.gossip.core import MemberEvent
from p2pexec.gossip.messages import life_of
from p2pexec.ids import NodeId
from p2pexec.testing.cluster import SimCluster
from p2pexec.testing.simnet import LinkSpec, SimNetwork
from p2pexec.testing.stepper import ClusterStepper
from p2pexec.testing.task_stepper import TaskLayer
from simulations.record import Recorder
from simulations.scenario import Params, Scenario

CONVERGE_LIMIT = 600.0
"""Simulated seconds a fresh cluster of whole nodes may take to converge (by joining)
before the run gives up."""

LOOKUP_WAIT = 10.0
"""Simulated seconds a lookup may take before it counts as failed (twice the default
whole-lookup deadline)."""


def record_key(key: int) -> bytes:
    return hashlib.sha256(f"simulated record {key}".encode()).digest()


def record_value(key: int) -> bytes:
    return f"value {key}".encode()


def triple(x: int) -> int:
    return 3 * x


def task_seconds(task_id: bytes) -> float:
    """A task's simulated run time, 50-500 ms, fixed by its id."""
    return random.Random(task_id).uniform(0.05, 0.5)


class _Engine:
    """What both engines keep: the run's parameters, the recorder, a seeded RNG for
    workload choices (apart from the network's), when simulated time 0 was, and who
    published which record."""

    def __init__(self, params: Params, recorder: Recorder) -> None:
        self.params = params
        self.rec = recorder
        self.rng = random.Random(params.seed + 1)
        self.t0 = 0.0
        self.publishers: dict[int, int] = {}


class StepperEngine(_Engine):
    """Gossip and DHT cores on the discrete-event stepper."""

    name = "stepper"
    exact_replay = True

    def __init__(self, params: Params, scenario: Scenario, recorder: Recorder) -> None:
        super().__init__(params, recorder)
        self.sim = ClusterStepper(params.nodes, gossip=scenario.gossip_config(params),
                                  dht=scenario.dht_config(params), seed=params.seed,
                                  latency=params.latency, jitter=params.latency)
        self._pending: list[tuple[int, Any, int, int, float]] = []
        self.tasks: TaskLayer | None = None
        """Schedulers on every node, from the first submission on."""

    # ---- life ---------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        sim = self.sim
        sim.converge()
        sim.run_for(1.0)  # the DHTs' first lookups
        self.t0 = sim.now
        sim.loop.loss = self.params.loss
        sim.watchers.append(self._member_changed)

    def _member_changed(self, observer: int, event: MemberEvent) -> None:
        index = self.sim.index
        subject = index[event.member.node_id]
        origin = None if event.origin is None else index.get(event.origin)
        old_life = life_of(event.member.incarnation) < self.sim.gossip.nodes[subject].life
        self.rec.member(observer, subject, event.kind, self.sim.now - self.t0, origin,
                        old_life)

    async def advance_to(self, t: float) -> None:
        self.sim.run_until(self.t0 + t)
        self._collect_lookups(t)

    async def finish(self, t: float) -> None:
        self._collect_lookups(t, final=True)
        if self.tasks is not None:
            for object_id, count in self.tasks.completions.items():
                if count and object_id in self.rec.tasks_submitted:
                    self.rec.task_results[object_id] = "done"

    @property
    def messages(self) -> int:
        return self.sim.loop.deliveries

    @property
    def digest(self) -> str:
        return self.sim.digest

    # ---- faults ------------------------------------------------------------------------

    def running(self, node: int) -> bool:
        return self.sim.is_up(node)

    async def crash(self, node: int) -> None:
        self.sim.crash(node)

    async def leave(self, node: int) -> None:
        self.sim.leave(node)

    async def join(self, node: int) -> None:
        up = self.sim.up_nodes()
        self.sim.restart(node, self.rng.sample(up, min(3, len(up))))

    async def partition(self, groups: tuple[tuple[int, ...], ...]) -> None:
        self.sim.partition([list(group) for group in groups])

    async def heal(self) -> None:
        self.sim.heal()

    async def links(self, loss: float, latency: float) -> None:
        loop = self.sim.loop
        loop.loss, loop.latency, loop.jitter = loss, latency, latency

    # ---- workload ----------------------------------------------------------------------

    async def publish(self, node: int, key: int) -> None:
        self.sim.dht.publish(node, record_key(key), record_value(key))
        self.publishers[key] = node

    async def resolve(self) -> None:
        up = self.sim.up_nodes()
        for key, publisher in sorted(self.publishers.items()):
            if not self.sim.is_up(publisher):
                continue
            asker = self.rng.choice(up)
            op_id = self.sim.dht.find_value(asker, record_key(key))
            self._pending.append((asker, self.sim.dht.nodes[asker].core, op_id, key,
                                  self.sim.now - self.t0))

    def _collect_lookups(self, t: float, final: bool = False) -> None:
        waiting = []
        for asker, core, op_id, key, started in self._pending:
            node = self.sim.dht.nodes[asker]
            if node.core is not core or not node.up:
                continue  # the asker crashed: its lookup says nothing of the records
            done = node.finished.pop(op_id, None)
            if done is not None:
                found = done.error is None and any(
                    r.value == record_value(key) for r in done.result.records)
                self.rec.lookups.append(found)
            elif final or t - started > LOOKUP_WAIT:
                self.rec.lookups.append(False)
            else:
                waiting.append((asker, core, op_id, key, started))
        self._pending = waiting

    async def submit(self, node: int, tasks: int) -> None:
        if self.tasks is None:
            self.tasks = TaskLayer(self.sim, duration=task_seconds)
            self.rec.completions = self.tasks.completions
        for object_id in self.tasks.submit(node, tasks):
            self.rec.tasks_submitted[object_id] = "done"

    # ---- views -------------------------------------------------------------------------

    def node_id(self, node: int) -> NodeId:
        return self.sim.node_id(node)

    def live_count(self, node: int) -> int:
        return self.sim.gossip.nodes[node].core.num_live() - 1

    def live_ids(self, node: int) -> Collection[NodeId]:
        return self.sim.gossip.nodes[node].core.live_members()


class NodeEngine(_Engine):
    """Production nodes on SimNetwork under trio's MockClock."""

    name = "simnet"
    exact_replay = False

    def __init__(self, params: Params, scenario: Scenario, recorder: Recorder) -> None:
        super().__init__(params, recorder)
        self.net = SimNetwork(seed=params.seed, default_link=LinkSpec(
            latency=params.latency, jitter=params.latency))
        self.cluster = SimCluster(self.net, params.nodes, gossip=scenario.gossip_config(params),
                                  seed=params.seed,
                                  duration=lambda work: task_seconds(work.task_id))
        self.index: dict[NodeId, int] = {}
        self._nursery: trio.Nursery | None = None
        self._trace = hashlib.sha256()
        self._waiting = 0
        self._owners: list[Any] = []

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        await self.cluster.start(nursery)
        for i in range(len(self.cluster.nodes)):
            self.index[self.node_id(i)] = i
        if not await self.cluster.wait_converged(CONVERGE_LIMIT):
            raise RuntimeError(f"{len(self.cluster.nodes)} nodes did not converge within "
                               f"{CONVERGE_LIMIT} simulated seconds")
        self.t0 = trio.current_time()
        self.net.default_link = LinkSpec(latency=self.params.latency,
                                         jitter=self.params.latency, loss=self.params.loss)
        for i in range(len(self.cluster.nodes)):
            self._watch(i)

    def _watch(self, node: int) -> None:
        gossip = self.cluster.nodes[node].node.cluster.gossip
        assert gossip is not None and self._nursery is not None
        self._nursery.start_soon(self._forward, node, gossip.subscribe())

    async def _forward(self, observer: int, events: trio.MemoryReceiveChannel[MemberEvent]
                       ) -> None:
        async for event in events:
            if event.member.is_self:
                continue
            subject = self.index.get(event.member.node_id)
            if subject is None:
                continue
            t = event.time - self.t0
            self._trace.update(f"{t:.6f} {observer} {subject} {event.kind.value};".encode())
            origin = None if event.origin is None else self.index.get(event.origin)
            old_life = life_of(event.member.incarnation) < self.cluster.life(subject)
            self.rec.member(observer, subject, event.kind, t, origin, old_life)

    async def advance_to(self, t: float) -> None:
        await trio.sleep_until(self.t0 + t)

    async def finish(self, t: float) -> None:
        """Lookups still waiting now never finished; the nodes stop as if unplugged (a
        graceful leave of all at once would only log that nobody confirmed it)."""
        self.rec.lookups.extend([False] * self._waiting)
        for i in range(len(self.cluster.nodes)):
            if self.running(i) and not self.net.transport(self.cluster.nodes[i].address).crashed:
                self.cluster.crash(i)

    @property
    def messages(self) -> int:
        total = self.net.total_stats()
        return total.datagrams_delivered + total.stream_messages_delivered

    @property
    def digest(self) -> str:
        """A hash of the membership events seen (not replay-exact: trio's order among
        tasks ready at one instant varies from run to run)."""
        return self._trace.hexdigest()[:16]

    # ---- faults ------------------------------------------------------------------------

    def running(self, node: int) -> bool:
        return not self.cluster.nodes[node].stopped.is_set()

    async def crash(self, node: int) -> None:
        self.cluster.crash(node)

    async def leave(self, node: int) -> None:
        self.cluster.leave(node)

    async def join(self, node: int) -> None:
        assert self._nursery is not None
        await self.cluster.revive(node, self._nursery)
        self._watch(node)

    def _addresses(self, nodes: Collection[int]) -> list[tuple[str, int]]:
        return [self.cluster.nodes[i].address for i in nodes]

    async def partition(self, groups: tuple[tuple[int, ...], ...]) -> None:
        self.net.heal()
        grouped = {i for group in groups for i in group}
        rest = tuple(i for i in range(len(self.cluster.nodes)) if i not in grouped)
        sides = [group for group in (*groups, rest) if group]
        for a, side in enumerate(sides):
            for other in sides[a + 1:]:
                self.net.partition(self._addresses(side), self._addresses(other))

    async def heal(self) -> None:
        self.net.heal()

    async def links(self, loss: float, latency: float) -> None:
        self.net.default_link = LinkSpec(latency=latency, jitter=latency, loss=loss)

    # ---- workload ----------------------------------------------------------------------

    async def publish(self, node: int, key: int) -> None:
        dht = self.cluster.nodes[node].node.cluster.dht
        assert dht is not None and self._nursery is not None
        self._nursery.start_soon(dht.publish, record_key(key), record_value(key))
        self.publishers[key] = node

    async def resolve(self) -> None:
        assert self._nursery is not None
        up = [i for i in range(len(self.cluster.nodes)) if self.running(i)]
        for key, publisher in sorted(self.publishers.items()):
            if self.running(publisher):
                self._nursery.start_soon(self._lookup, self.rng.choice(up), key)

    async def _lookup(self, asker: int, key: int) -> None:
        sim = self.cluster.nodes[asker]
        dht = sim.node.cluster.dht
        assert dht is not None
        self._waiting += 1
        found = False
        with trio.move_on_after(LOOKUP_WAIT):
            try:
                records = await dht.find_value(record_key(key))
                found = any(r.value == record_value(key) for r in records)
            except DhtLookupError:
                found = False
        self._waiting -= 1
        if self.cluster.nodes[asker] is sim and self.running(asker):
            self.rec.lookups.append(found)

    async def submit(self, node: int, tasks: int) -> None:
        owner = self.cluster.nodes[node]
        if owner not in self._owners:
            self._owners.append(owner)
            self.rec.completions = owner.count_completions()
        assert self._nursery is not None
        base = len(self.rec.tasks_submitted)
        for x in range(base, base + tasks):
            object_id = owner.submit(triple, x)
            self.rec.tasks_submitted[object_id] = triple(x)
            self._nursery.start_soon(self._result, owner, object_id)

    async def _result(self, owner: Any, object_id: bytes) -> None:
        self.rec.task_results[object_id] = await owner.result(object_id)

    # ---- views -------------------------------------------------------------------------

    def node_id(self, node: int) -> NodeId:
        cluster = self.cluster.nodes[node].node.cluster
        assert cluster is not None
        return cluster.node_id

    def _core(self, node: int) -> Any:
        gossip = self.cluster.nodes[node].node.cluster.gossip
        assert gossip is not None
        return gossip.core

    def live_count(self, node: int) -> int:
        return self._core(node).num_live() - 1

    def live_ids(self, node: int) -> Collection[NodeId]:
        return self._core(node).live_members()


Engine = StepperEngine | NodeEngine
ENGINE_TYPES: dict[str, type[StepperEngine] | type[NodeEngine]] = {
    "stepper": StepperEngine, "simnet": NodeEngine}
