"""Scheduling strategies, Ray's names and meanings (`ray.util.scheduling_strategies`;
`p2pexec.util.scheduling_strategies` is the same class under Ray's path): the
`scheduling_strategy=` option of tasks and actors, turned into the `TaskSpec` fields the
nodes act on."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from p2pexec.errors import LocalUsageError
from p2pexec.exec.task import NODE_AFFINITY, SPREAD

NODE_ID_DIGITS = 64
"""A node id in hex (32 bytes: SHA-256 of the node's public key)."""


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on one node: `node_id` is its hex id, as `px.nodes()` and
    `px.get_runtime_context().get_node_id()` give it. With `soft=False` the work runs
    there or nowhere: it fails with `TaskUnschedulableError` (an actor is dead, its calls
    raise `ActorDiedError`) when that node is not a live member, lacks the resources, or
    dies or leaves while it holds the work. With `soft=True` it runs there when that node
    is alive and has the resources (waiting there while they are busy), else anywhere."""

    node_id: str
    soft: bool

    def __post_init__(self) -> None:
        node_id = self.node_id
        if (not isinstance(node_id, str) or len(node_id) != NODE_ID_DIGITS
                or not set(node_id) <= set(string.hexdigits)):
            raise LocalUsageError(
                f"NodeAffinitySchedulingStrategy needs a node's hex id ({NODE_ID_DIGITS} "
                f"hex digits, as px.nodes()[i]['id'] or "
                f"px.get_runtime_context().get_node_id() give it), got {node_id!r}")
        if not isinstance(self.soft, bool):
            raise LocalUsageError(f"NodeAffinitySchedulingStrategy's soft must be True or "
                                  f"False, got {self.soft!r}")


def spec_fields(strategy: Any) -> dict[str, Any]:
    """The `TaskSpec` fields for a `scheduling_strategy` option (none for "DEFAULT" or
    None); anything else is a `LocalUsageError` here, at decoration or `.options()`,
    rather than at submission."""
    if strategy is None or (isinstance(strategy, str) and strategy == "DEFAULT"):
        return {}
    if isinstance(strategy, str) and strategy == "SPREAD":
        return {"strategy": SPREAD}
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return {"strategy": NODE_AFFINITY, "affinity": bytes.fromhex(strategy.node_id),
                "soft": strategy.soft}
    raise LocalUsageError(
        f"scheduling_strategy must be \"DEFAULT\", \"SPREAD\" or a "
        f"p2pexec.util.scheduling_strategies.NodeAffinitySchedulingStrategy, got "
        f"{strategy!r}")
