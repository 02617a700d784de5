"""Node: one peer. Composes the layers in one nursery; closing it stops them all."""

from __future__ import annotations

import os
from typing import Any

import trio

from p2pexec.config import NodeConfig
from p2pexec.errors import LocalUsageError
from p2pexec.exec.service import ExecService
from p2pexec.ids import NodeId


class Node:
    """The same peer runs embedded in a driver, under `p2pexec join`, and in simulations."""

    def __init__(self, config: NodeConfig, node_id: NodeId | None = None) -> None:
        self.config = config
        self.node_id = node_id if node_id is not None else NodeId(os.urandom(32))
        self.exec = ExecService(config.exec, config.resources, call_handlers={
            "get_actor": self._get_actor,
            "actor_exists": lambda name: self.exec.core.lookup_actor(name) is not None,
            "kill": self._kill,
            "nodes": lambda _arg: self.nodes(),
            "cluster_resources": lambda _arg: dict(self.exec.core.total),
            "available_resources": lambda _arg: self._available(),
        })

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.exec.run)
            task_status.started()

    def info(self) -> dict[str, Any]:
        """This node as `px.nodes()` and `p2pexec status` show it."""
        core = self.exec.core
        running = sum(len(w.stack) for w in core.workers.values())
        return {
            "id": self.node_id.hex,
            "short_id": self.node_id.short,
            "name": self.config.name,
            "address": None,
            "state": "alive",
            "resources": dict(core.total),
            "available": self._available(),
            "workers": self.exec.pool_ready(),
            "load": {"queued": len(core.ready), "running": running},
        }

    def nodes(self) -> list[dict[str, Any]]:
        return [self.info()]

    def _available(self) -> dict[str, float]:
        return {name: max(0.0, amount) for name, amount in self.exec.core.available.items()}

    def _get_actor(self, name: str) -> bytes:
        actor_id = self.exec.core.lookup_actor(name)
        if actor_id is None:
            raise LocalUsageError(f"no actor named {name!r} is alive on this cluster")
        return actor_id

    def _kill(self, actor_id: bytes) -> bool:
        return self.exec.core.kill_actor(actor_id)
