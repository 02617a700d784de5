"""The node's worker processes as the scheduler sees them, and how deep to prefetch. Sans-IO.

The pool keeps one worker per CPU, starts extra ones while CPUs are lent by blocked
workers (Ray's rule: at most `extra_workers` more), remembers which code each worker has
already been sent, and judges from measured run times how many tasks a busy worker may
queue (`depth`). It decides nothing about tasks: the scheduler does.

Each worker runs the work of one runtime environment for its life (Ray's rule: a
process's sys.path, modules, cwd and variables cannot be switched back safely). Work of
an environment no idle worker has starts a worker for it, and idle workers of other
environments beyond one per CPU are retired to make room.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from p2pexec.exec.config import ExecConfig
from p2pexec.exec.instructions import Instruction, StartWorker, StopWorker
from p2pexec.exec.runtime_env import RuntimeEnv


@dataclass(slots=True)
class WorkerState:
    worker_id: int
    actor_id: bytes | None = None
    runtime_env: RuntimeEnv | None = None
    """The environment it was started for: it runs only work of that environment."""
    ready: bool = False
    """The process said READY; until then nothing is sent to it but its configuration."""
    stack: list[bytes] = field(default_factory=list)
    """Tasks started on this worker, outermost first; nested ones run on top."""
    queued: deque[bytes] = field(default_factory=deque)
    """Tasks sent ahead, not started yet."""
    known_code: set[bytes] = field(default_factory=set)
    retiring: bool = False
    """Stopped to make room for a worker of another environment: gone once it dies."""

    @property
    def idle(self) -> bool:
        return self.ready and not self.stack and not self.queued and not self.retiring


class WorkerPool:
    """Worker ids, their states and the code they hold; appends StartWorker to `out`."""

    def __init__(self, config: ExecConfig, cpus: float, out: list[Instruction]) -> None:
        self.config = config
        self.workers: dict[int, WorkerState] = {}
        self.code: dict[bytes, bytes] = {}
        self._out = out
        self._next_worker = 1
        self._target = max(1, int(cpus)) if cpus > 0 else 0
        """One pool worker per CPU; none on a node that offers no CPUs (it only submits)."""
        self._durations: dict[bytes | None, float] = {}

    def start_pool(self) -> None:
        """The initial pool: one worker per CPU."""
        for _ in range(self._target):
            self.start_worker(None)

    def start_worker(self, actor_id: bytes | None, runtime_env: RuntimeEnv | None = None
                     ) -> int:
        worker_id = self._next_worker
        self._next_worker += 1
        self.workers[worker_id] = WorkerState(worker_id, actor_id, runtime_env)
        self._out.append(StartWorker(worker_id, actor_id, runtime_env))
        return worker_id

    def pool_workers(self) -> Iterator[WorkerState]:
        """Workers that run plain tasks (not an actor's), less those being retired."""
        return (w for w in self.workers.values() if w.actor_id is None and not w.retiring)

    def idle_worker(self, runtime_env: RuntimeEnv | None = None) -> WorkerState | None:
        """An idle pool worker of that environment."""
        for worker in self.workers.values():  # once per task scheduled: checks inline
            if worker.actor_id is None and worker.idle and worker.runtime_env == runtime_env:
                return worker
        return None

    def has_idle(self) -> bool:
        """Some pool worker, of any environment, is idle."""
        return any(w.actor_id is None and w.idle for w in self.workers.values())

    def replace_lost(self) -> None:
        """A pool worker died: keep one per CPU."""
        if sum(1 for _ in self.pool_workers()) < self._target:
            self.start_worker(None)

    def starting(self) -> bool:
        """A pool worker (not an actor's) has been started and is not ready yet."""
        return any(not w.ready for w in self.pool_workers())

    def maybe_start_extra(self, runtime_env: RuntimeEnv | None = None) -> None:
        """Work of `runtime_env` waits and no worker of it is idle (CPUs are lent by
        blocked workers, or the idle ones run other environments): start one more, one
        at a time per environment, up to the limit, and retire idle workers of other
        environments while the pool is over one per CPU."""
        pool = list(self.pool_workers())
        if any(not w.ready and w.runtime_env == runtime_env for w in pool):
            return  # one is starting already
        size, limit = len(pool), self._target + self.config.extra_workers()
        if size >= limit:  # full: an idle worker of another environment makes room
            size -= self._retire_idle(runtime_env, size - limit + 1)
        if size < limit:
            self.start_worker(None, runtime_env)
            self._retire_idle(runtime_env, size + 1 - self._target)

    def _retire_idle(self, runtime_env: RuntimeEnv | None, count: int) -> int:
        """Stop up to `count` idle workers of other environments (Ray too stops idle
        workers beyond its soft limit); how many. A retired worker's death starts no
        replacement: the new one took its place."""
        retired = 0
        for worker in self.workers.values():
            if retired >= count:
                break
            if (worker.actor_id is None and worker.idle
                    and worker.runtime_env != runtime_env):
                worker.retiring = True
                self._out.append(StopWorker(worker.worker_id))
                retired += 1
        return retired

    def register_code(self, code_hash: bytes, pickled: bytes) -> None:
        self.code.setdefault(code_hash, pickled)

    def code_to_ship(self, worker: WorkerState, code_hash: bytes | None) -> bytes | None:
        """The pickled code to send with a task, the first time this worker needs it."""
        if code_hash is None or code_hash in worker.known_code:
            return None
        worker.known_code.add(code_hash)
        return self.code[code_hash]

    def record_duration(self, code_hash: bytes | None, seconds: float) -> None:
        previous = self._durations.get(code_hash)
        self._durations[code_hash] = max(1e-6, seconds if previous is None
                                         else 0.8 * previous + 0.2 * seconds)

    def expected_seconds(self, code_hash: bytes | None) -> float | None:
        """How long the function's runs took here lately (EWMA); None if it never ran."""
        return self._durations.get(code_hash)

    def is_tiny(self, code_hash: bytes | None) -> bool:
        """Its runs took less than `prefetch_seconds` lately (known to be short)."""
        duration = self._durations.get(code_hash)
        return duration is not None and duration < self.config.prefetch_seconds

    def depth(self, code_hash: bytes | None) -> int:
        """How many tasks of this function may queue at a busy worker: about
        `prefetch_seconds` of work, judged from how long its earlier runs took."""
        duration = self._durations.get(code_hash)
        if duration is None:
            return 1
        config = self.config
        return max(1, min(config.max_prefetch, int(config.prefetch_seconds / duration)))
