"""Resource accounting of one node: what it offers and what is free. Sans-IO.

Holdings live with whoever holds them (a task's `held` dict, an actor's creation); this
class only moves amounts between them and `available`, so `available == total - sum of
holdings` always holds and `validate` can check it.
"""

from __future__ import annotations

from collections.abc import Iterable

CPU = "CPU"
LENT = "_lent"
"""Key in a holding: CPUs a task blocked in get/wait lent back to the node."""


def covers(amounts: dict[str, float], demand: dict[str, float]) -> bool:
    """`amounts` has at least what `demand` asks for, resource by resource."""
    return all(amounts.get(name, 0.0) >= amount for name, amount in demand.items())


class Resources:
    """Totals and free amounts by name ("CPU", "gpu", ...)."""

    def __init__(self, total: dict[str, float]) -> None:
        self.total = dict(total)
        self.available = dict(total)

    def fits(self, demand: dict[str, float]) -> bool:
        """Free right now."""
        return covers(self.available, demand)

    def feasible(self, demand: dict[str, float]) -> bool:
        """Could ever fit on this node, once everything else is done."""
        return covers(self.total, demand)

    def acquire(self, demand: dict[str, float]) -> dict[str, float]:
        """Take `demand` and return it as a holding (callers check `fits` first)."""
        available = self.available
        for name, amount in demand.items():
            available[name] = available.get(name, 0.0) - amount
        return dict(demand)

    def release(self, held: dict[str, float]) -> None:
        """Give a holding back; CPUs it lent are already back."""
        available = self.available
        for name, amount in held.items():
            if name in available:
                available[name] += amount
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
        above the total. Only CPU may be oversubscribed, by CPUs blocked tasks took back."""
        used = dict.fromkeys(self.total, 0.0)
        for held in holdings:
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
