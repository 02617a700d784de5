"""Libraries on top of the API, with Ray's names: `ActorPool` (Ray's `ray.util.ActorPool`)
and, in `p2pexec.util.queue`, `Queue`; in `p2pexec.util.multiprocessing`, `Pool`;
in `p2pexec.util.joblib`, a joblib backend."""

from p2pexec.util.actor_pool import ActorPool

__all__ = ["ActorPool"]
