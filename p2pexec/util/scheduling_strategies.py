"""Ray's `ray.util.scheduling_strategies`: the strategy classes `scheduling_strategy=`
takes besides "DEFAULT" and "SPREAD"."""

from p2pexec.scheduling import NodeAffinitySchedulingStrategy

__all__ = ["NodeAffinitySchedulingStrategy"]
