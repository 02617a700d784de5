"""Resource accounting of one node: what it offers and what is free. Sans-IO.

Holdings live with whoever holds them (a task's `held` dict, an actor's creation); this
class only moves amounts between them and `available`, so `available == total - sum of
holdings` always holds and `validate` can check it.

GPUs are also handed out by index (`exec.gpus`): a holding of GPUs names the share of
each index it took under `GPU_SHARE` keys, so it carries its indices wherever it goes
(an actor's creation hands its holding to the actor) and gives them back with it.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pexec.exec.gpus import UNITS, GpuAllocator

CPU = "CPU"
GPU = "GPU"
"""Ray's name: tasks ask with `num_gpus=`, nodes offer `--gpus N` (indices 0..N-1)."""
LENT = "_lent"
"""Key in a holding: CPUs a task blocked in get/wait lent back to the node."""
GPU_SHARE = "_gpu:"
"""Key prefix in a holding: `_gpu:1` is the share of GPU 1 it holds (1.0: all of it)."""


def gpu_ids(held: dict[str, float]) -> list[int]:
    """The GPU indices a holding took, in order ([] for a holding without GPUs)."""
    if GPU not in held:
        return []
    return sorted(_shares(held))


def _shares(held: dict[str, float]) -> dict[int, int]:
    return {int(name[len(GPU_SHARE):]): round(amount * UNITS)
            for name, amount in held.items() if name.startswith(GPU_SHARE)}


def covers(amounts: dict[str, float], demand: dict[str, float]) -> bool:
    """`amounts` has at least what `demand` asks for, resource by resource."""
    return all(amounts.get(name, 0.0) >= amount for name, amount in demand.items())


class Resources:
    """Totals and free amounts by name ("CPU", "GPU", "tpu", ...)."""

    def __init__(self, total: dict[str, float]) -> None:
        self.total = dict(total)
        self.available = dict(total)
        self.gpus = GpuAllocator(int(total.get(GPU, 0)))
        """How much of each GPU index is free: the free amount alone cannot tell two
        halves of one GPU (room for a whole-GPU task) from halves of two (no room)."""

    def fits(self, demand: dict[str, float]) -> bool:
        """Free right now."""
        return covers(self.available, demand) and (
            GPU not in demand or self.gpus.fits(demand[GPU]))

    def feasible(self, demand: dict[str, float]) -> bool:
        """Could ever fit on this node, once everything else is done."""
        return covers(self.total, demand)

    def acquire(self, demand: dict[str, float]) -> dict[str, float]:
        """Take `demand` and return it as a holding (callers check `fits` first)."""
        available = self.available
        for name, amount in demand.items():
            available[name] = available.get(name, 0.0) - amount
        held = dict(demand)
        if GPU in held:
            shares = self.gpus.acquire(held[GPU])
            for index, units in shares.items():
                held[f"{GPU_SHARE}{index}"] = units / UNITS
            held[GPU] = sum(shares.values()) / UNITS  # 1.5 GPUs take 2 whole ones
            available[GPU] = self.gpus.free_amount()
        return held

    def release(self, held: dict[str, float]) -> None:
        """Give a holding back; CPUs it lent are already back."""
        available = self.available
        for name, amount in held.items():
            if name in available:
                available[name] += amount
        if GPU in held:
            self.gpus.release(_shares(held))
            available[GPU] = self.gpus.free_amount()
        held.clear()

    def lend_cpu(self, held: dict[str, float]) -> None:
        """A task blocks in get/wait: its CPUs are free for others until it wakes."""
        cpus = held.pop(CPU, 0.0)
        self.available[CPU] += cpus
        held[LENT] = cpus

    def reacquire_cpu(self, held: dict[str, float]) -> None:
        """Back from get: take the CPUs again even if that oversubscribes (as Ray does)."""
        cpus = held.pop(LENT, None)
        if cpus is not None:
            self.available[CPU] -= cpus
            held[CPU] = cpus

    def validate(self, holdings: Iterable[dict[str, float]]) -> None:
        """Free amounts are the totals minus every holding; nothing is held below zero or
        above the total. Only CPU may be oversubscribed, by CPUs blocked tasks took back.
        Each holding of GPUs names shares of indices adding up to its amount, and the
        allocator's free shares are what no holding names."""
        used = dict.fromkeys(self.total, 0.0)
        gpu_holdings = []
        for held in holdings:
            if GPU in held:
                shares = _shares(held)
                assert sum(shares.values()) == round(held[GPU] * UNITS), (
                    f"a holding of {held[GPU]} GPUs names the shares {shares}")
                gpu_holdings.append(shares)
            for name, amount in held.items():
                assert amount >= 0, f"negative holding {name}={amount}"
                if name in used:
                    used[name] += amount
        for name, total in self.total.items():
            available = self.available[name]
            assert abs(available - (total - used[name])) < 1e-9, (
                f"{name}: available {available} but total {total} - held {used[name]}")
            assert available <= total + 1e-9, f"{name}: available {available} > total {total}"
            assert name == CPU or available >= -1e-9, f"{name}: available {available} < 0"
        self.gpus.validate(gpu_holdings)
        if GPU in self.total:
            assert self.available[GPU] == self.gpus.free_amount(), (
                f"GPU: available {self.available[GPU]} but {self.gpus.free_amount()} free "
                f"by index")
