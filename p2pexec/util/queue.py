"""`Queue`: a FIFO queue that tasks, actors and drivers on any node share, held by an
async actor (Ray's `ray.util.queue.Queue`: same methods, `Empty` and `Full`).

A blocking `get` or `put` waits inside the actor, on an `asyncio.Queue`, so it returns
as soon as its item (or room) is there while other callers go on. A queue whose actor
has died (killed, or its node lost) fails every call blocked on it, and every later one,
with `ActorDiedError`.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any

from p2pexec import api


class Empty(_stdlib_queue.Empty):
    """A get found the queue empty (at once, or until its timeout)."""


class Full(_stdlib_queue.Full):
    """A put found the queue full (at once, or until its timeout)."""


class _QueueActor:
    """The queue itself; each blocked call waits on its own asyncio task."""

    def __init__(self, maxsize: int) -> None:
        self.items: asyncio.Queue = asyncio.Queue(max(maxsize, 0))

    async def qsize(self) -> int:
        return self.items.qsize()

    async def put(self, item: Any, block: bool, timeout: float | None) -> bool:
        """Whether `item` went in (False: still full when time was up)."""
        if not block:
            try:
                self.items.put_nowait(item)
            except asyncio.QueueFull:
                return False
            return True
        try:
            await asyncio.wait_for(self.items.put(item), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def get(self, block: bool, timeout: float | None) -> tuple[bool, Any]:
        """(True, the oldest item), or (False, None) when none came in time."""
        if not block:
            try:
                return True, self.items.get_nowait()
            except asyncio.QueueEmpty:
                return False, None
        try:
            return True, await asyncio.wait_for(self.items.get(), timeout)
        except asyncio.TimeoutError:
            return False, None

    async def put_batch(self, items: list[Any]) -> bool:
        maxsize = self.items.maxsize
        if maxsize > 0 and self.items.qsize() + len(items) > maxsize:
            return False
        for item in items:
            self.items.put_nowait(item)
        return True

    async def get_batch(self, count: int) -> tuple[bool, list[Any]]:
        if self.items.qsize() < count:
            return False, []
        return True, [self.items.get_nowait() for _ in range(count)]


class Queue:
    """A queue held by an actor (see the module docstring); pass it to tasks freely.
    `maxsize` <= 0 means unbounded; `actor_options` go to the actor's `options()`."""

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None
                 ) -> None:
        self.maxsize = maxsize
        options = {"num_cpus": 0, **(actor_options or {})}
        self.actor = api.remote(_QueueActor).options(**options).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        return api.get(self.actor.qsize.remote())

    qsize = size

    def empty(self) -> bool:
        return self.size() == 0

    def full(self) -> bool:
        return self.maxsize > 0 and self.size() >= self.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add `item`; when full, wait for room (up to `timeout` s), else raise `Full`."""
        _check_timeout(timeout)
        if not api.get(self.actor.put.remote(item, block, timeout)):
            raise Full(f"the queue is full ({self.maxsize} items)")

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the oldest item; when empty, wait for one (up to `timeout` s), else
        raise `Empty`."""
        _check_timeout(timeout)
        ok, item = api.get(self.actor.get.remote(block, timeout))
        if not ok:
            raise Empty("the queue is empty")
        return item

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all of `items` at once, or none of them (`Full`)."""
        batch = list(items)
        if not api.get(self.actor.put_batch.remote(batch)):
            raise Full(f"{len(batch)} items do not fit in the queue "
                       f"({self.maxsize} items at most)")

    def get_nowait_batch(self, count: int) -> list[Any]:
        """Take `count` items at once, or none of them (`Empty`)."""
        ok, items = api.get(self.actor.get_batch.remote(count))
        if not ok:
            raise Empty(f"the queue holds fewer than {count} items")
        return items

    def shutdown(self) -> None:
        """Stop the queue's actor (callers blocked on it get `ActorDiedError`)."""
        api.kill(self.actor)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")

