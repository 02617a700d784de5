"""A seeded discrete-event loop and link model: what the trio-free steppers share.

Protocol cores are sans-IO, so a stepper can play their driver for thousands of nodes in
one thread. This is the part every stepper needs: a heap of timed callbacks, one seeded
`random.Random` for every random choice (delays, losses, the seeds of the cores' own
RNGs), a model of the links between numbered nodes (one-way latency with jitter,
independent loss, partitions) and a digest of every delivery, so that the same seed and
parameters replay the same run and a changed one shows at once.
"""

from __future__ import annotations

import heapq
import itertools
import random
import zlib
from collections.abc import Callable, Iterable
from typing import Any


class EventLoop:
    """Timed callbacks on simulated time (seconds from 0) and the links they cross."""

    def __init__(self, seed: int = 0, *, latency: float = 0.0005, jitter: float = 0.0005,
                 loss: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency = latency
        """One-way delay of every message, before jitter (seconds)."""
        self.jitter = jitter
        """Uniform extra delay in [0, jitter) drawn per message."""
        self.loss = loss
        """Probability that a datagram is lost (streams are reliable, as TCP is)."""
        self.deliveries = 0
        self._heap: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._counter = itertools.count()
        self._group: dict[int, int] = {}
        self._trace = 0
        self._codes: dict[type, int] = {}

    # ---- time --------------------------------------------------------------------------

    def call_at(self, at: float, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback(*args)` at simulated time `at` (now, if `at` has passed: time
        never goes backwards). Callbacks due at one instant run in the order scheduled."""
        heapq.heappush(self._heap, (max(at, self.now), next(self._counter), callback, args))

    def call_later(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback(*args)` after one link delay: a message in flight."""
        self.call_at(self.now + self.delay(), callback, *args)

    def next_time(self) -> float | None:
        """When the next callback is due (None when nothing is scheduled)."""
        return self._heap[0][0] if self._heap else None

    def step(self) -> None:
        """Run the next callback."""
        at, _, callback, args = heapq.heappop(self._heap)
        self.now = at
        callback(*args)

    def run_until(self, t: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t:
            at, _, callback, args = heapq.heappop(heap)
            self.now = at
            callback(*args)
        self.now = max(self.now, t)

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    # ---- links -------------------------------------------------------------------------

    def delay(self) -> float:
        return self.latency + self.rng.random() * self.jitter

    def lost(self) -> bool:
        """Whether the datagram about to be sent is lost (one draw per datagram)."""
        return self.rng.random() < self.loss

    def reachable(self, a: int, b: int) -> bool:
        return self._group.get(a, 0) == self._group.get(b, 0)

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Messages flow only within a group; nodes in no group form one more group."""
        self._group = {i: g + 1 for g, members in enumerate(groups) for i in members}

    def heal(self) -> None:
        self._group = {}

    @property
    def partitioned(self) -> bool:
        return bool(self._group)

    # ---- trace -------------------------------------------------------------------------

    def note(self, source: int, target: int, message: object) -> None:
        """Record one delivery (time, endpoints, message type) in the trace digest."""
        kind = type(message)
        code = self._codes.get(kind)
        if code is None:
            code = self._codes[kind] = zlib.crc32(kind.__qualname__.encode())
        self.deliveries += 1
        # ints and floats hash the same in every process (unlike str and bytes)
        self._trace = hash((self._trace, self.now, source, target, code))

    @property
    def digest(self) -> str:
        """16 hex digits over every delivery so far: equal for equal seeds and parameters."""
        return f"{self._trace & 0xFFFF_FFFF_FFFF_FFFF:016x}"


class OnLoop:
    """What every stepper on an `EventLoop` offers: its clock, its running, its links'
    partitions and its trace (`self.loop` is the loop)."""

    loop: EventLoop

    @property
    def now(self) -> float:
        return self.loop.now

    @property
    def digest(self) -> str:
        """Hash of every delivery so far: equal for equal seeds and parameters."""
        return self.loop.digest

    def run_until(self, t: float) -> None:
        self.loop.run_until(t)

    def run_for(self, dt: float) -> None:
        self.loop.run_for(dt)

    def partition(self, groups: list[list[int]]) -> None:
        """Messages flow only within a group; nodes in no group form one more."""
        self.loop.partition(groups)

    def heal(self) -> None:
        self.loop.heal()
