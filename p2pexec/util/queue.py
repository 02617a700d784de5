"""`Queue`: a FIFO queue that tasks, actors and drivers on any node share, held by an
actor (Ray's `ray.util.queue.Queue`: same methods, `Empty` and `Full`).

The actor runs one call at a time, so a blocking `get` or `put` does not wait inside it
(that would stop every other caller): the caller asks again, backing off from 1 ms to
`MAX_POLL` seconds, until its item (or room) is there or its timeout is up. A queue
whose actor has died (killed, or its node lost) raises `ActorDiedError` at the next try,
so callers blocked on it get that error, not a hang.
"""

from __future__ import annotations

import queue as _stdlib_queue
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from p2pexec import api

MAX_POLL = 0.05
"""Longest pause between two tries of a blocked get or put: what a blocked caller may
wait beyond the moment its item arrives, against a call per pause on the queue's actor."""


class Empty(_stdlib_queue.Empty):
    """A get found the queue empty (at once, or until its timeout)."""


class Full(_stdlib_queue.Full):
    """A put found the queue full (at once, or until its timeout)."""


class _QueueActor:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: deque[Any] = deque()

    def qsize(self) -> int:
        return len(self.items)

    def put(self, item: Any) -> bool:
        if 0 < self.maxsize <= len(self.items):
            return False
        self.items.append(item)
        return True

    def put_batch(self, items: list[Any]) -> bool:
        if self.maxsize > 0 and len(self.items) + len(items) > self.maxsize:
            return False
        self.items.extend(items)
        return True

    def get(self) -> tuple[bool, Any]:
        return (True, self.items.popleft()) if self.items else (False, None)

    def get_batch(self, count: int) -> tuple[bool, list[Any]]:
        if len(self.items) < count:
            return False, []
        return True, [self.items.popleft() for _ in range(count)]


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
        if not _retry(lambda: api.get(self.actor.put.remote(item)), block, timeout):
            raise Full(f"the queue is full ({self.maxsize} items)")

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the oldest item; when empty, wait for one (up to `timeout` s), else
        raise `Empty`."""
        _check_timeout(timeout)
        got: list[Any] = []

        def take() -> bool:
            ok, item = api.get(self.actor.get.remote())
            if ok:
                got.append(item)
            return ok
        if not _retry(take, block, timeout):
            raise Empty("the queue is empty")
        return got[0]

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


def _retry(attempt: Callable[[], bool], block: bool, timeout: float | None) -> bool:
    """`attempt()` until it succeeds: once without `block`, else until `timeout` seconds
    have passed (None: for ever), pausing 1 ms, then twice as long each time up to
    MAX_POLL. Whether it succeeded."""
    if attempt():
        return True
    if not block:
        return False
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.001
    while True:
        if deadline is None:
            time.sleep(pause)
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
        if attempt():
            return True
        pause = min(2 * pause, MAX_POLL)
