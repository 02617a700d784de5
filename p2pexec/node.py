"""Node: one peer. Composes the layers in one nursery; closing it stops them all.

Embedded (no `NodeConfig.cluster`) it is the execution layer alone. Under `p2pexec join`
it also runs the cluster service (transport, gossip, discovery; see `p2pexec.cluster`) and
the control socket in its data dir, through which `p2pexec status` reads the membership
and drivers attach. The same class runs in simulations: there the transport is a
`SimNetwork` one, discovery is seeds only, workers are trio tasks (`exec.inline`) and
there is no control socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import random
from typing import Any

import trio

from p2pexec.cluster import ClusterService, DiscoveryRunner
from p2pexec.config import NodeConfig, control_socket_path
from p2pexec.control import ControlServer
from p2pexec.errors import LocalUsageError
from p2pexec.exec.events import Draining, PeerGone, PeersResources
from p2pexec.exec.inline import InlineWorkers
from p2pexec.exec.mesh import (
    MESH_CODES,
    MESH_MESSAGES,
    CodeRequest,
    Mesh,
    NodeStats,
    StatsRequest,
    node_stats,
)
from p2pexec.exec.packages import PackageRequest
from p2pexec.exec.scheduler import CPU
from p2pexec.exec.service import ExecService
from p2pexec.exec.stealing import PeerLoad
from p2pexec.exec.transfer import TRANSFER_CODES, ObjectTransfers
from p2pexec.gossip.core import LIVE, EventKind, MemberEvent
from p2pexec.ids import NodeId
from p2pexec.net.codec import Codec
from p2pexec.net.discovery import run_discovery
from p2pexec.net.transport import Transport

log = logging.getLogger("p2pexec.cluster")

SETTLE_POLL = 1.0
"""Seconds between two looks at whether the membership has settled: work that waits for
it is decided at most this late (against a 10 s grace)."""


class Node:
    """The same peer runs embedded in a driver, under `p2pexec join`, and in simulations."""

    def __init__(self, config: NodeConfig, node_id: NodeId | None = None, *,
                 transport: Transport | None = None, discovery: DiscoveryRunner = run_discovery,
                 inline: InlineWorkers | None = None, rng: random.Random | None = None,
                 control_socket: bool = True, life: int | None = None) -> None:
        """`transport`, `discovery` and `life` go to the cluster service (defaults: TCP+TLS,
        mDNS and seeds, restarts counted in the data dir); `rng` seeds every random
        choice of the cluster service and object transfers (default: a fresh RNG);
        `inline` runs workers as trio tasks instead of processes; `control_socket=False`
        opens no socket in the data dir."""
        if config.cluster is not None:
            data_dir = config.cluster.data_dir
            config = dataclasses.replace(config, exec=dataclasses.replace(
                config.exec,
                spill_dir=config.exec.spill_dir or os.path.join(data_dir, "spill"),
                package_dir=config.exec.package_dir or os.path.join(data_dir, "packages")))
        self.config = config
        self._rng = rng or random.Random()
        self.cluster: ClusterService | None = None
        self.control: ControlServer | None = None
        resources = config.offered()
        if config.cluster is not None:
            self.cluster = ClusterService(config.cluster, config.name, resources, self._load,
                                          transport=transport, discovery=discovery,
                                          rng=random.Random(self._rng.getrandbits(64)),
                                          life=life)
            node_id = self.cluster.node_id
        self.node_id = node_id if node_id is not None else NodeId(os.urandom(32))
        self.exec = ExecService(config.exec, resources, node_id=self.node_id.raw,
                                inline=inline, in_cluster=config.cluster is not None,
                                node_name=config.name, call_handlers={
            "get_actor": self._get_actor,
            "actor_exists": self._actor_exists,
            "kill": self._kill,
            "kill_to_restart": functools.partial(self._kill, restart=True),
            "cancel": lambda argument: self.exec.stimulus(self.exec.cancel_event(argument)),
            "exit_actor": lambda actor_id: self.exec.kill_actor(
                actor_id, "it exited (px.actor.exit_actor)"),
            "nodes": lambda _arg: self.nodes(),
            "cluster_resources": lambda _arg: self._mesh_resources(available=False),
            "available_resources": lambda _arg: self._mesh_resources(available=True),
        })
        if config.cluster is not None and control_socket:
            self.control = ControlServer(control_socket_path(config.cluster.data_dir),
                                         {"status": self._status,
                                          "exec_stats": lambda _arg: self.exec_stats()},
                                         attach=self.exec.serve_driver)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run every layer until cancelled. With a cluster, the control socket comes first
        (so a second node on the same data dir is refused before it binds anything), then
        the cluster service; cancelling leaves the cluster gracefully."""
        async with trio.open_nursery() as nursery:
            if self.control is not None:
                await nursery.start(self.control.run)
            await nursery.start(self.exec.run)
            if self.cluster is not None:
                await nursery.start(self.cluster.run)
                self._connect_transfers(self.cluster)
                await self._connect_mesh(self.cluster, nursery)
            task_status.started()

    def _connect_transfers(self, cluster: ClusterService) -> None:
        """Large objects move between nodes over the cluster's connections, found
        through its DHT."""
        assert cluster.dht is not None
        transfers = ObjectTransfers(cluster.transport, cluster.dht,
                                    Codec(self.config.cluster.net.limits),
                                    self.exec.core.objects.payload,
                                    random.Random(self._rng.getrandbits(64)))
        cluster.add_stream_service(TRANSFER_CODES, transfers.serve)
        self.exec.transfers = transfers

    async def _connect_mesh(self, cluster: ClusterService, nursery: trio.Nursery) -> None:
        """Tasks move between nodes by stealing, guided by the gossiped loads; a member
        that fails or leaves is a `PeerGone` for the scheduler."""
        assert cluster.dht is not None
        mesh = Mesh(self.exec, cluster.rpc, cluster.dht, self._peer_loads, cluster.dht.address_of,
                    random.Random(self._rng.getrandbits(64)))
        cluster.add_message_handler(MESH_MESSAGES, mesh.handle_message)
        cluster.add_request_handler((StatsRequest,), mesh.local_stats)
        cluster.add_request_handler((CodeRequest,), mesh.serve_code)
        cluster.add_request_handler((PackageRequest,), mesh.serve_package)
        for codes in MESH_CODES:
            cluster.add_stream_service(codes, cluster.rpc.adopt)
        self.exec.mesh = mesh
        nursery.start_soon(self._feed_membership, cluster.subscribe(), mesh)
        nursery.start_soon(self._settle_membership)
        await nursery.start(mesh.run)

    def _peer_loads(self) -> list[PeerLoad]:
        assert self.cluster is not None and self.cluster.gossip is not None
        return [PeerLoad(m.node_id, m.address, m.load.queue_length, m.load.version,
                         m.resources, m.load.running_tasks)
                for m in self.cluster.gossip.view().values()
                if not m.is_self and m.state in LIVE]

    async def _feed_membership(self, events: trio.MemoryReceiveChannel[MemberEvent],
                               mesh: Mesh) -> None:
        """Departures are `PeerGone`s; every change gives the scheduler the peers' totals
        (what tells a task no member can fit from one waiting for a busy member)."""
        async for event in events:
            if event.member.is_self:
                continue
            if event.kind in (EventKind.FAILED, EventKind.LEFT):
                mesh.forget(event.member.node_id)
                self.exec.stimulus(PeerGone(event.member.node_id.raw,
                                            left=event.kind is EventKind.LEFT))
            totals = tuple(dict(peer.resources) for peer in self._peer_loads())
            self.exec.stimulus(PeersResources(totals, trio.current_time()))

    async def drain(self) -> None:
        """Get ready to leave the cluster gracefully (call it before cancelling `run`):
        take no more work from peers, hand back to their owners the tasks peers gave this
        node that have not started, and wait up to `drain_timeout` for the running ones
        to finish and for their owners to fetch their large results."""
        mesh = self.exec.mesh
        if mesh is None:
            return
        core = self.exec.core
        self.exec.stimulus(Draining())
        running = sum(1 for task in core.tasks.values() if task.owner is not None)
        timeout = self.config.exec.drain_timeout
        if running or core.kept:
            log.info("leaving: waiting up to %g s for %d tasks peers gave this node",
                     timeout, running)
        with trio.move_on_after(timeout):
            while not (core.drained() and mesh.idle()):
                await trio.sleep(0.05)
        if not core.drained():
            log.warning("leaving with tasks of peers unfinished after %g s; their owners "
                        "run them again", timeout)

    async def _status(self, _arg: Any) -> dict[str, Any]:
        """What `p2pexec status` shows: the members, each with its execution figures
        ("exec", asked of each live member at once; None when one does not answer
        within 2 s)."""
        members = self.nodes()
        members[0]["exec"] = dataclasses.asdict(node_stats(self.exec))
        cluster = self.cluster
        if cluster is None or cluster.gossip is None:
            return {"members": members}
        view = {m.node_id.hex: m for m in cluster.gossip.view().values()}

        async def ask(member: dict[str, Any]) -> None:
            member["exec"] = None
            known = view.get(member["id"])
            if known is None or known.state not in LIVE:
                return
            with contextlib.suppress(Exception):  # unreachable or refusing: shown as "-"
                answer = await cluster.rpc.call(known.address, StatsRequest(),
                                                node=known.node_id, timeout=2.0)
                if type(answer) is NodeStats:
                    member["exec"] = dataclasses.asdict(answer)

        async with trio.open_nursery() as nursery:
            for member in members[1:]:
                nursery.start_soon(ask, member)
        return {"members": members}

    async def _settle_membership(self) -> None:
        """Tell the scheduler the peers' totals every `SETTLE_POLL` seconds until it
        counts the membership as settled (`infeasible_grace` after it first heard of
        its peers), even if the membership has not changed since: tasks no member fits,
        and work bound to a node never heard of, fail then."""
        while not self.exec.core.membership_settled:
            await trio.sleep(SETTLE_POLL)
            totals = tuple(dict(peer.resources) for peer in self._peer_loads())
            self.exec.stimulus(PeersResources(totals, trio.current_time()))

    def info(self) -> dict[str, Any]:
        """This node as `px.nodes()` and `p2pexec status` show it, plus what only the local
        node knows: "workers" (processes that said READY) and "available" resources."""
        queue_length, running_tasks = self._load()
        members = self.cluster.members() if self.cluster is not None else []
        own = members[0] if members else {
            "name": self.config.name,
            "id": self.node_id.hex,
            "short_id": self.node_id.short,
            "address": None,
            "state": "alive",
            "resources": dict(self.exec.core.total),
            "last_heard": None,
            "incarnation": 0,
        }
        return {**own, "load": {"queue_length": queue_length, "running_tasks": running_tasks},
                "available": self.exec.core.free(), "workers": self.exec.pool_ready()}

    def nodes(self) -> list[dict[str, Any]]:
        """Every known member, this node first (with its local keys, see `info`); only this
        node when it runs embedded."""
        others = self.cluster.members()[1:] if self.cluster is not None else []
        return [self.info(), *others]

    def exec_stats(self) -> dict[str, Any]:
        """What the execution layer holds right now (objects, tasks, actors, processes):
        how a test or an operator sees that a departed driver left nothing behind."""
        core = self.exec.core
        transfers = self.exec.transfers
        actors = [actor for actor in core.actors.actors.values() if actor.dead_reason is None]
        return {
            "objects": len(core.objects),
            "tasks": len(core.tasks),
            "actors": sorted(actor.name or actor.actor_id.hex() for actor in actors),
            "pool_workers": sum(1 for w in core.workers.values() if w.actor_id is None),
            "actor_workers": sum(1 for w in core.workers.values() if w.actor_id is not None),
            "drivers": self.exec.drivers(),
            "driver_timers": self.exec.timers,
            "available": self.exec.core.free(),
            "bytes_fetched": transfers.bytes_fetched if transfers is not None else 0,
            "bytes_served": transfers.bytes_served if transfers is not None else 0,
            "objects_prefetched": transfers.prefetched if transfers is not None else 0,
            "packages_fetched": self.exec.mesh.packages_fetched if self.exec.mesh else 0,
            **dataclasses.asdict(node_stats(self.exec)),
        }

    def _load(self) -> tuple[int, int]:
        """(tasks ready to run and waiting for a worker, CPUs in use: by running tasks
        and by actors). Gossip carries the second as the node's "running" count; peers
        read it as CPUs taken (placing actors, estimating what is free)."""
        core = self.exec.core
        return core.queue_length(), math.ceil(core.cpus_in_use() - 1e-9)

    def _mesh_resources(self, available: bool) -> dict[str, float]:
        """Totals (or what is free) over this node and every live member. A peer's free
        amount is an estimate from gossip: its totals less one CPU per running task."""
        own = self.exec.core.free() if available else dict(self.exec.core.total)
        if self.cluster is None or self.cluster.gossip is None:
            return own
        for member in self.cluster.gossip.view().values():
            if member.is_self or member.state not in LIVE:
                continue
            for name, amount in member.resources.items():
                if available and name == CPU:
                    amount = max(0.0, amount - member.load.running_tasks)
                own[name] = own.get(name, 0.0) + amount
        return own


    async def _get_actor(self, name: str) -> bytes:
        """The id of the live actor named `name`: this node's, else the one the cluster's
        name record points at (async: that is a DHT lookup)."""
        actor_id = self.exec.core.lookup_actor(name)
        if actor_id is None and self.exec.mesh is not None:
            actor_id = await self.exec.mesh.find_named(name)
        if actor_id is None:
            raise LocalUsageError(f"no actor named {name!r} is alive on this cluster")
        return actor_id

    async def _actor_exists(self, name: str) -> bool:
        """A live actor has this name, here or on any node of the cluster."""
        if self.exec.core.lookup_actor(name) is not None:
            return True
        return self.exec.mesh is not None and await self.exec.mesh.name_taken(name)

    async def _kill(self, actor_id: bytes, restart: bool = False) -> bool:
        """px.kill: here if the actor lives here, else sent to the node it lives on. To
        `restart` (`no_restart=False`), its process is killed instead."""
        here = self.exec.crash_actor if restart else self.exec.kill_actor
        if here(actor_id):
            return True
        return self.exec.mesh is not None and await self.exec.mesh.kill_remote(actor_id,
                                                                              restart)
