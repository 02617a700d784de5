"""Which of a node's GPUs (indices 0..n-1) each task holds, whole or shared. Sans-IO.

Ray's rules: a task asking for one GPU or more gets that many whole GPUs (rounded up); a
task asking for a fraction gets a share of one GPU that has that much left, so two tasks
of 0.5 run on one GPU. A task learns its indices (`CUDA_VISIBLE_DEVICES`), so the node,
not a count, must say which GPU is whose.

Shares are counted in ten-thousandths of a GPU (Ray's granularity) as integers, so that
fractions add back up exactly: with floats, a task of 0.3 and one of 0.1 that end in the
order they started leave the GPU at 0.9999999999999999, and a whole-GPU task never fits
on it again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from p2pexec.errors import LocalUsageError

UNITS = 10_000
"""Shares of one GPU: a task asking for 0.25 holds 2,500 units of one index."""


def gpu_demand(amount: float) -> float:
    """What a task may ask for (Ray's rule): a fraction below one, or whole GPUs from one
    on (a fraction of several GPUs would mean sharing GPUs no other task can use)."""
    if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not (
            0 <= amount < math.inf):
        raise LocalUsageError(f"num_gpus must be a number of at least 0, got {amount!r}")
    if amount > 1 and amount != int(amount):
        raise LocalUsageError(f"num_gpus={amount}: above 1, GPUs come whole; ask for "
                              f"{math.ceil(amount)} (or a fraction below 1 to share one)")
    if 0 < amount < 1 / UNITS:
        raise LocalUsageError(f"num_gpus={amount} is below the smallest share of a GPU, "
                              f"1/{UNITS}")
    return float(amount)


def units_of(amount: float) -> int:
    """Units a demand takes: whole GPUs (rounded up) from one on, else its share."""
    if amount >= 1:
        return math.ceil(amount) * UNITS
    return max(1, round(amount * UNITS))


class GpuAllocator:
    """The free share of each GPU index, and which shares a new task gets."""

    def __init__(self, count: int) -> None:
        self.free = [UNITS] * count
        """Units left on each GPU, by index."""

    def choose(self, amount: float) -> dict[int, int] | None:
        """{index: units} a task asking for `amount` would get now (None: not free).
        Whole GPUs: the lowest free indices. A fraction: the GPU with the least left
        that still has enough, so fractions pack together and whole GPUs stay free for
        whole requests."""
        free = self.free
        if amount >= 1:
            wanted = math.ceil(amount)
            whole = [index for index, left in enumerate(free) if left == UNITS][:wanted]
            return dict.fromkeys(whole, UNITS) if len(whole) == wanted else None
        units = units_of(amount)
        fitting = [(left, index) for index, left in enumerate(free) if left >= units]
        return {min(fitting)[1]: units} if fitting else None

    def fits(self, amount: float) -> bool:
        return self.choose(amount) is not None

    def acquire(self, amount: float) -> dict[int, int]:
        """Take the shares `choose` names (callers check `fits` first)."""
        shares = self.choose(amount)
        assert shares is not None, f"{amount} GPUs taken without fitting"
        for index, units in shares.items():
            self.free[index] -= units
        return shares

    def release(self, shares: dict[int, int]) -> None:
        for index, units in shares.items():
            self.free[index] += units

    def free_amount(self) -> float:
        """GPUs free in all, fragments included (what the node reports as available)."""
        return sum(self.free) / UNITS

    def validate(self, holdings: Iterable[dict[int, int]]) -> None:
        """Every index is shared out exactly: its free units plus the units tasks hold
        make one GPU, and a task takes either whole GPUs or a share of one."""
        used = [0] * len(self.free)
        for shares in holdings:
            assert len(shares) == 1 or all(units == UNITS for units in shares.values()), (
                f"a share of several GPUs: {shares}")
            for index, units in shares.items():
                assert 0 <= index < len(used), f"GPU {index} of {len(used)}"
                assert 0 < units <= UNITS, f"GPU {index}: a share of {units} units"
                used[index] += units
        for index, (left, taken) in enumerate(zip(self.free, used, strict=True)):
            assert left + taken == UNITS, (
                f"GPU {index}: {left} units free but {taken} held, of {UNITS}")
