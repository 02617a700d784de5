"""Whole nodes on the simulated network: execution and membership together, many per trio
process, on trio's clock (use `trio.testing.MockClock(autojump_threshold=0)`).

Each `SimNode` is the production `Node` with three parts swapped: its transport is a
`SimNetwork` one, discovery is the seed list only (no mDNS), and its workers are trio
tasks (`exec.inline.InlineWorkers`) that run task functions in this process after a
simulated duration. Gossip, the scheduler, the object table and the exec driver are the
same code as in production.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import random
from collections.abc import Callable
from typing import Any

import trio

from p2pexec.config import ClusterConfig, NodeConfig
from p2pexec.exec import serialization, shm
from p2pexec.exec.config import ExecConfig
from p2pexec.exec.inline import Duration, InlineWorkers
from p2pexec.exec.refs import IdGenerator, return_id
from p2pexec.exec.runtime_env import RuntimeEnv
from p2pexec.exec.task import ACTOR_CALL, ACTOR_CREATE, TASK, TaskSpec
from p2pexec.gossip.config import GossipConfig
from p2pexec.net.discovery import DiscoveryConfig
from p2pexec.net.security import new_token
from p2pexec.node import Node
from p2pexec.testing.simnet import NodeCrashedError, SimNetwork, SimTransport


@dataclasses.dataclass
class SimNode:
    """One simulated node and the task ids it has handed out."""

    node: Node
    ids: IdGenerator
    registered: set[bytes] = dataclasses.field(default_factory=set)
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    """Cancelled when the node is crashed or leaves (`SimCluster.crash`, `.leave`)."""
    stopped: trio.Event = dataclasses.field(default_factory=trio.Event)
    """Set once the node has stopped running (crashed, left, or its nursery ended)."""

    @property
    def address(self) -> tuple[str, int]:
        assert self.node.cluster is not None
        return self.node.cluster.transport.local.address

    def alive_members(self) -> int:
        return sum(1 for m in self.node.nodes() if m["state"] == "alive")

    def count_completions(self) -> collections.Counter[bytes]:
        """From now on, how many times each object this node owns got its value: a
        result that reaches its owner twice (or never) shows here."""
        completions: collections.Counter[bytes] = collections.Counter()
        table = self.node.exec.core.objects
        complete = table.complete

        def counted(object_id: bytes, payload: list, contained: list[bytes]) -> None:
            completions[object_id] += 1
            complete(object_id, payload, contained)

        table.complete = counted  # type: ignore[method-assign]
        return completions

    def submit(self, function: Callable[..., Any], *args: Any, name: str | None = None,
               strategy: dict[str, Any] | None = None,
               runtime_env: RuntimeEnv | None = None) -> bytes:
        """Submit `function(*args)` as a task owned by this node, as its embedded driver
        would (`strategy`: the spec's scheduling strategy fields, as
        `scheduling.spec_fields` makes them; `runtime_env`: packages already stored
        here); returns the result's object id. Inline workers take on no environment."""
        return self._submit(TASK, self._register(function), None, args,
                            name or getattr(function, "__qualname__", "task"), {"CPU": 1.0},
                            strategy=strategy, runtime_env=runtime_env)

    def create_actor(self, cls: type, *args: Any, name: str | None = None,
                     resources: dict[str, float] | None = None, max_restarts: int = 0,
                     strategy: dict[str, Any] | None = None) -> bytes:
        """Create an actor of `cls` here (named `name` if given, holding `resources` for
        its life), as `Cls.options(name=name, ...).remote(*args)` would; its actor id."""
        task_id = self.ids.task_id()
        self._submit(ACTOR_CREATE, self._register(cls), None, args, f"{cls.__name__}.__init__",
                     resources or {}, task_id=task_id, actor_id=task_id, actor_name=name,
                     max_restarts=max_restarts, strategy=strategy)
        return task_id

    def call_actor(self, actor_id: bytes, method: str, *args: Any,
                   max_task_retries: int = 0) -> bytes:
        """Call `method(*args)` of the actor (wherever it lives), as a handle's
        `.remote()` would (with the handle's `max_task_retries`); returns the result's
        object id."""
        return self._submit(ACTOR_CALL, None, method, args, method, {}, actor_id=actor_id,
                            pins=(return_id(actor_id, 1),), max_retries=max_task_retries)

    async def call(self, operation: str, argument: Any) -> Any:
        """A node operation (get_actor, kill, ...) as a driver's `runtime.call`; raises
        the operation's error."""
        done = trio.Event()
        outcome: list[tuple[Any, Exception | None]] = []

        def answer(value: Any, error: Exception | None) -> None:
            outcome.append((value, error))
            done.set()

        self.node.exec.call(operation, argument, answer)
        await done.wait()
        value, error = outcome[0]
        if error is not None:
            raise error
        return value

    def _register(self, target: Any) -> bytes:
        """Make a function or class known to the node once, as a driver does."""
        pickled = serialization.pickle_callable(target, repr(target))
        code_hash = serialization.callable_hash(pickled)
        if code_hash not in self.registered:
            self.registered.add(code_hash)
            self.node.exec.post(("register", code_hash, pickled))
        return code_hash

    def _submit(self, kind: int, code_hash: bytes | None, method: str | None,
                args: tuple, name: str, resources: dict[str, float], *,
                task_id: bytes | None = None, actor_id: bytes | None = None,
                actor_name: str | None = None, pins: tuple[bytes, ...] = (),
                strategy: dict[str, Any] | None = None,
                runtime_env: RuntimeEnv | None = None, max_retries: int = 3,
                max_restarts: int = 0) -> bytes:
        service = self.node.exec
        task_id = task_id or self.ids.task_id()
        payload, contained = serialization.to_payload((args, {}), service.config.inline_limit,
                                                      shm.segment_name(os.getpid(),
                                                                       task_id + b"args"))
        result = return_id(task_id, 1)
        service.post(("submit", TaskSpec(
            task_id, kind, code_hash, method, payload, (), (*contained, *pins), (result,),
            name, resources, max_retries, actor_id=actor_id, actor_name=actor_name,
            max_restarts=max_restarts, runtime_env=runtime_env, **(strategy or {}))))
        return result

    def put(self, value: Any) -> bytes:
        """Store `value` as an object this node owns, as `px.put` would; its id."""
        object_id = return_id(self.ids.task_id(), 0)
        payload, contained = serialization.to_payload(
            value, self.node.exec.config.inline_limit, shm.segment_name(os.getpid(), object_id))
        self.node.exec.post(("put", object_id, payload, contained))
        return object_id

    def receive_ref(self, object_id: bytes, owner: bytes = b"") -> None:
        """This node's driver got a ref to `object_id` from elsewhere (another node's
        driver, say): it now holds it, and the node borrows it from `owner` (a node's raw
        id, as `ObjectRef.owner`) or, with no owner, fetches it from its holders."""
        self.node.exec.post(("refs", {object_id: 1}, {object_id: owner} if owner else {}))

    def drop_ref(self, object_id: bytes) -> None:
        """This node's driver let go of its ref to `object_id`."""
        self.node.exec.post(("refs", {object_id: -1}, {}))

    async def result(self, object_id: bytes) -> Any:
        """The value of an object this node owns, once it has one (raises its error)."""
        entries = self.node.exec.core.objects.entries
        while True:
            entry = entries.get(object_id)
            if entry is not None and entry.payload is not None:
                payload = entry.payload
                self.drop_ref(object_id)  # the driver lets go of it
                return serialization.from_payload(payload)
            done = trio.Event()
            self.node.exec.register_waiter([object_id], done)
            await done.wait()


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside an exception group, however nested (or `exc` itself)."""
    inner = getattr(exc, "exceptions", None)
    if inner is None:
        return [exc]
    return [leaf for sub in inner for leaf in _leaves(sub)]


class SimCluster:
    """`n` complete nodes on `net`, each seeded with the first `seeds` nodes' addresses."""

    def __init__(self, net: SimNetwork, n: int, *, cpus: int = 2, seeds: int = 3,
                 duration: float | Duration = 0.0, gossip: GossipConfig | None = None,
                 seed: int = 0) -> None:
        self.net = net
        token = new_token()
        transports = [net.add_node() for _ in range(n)]
        seed_addresses = tuple(t.local.address for t in transports[:seeds])
        gossip = gossip or GossipConfig.local()
        self._duration = duration
        self._seed = seed
        self._configs: list[NodeConfig] = []
        self._lives: list[int] = []
        self.nodes: list[SimNode] = []
        for i, transport in enumerate(transports):
            cluster = ClusterConfig(token=token, mdns=False, gossip=gossip,
                                    discovery=DiscoveryConfig.local(),
                                    peers=tuple(a for a in seed_addresses
                                                if a != transport.local.address))
            self._configs.append(NodeConfig(exec=ExecConfig(num_cpus=cpus), name=f"sim{i}",
                                            cluster=cluster))
            self._lives.append(0)
            self.nodes.append(self._new_node(i, transport))

    def life(self, index: int) -> int:
        """How many times node `index` has been revived (its process's life)."""
        return self._lives[index]

    def _new_node(self, index: int, transport: SimTransport) -> SimNode:
        """The node at `index` in its current life (a revived node is a new process:
        fresh RNG, and task ids of its own)."""
        life = self._lives[index]
        node = Node(self._configs[index], transport=transport,
                    inline=InlineWorkers(self._duration),
                    rng=random.Random(self._seed * 100_003 + index + (life << 40)),
                    control_socket=False, life=life)
        prefix = (index + (life << 32)).to_bytes(12, "big")
        return SimNode(node, IdGenerator(prefix))

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every node in `nursery` (cancel it to stop them all)."""
        for sim in self.nodes:
            await nursery.start(self._run, sim)

    @staticmethod
    async def _run(sim: SimNode, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with sim.scope:
                try:
                    await sim.node.run(task_status=task_status)
                except BaseException as exc:  # a group on Python 3.10 too (no except*)
                    crashed = (NodeCrashedError, trio.Cancelled)
                    if not sim.scope.cancel_called or not all(
                            isinstance(leaf, crashed) for leaf in _leaves(exc)):
                        raise
        finally:
            sim.stopped.set()

    def crash(self, index: int) -> None:
        """Node `index` stops at once, as if unplugged: no leave, nothing more sent."""
        sim = self.nodes[index]
        self.net.crash(sim.address)
        sim.scope.cancel()

    def leave(self, index: int) -> None:
        """Node `index` shuts down as on Ctrl-C: a graceful leave, then it stops
        (`nodes[index].stopped` is set then)."""
        self.nodes[index].scope.cancel()

    async def revive(self, index: int, nursery: trio.Nursery) -> SimNode:
        """Node `index`, stopped (crashed or left), starts again as a fresh process with
        the same key and address, and joins through the seeds."""
        old = self.nodes[index]
        await old.stopped.wait()
        self._lives[index] += 1
        sim = self.nodes[index] = self._new_node(index, self.net.restart(old.address))
        await nursery.start(self._run, sim)
        return sim

    def converged(self) -> bool:
        """Every node sees every node alive."""
        n = len(self.nodes)
        return all(sim.alive_members() == n for sim in self.nodes)

    async def wait_converged(self, timeout: float) -> bool:
        """Wait up to `timeout` simulated seconds for `converged`."""
        with trio.move_on_after(timeout):
            while not self.converged():
                await trio.sleep(0.1)
        return self.converged()

