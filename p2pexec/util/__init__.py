"""Libraries on top of the API, with Ray's names: `ActorPool` (Ray's `ray.util.ActorPool`)."""

from p2pexec.util.actor_pool import ActorPool

__all__ = ["ActorPool"]
