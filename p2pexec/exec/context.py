"""Where this process's API calls go: the driver's node, or a worker's link to its node.

It lives below `api` so that a worker process can install its runtime without the
execution layer importing the API (layers import only downward)."""

from __future__ import annotations

from typing import Any

runtime: Any = None
"""The runtime of this process: a driver runtime (`p2pexec.client`) or a worker's."""
in_worker = False
"""True inside a worker process, whose runtime is its link and is never replaced."""
namespace = ""
"""A driver's namespace (`px.init(namespace=...)`); a worker takes its running task's."""


def set_worker_runtime(worker_runtime: Any) -> None:
    """Inside a worker process: route the API through the worker's link to its node."""
    global runtime, in_worker
    runtime, in_worker = worker_runtime, True
