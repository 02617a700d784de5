"""Settings of the execution layer, every default explained."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from p2pexec.exec.stealing import StealConfig


@dataclass(frozen=True)
class ExecConfig:
    num_cpus: float | None = None
    """CPUs this node offers to tasks; None means os.cpu_count(). One worker process is
    started per CPU (at least one)."""
    inline_limit: int = 100 * 1024
    """Values up to this many bytes travel inside frames; larger ones go to shared memory
    once and are mapped by readers (Ray's limit for inlined returns is also 100 KiB)."""
    prefetch_seconds: float = 0.002
    """Work queued at a busy worker beyond the task it runs, so it never idles waiting for
    the next frame: depth = prefetch_seconds / the function's average run time, between 1
    and max_prefetch (a 10 us task queues 64, a 1 s task queues 1). Only tasks that fit in
    the resources the worker already holds, and need no GPUs, queue."""
    max_prefetch: int = 64
    """Upper bound of that depth: enough to cover the node's reaction time for tasks of
    a few microseconds, small enough that a mis-estimate strands little work."""
    max_extra_workers: int | None = None
    """Workers started beyond num_cpus while others are blocked in get/wait (their CPUs are
    lent out). None means 4 * num_cpus + 4; past this, blocked workers run what they wait
    for on their own stack, and nothing else."""
    object_store_memory: int | None = None
    """Bytes of shared memory this node's objects may fill before the least recently used
    ones are spilled to disk. None: 30% of physical memory (Ray's default), and at most
    80% of what /dev/shm can hold."""
    spill_dir: str | None = None
    """Where spilled objects go. None: `<data dir>/spill` for a node that joined a
    cluster, a private temporary directory for an embedded one (removed at shutdown)."""
    package_dir: str | None = None
    """Where runtime_env packages (working_dir, py_modules) are kept and unpacked, one
    directory per content hash. None: `<data dir>/packages` for a node that joined a
    cluster, a private temporary directory for an embedded one; emptied at start and
    removed at shutdown either way (a node that comes back fetches them again)."""

    infeasible_grace: float = 10.0
    """In a cluster, seconds after this node first hears of its peers before a task
    that no live member could ever fit fails with ResourcesUnavailableError (until then
    the membership may still be filling in; alone, such a task waits with a warning)."""
    drain_timeout: float = 10.0
    """Seconds a node leaving its cluster gracefully (Ctrl-C, SIGTERM, px.shutdown) waits
    for the tasks peers gave it to finish and for their large results to be fetched,
    after handing back those that had not started. Tasks still running then are killed
    and run again by their owners, with no attempt charged (the leave was not their
    fault)."""
    actor_relocate_timeout: float = 60.0
    """In a cluster, seconds a node calling an actor another node made keeps looking for
    it after the actor's node died, before the calls waiting for it (those its
    max_task_retries allowed to wait) fail with ActorDiedError. Only the actor's creator
    knows whether it restarts, so the caller looks until a live node has it: long
    enough for the creator to notice the death (a few seconds of failure detection) and
    place it again, also when it waits a while for a node with room."""
    actor_relocate_interval: float = 1.0
    """Seconds between two lookups of such an actor (each a DHT lookup, which itself
    asks again after 50 ms, 250 ms and 1 s while it finds no record)."""
    steal: StealConfig = field(default_factory=StealConfig)
    """How this node takes work from its peers and gives its own (see exec.stealing)."""

    def store_memory(self) -> int:
        """`object_store_memory`, with None resolved by its formula."""
        if self.object_store_memory is not None:
            return self.object_store_memory
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        limit = int(0.3 * physical)
        try:
            shm_fs = os.statvfs("/dev/shm")
            limit = min(limit, int(0.8 * shm_fs.f_blocks * shm_fs.f_frsize))
        except OSError:
            pass
        return limit

    def cpus(self) -> float:
        return float(self.num_cpus if self.num_cpus is not None else (os.cpu_count() or 1))

    def extra_workers(self) -> int:
        if self.max_extra_workers is not None:
            return self.max_extra_workers
        return int(4 * self.cpus()) + 4
