"""Node: one peer. Composes the layers in one nursery; closing it stops them all.

Embedded (no `NodeConfig.cluster`) it is the execution layer alone. Under `p2pexec join`
it also runs the cluster service (transport, gossip, discovery; see `p2pexec.cluster`) and
the control socket in its data dir, through which `p2pexec status` reads the membership.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from p2pexec.cluster import ClusterService
from p2pexec.config import NodeConfig, control_socket_path
from p2pexec.control import ControlServer
from p2pexec.errors import LocalUsageError
from p2pexec.exec.service import ExecService
from p2pexec.ids import NodeId


class Node:
    """The same peer runs embedded in a driver, under `p2pexec join`, and in simulations."""

    def __init__(self, config: NodeConfig, node_id: NodeId | None = None) -> None:
        self.config = config
        self.exec = ExecService(config.exec, config.resources, call_handlers={
            "get_actor": self._get_actor,
            "actor_exists": lambda name: self.exec.core.lookup_actor(name) is not None,
            "kill": self._kill,
            "nodes": lambda _arg: self.nodes(),
            "cluster_resources": lambda _arg: dict(self.exec.core.total),
            "available_resources": lambda _arg: self._available(),
        })
        self.cluster: ClusterService | None = None
        self.control: ControlServer | None = None
        if config.cluster is not None:
            self.cluster = ClusterService(config.cluster, config.name, dict(self.exec.core.total),
                                          self._load)
            self.control = ControlServer(control_socket_path(config.cluster.data_dir),
                                         {"status": lambda _arg: {"members": self.nodes()}})
            node_id = self.cluster.node_id
        self.node_id = node_id if node_id is not None else NodeId(os.urandom(32))

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
            task_status.started()

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
                "available": self._available(), "workers": self.exec.pool_ready()}

    def nodes(self) -> list[dict[str, Any]]:
        """Every known member, this node first (with its local keys, see `info`); only this
        node when it runs embedded."""
        others = self.cluster.members()[1:] if self.cluster is not None else []
        return [self.info(), *others]

    def _load(self) -> tuple[int, int]:
        """(tasks ready to run and waiting for a worker, tasks on the workers' stacks)."""
        core = self.exec.core
        return len(core.ready), sum(len(w.stack) for w in core.workers.values())

    def _available(self) -> dict[str, float]:
        return {name: max(0.0, amount) for name, amount in self.exec.core.available.items()}

    def _get_actor(self, name: str) -> bytes:
        actor_id = self.exec.core.lookup_actor(name)
        if actor_id is None:
            raise LocalUsageError(f"no actor named {name!r} is alive on this cluster")
        return actor_id

    def _kill(self, actor_id: bytes) -> bool:
        return self.exec.kill_actor(actor_id)
