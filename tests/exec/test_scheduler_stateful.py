"""Random sequences of stimuli against the scheduler, its invariants checked after each.

The machine plays the node's driver and its workers: it submits tasks (with and without
arguments from earlier results), actor creations and calls, finishes what workers run
(values and errors), kills workers and actors, blocks workers in get/wait, moves the clock
and drops references, each only when a real driver or worker could. After every step
`Scheduler.validate()` must hold and no stimulus may raise.
"""

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pexec.exec import protocol as p
from p2pexec.exec.config import ExecConfig
from p2pexec.exec.events import (
    ActorKilled,
    ClientLeft,
    CodeRegistered,
    GetRequested,
    Put,
    RefsChanged,
    Started,
    Submitted,
    TaskFinished,
    Tick,
    WorkerDied,
    WorkerReady,
)
from p2pexec.exec.instructions import Send, StartWorker, StopWorker
from p2pexec.exec.refs import return_id
from p2pexec.exec.resources import gpu_ids
from p2pexec.exec.scheduler import DRIVER, Scheduler
from p2pexec.exec.task import ACTOR_CALL, ACTOR_CREATE, NODE_AFFINITY, SPREAD, TASK, TaskSpec

CODE = b"c" * 16
ARGS = [p.INLINE, b"args", []]
OK = [p.INLINE, b"value", []]
ERROR = [p.ERROR, b"pickled exception"]
DEMANDS = st.sampled_from([{}, {"CPU": 1.0}, {"CPU": 2.0}, {"CPU": 1.0, "gpu": 1.0},
                           {"CPU": 4.0}, {"CPU": 1.0, "GPU": 1.0}, {"GPU": 0.5},
                           {"CPU": 1.0, "GPU": 2.0}])
STRATEGIES = st.sampled_from([{}, {"strategy": SPREAD}] + [
    {"strategy": NODE_AFFINITY, "affinity": node, "soft": soft}
    for node in (b"", b"elsewhere") for soft in (False, True)])
"""Alone, SPREAD and affinity to this node (id b"") run here; hard affinity to another
node fails, soft runs here."""


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = Scheduler(ExecConfig(num_cpus=2, max_prefetch=2, max_extra_workers=2),
                              {"gpu": 1.0, "GPU": 2.0})
        self.ids = itertools.count(1)
        self.requests = itertools.count(1)
        self.now = 0.0
        self.starting: set[int] = set()
        """Workers started whose process has not said READY yet."""
        self.alive: set[int] = set()
        self.stopped: set[int] = set()
        """Workers the core told the driver to kill; their exit is still to come."""
        self.held: list[bytes] = []
        """Objects the driver holds a reference to, so it may pass them as arguments."""
        self.actors: list[bytes] = []
        self.worker_held: dict[int, list[bytes]] = {}
        """Results of tasks a worker submitted (nested parallelism): only it holds them."""
        self.client = -1
        """The attached driver now connected (negative holder ids); a new one after each
        leaves."""
        self.sent_gpus: dict[bytes, list[int]] = {}
        """The GPU ids the last `Execute` of each task named."""
        self.apply(CodeRegistered(CODE, b"pickled"), Started())

    def apply(self, *events) -> None:
        for instruction in self.core.handle(*events):
            if isinstance(instruction, StartWorker):
                self.starting.add(instruction.worker)
                self.alive.add(instruction.worker)
            elif isinstance(instruction, StopWorker):
                self.stopped.add(instruction.worker)
            elif isinstance(instruction, Send) and isinstance(instruction.message, p.Execute):
                self.sent_gpus[instruction.message.task_id] = instruction.message.gpu_ids

    def new_id(self) -> bytes:
        return next(self.ids).to_bytes(16, "big")

    def submit(self, kind: int, deps: list[bytes], resources: dict, submitter: int = DRIVER,
               **extra) -> None:
        task_id = extra["actor_id"] if kind == ACTOR_CREATE else self.new_id()
        result = return_id(task_id, 1)
        spec = TaskSpec(task_id, kind, None if kind == ACTOR_CALL else CODE,
                        "method" if kind == ACTOR_CALL else None, ARGS, deps, list(deps),
                        [result], f"task{int.from_bytes(task_id, 'big')}", resources, **extra)
        if submitter == DRIVER:
            self.held.append(result)
        else:
            self.worker_held.setdefault(submitter, []).append(result)
        self.apply(Submitted(spec, submitter))

    def running(self) -> list[tuple[int, bytes]]:
        """(worker, task) pairs a worker is executing and not blocked on: what it could
        report as finished, or block in get from, next."""
        pairs = []
        for worker in self.core.workers.values():
            if worker.stack:
                task_id = worker.stack[-1]
            elif worker.actor_id is not None and self.core.actors.get(worker.actor_id).in_flight:
                task_id = self.core.actors.get(worker.actor_id).in_flight[0]
            else:
                continue
            task = self.core.tasks.get(task_id)
            if task is not None and task.request is None:
                pairs.append((worker.worker_id, task_id))
        return sorted(pairs)

    # ---- the driver ----
    @rule(data=st.data(), resources=DEMANDS, max_retries=st.sampled_from([0, 1, -1]),
          retry_exceptions=st.booleans(), strategy=STRATEGIES)
    def submit_task(self, data, resources, max_retries, retry_exceptions, strategy):
        deps = data.draw(st.lists(st.sampled_from(self.held), max_size=2)) if self.held else []
        self.submit(TASK, deps, resources, max_retries=max_retries,
                    retry_exceptions=retry_exceptions, **strategy)

    @rule(resources=DEMANDS, max_retries=st.sampled_from([0, 1]))
    def submit_with_temporary_argument(self, resources, max_retries):
        """`g.remote(f.remote())`: the driver drops its ref to f's result right after
        submitting g; only g's argument pin keeps it alive. Without this rule the default
        run missed the KeyError that stopped the node (see objects.complete)."""
        self.submit(TASK, [], resources, max_retries=max_retries)
        argument = self.held.pop()
        self.submit(TASK, [argument], {"CPU": 1.0})
        self.apply(RefsChanged(DRIVER, {argument: -1}))

    @rule(data=st.data(), resources=st.sampled_from([{}, {"CPU": 1.0}, {"gpu": 1.0},
                                                     {"GPU": 0.5}]),
          restarts=st.sampled_from([0, 1]), name=st.sampled_from([None, "a", "b"]),
          strategy=STRATEGIES)
    def create_actor(self, data, resources, restarts, name, strategy):
        deps = data.draw(st.lists(st.sampled_from(self.held), max_size=1)) if self.held else []
        actor_id = self.new_id()
        self.submit(ACTOR_CREATE, deps, resources, actor_id=actor_id, actor_name=name,
                    max_restarts=restarts, **strategy)
        self.actors.append(actor_id)

    @precondition(lambda self: self.actors)
    @rule(data=st.data())
    def call_actor(self, data):
        actor_id = data.draw(st.sampled_from(self.actors))
        deps = data.draw(st.lists(st.sampled_from(self.held), max_size=1)) if self.held else []
        self.submit(ACTOR_CALL, deps, {}, actor_id=actor_id)

    @rule()
    def put(self):
        object_id = return_id(self.new_id(), 0)
        self.held.append(object_id)
        self.apply(Put(object_id, OK, [], DRIVER))

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def drop_ref(self, data):
        object_id = data.draw(st.sampled_from(self.held))
        self.held.remove(object_id)
        self.apply(RefsChanged(DRIVER, {object_id: -1}))

    @precondition(lambda self: self.actors)
    @rule(data=st.data())
    def kill_actor(self, data):
        self.apply(ActorKilled(data.draw(st.sampled_from(self.actors))))

    # ---- an attached driver ----
    @rule(data=st.data(), resources=DEMANDS, actor=st.booleans(), detached=st.booleans())
    def attached_driver_submits(self, data, resources, actor, detached):
        """A driver attached through the control socket submits; only it holds results."""
        if actor:
            actor_id = self.new_id()
            self.submit(ACTOR_CREATE, [], {}, submitter=self.client, actor_id=actor_id,
                        detached=detached)
            self.actors.append(actor_id)
        else:
            self.submit(TASK, [], resources, submitter=self.client)

    @rule()
    def attached_driver_leaves(self):
        """Its connection ends: its refs, unstarted tasks and non-detached actors go."""
        self.apply(ClientLeft(self.client))
        self.worker_held.pop(self.client, None)
        self.client -= 1

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0]))
    def tick(self, seconds):
        self.now += seconds
        self.apply(Tick(self.now))

    # ---- the workers ----
    @precondition(lambda self: self.starting)
    @rule(data=st.data())
    def worker_ready(self, data):
        worker = data.draw(st.sampled_from(sorted(self.starting)))
        self.starting.discard(worker)
        self.apply(WorkerReady(worker))

    @precondition(lambda self: self.running())
    @rule(data=st.data(), result=st.sampled_from([OK, ERROR]),
          seconds=st.sampled_from([None, 1e-5, 0.5]))
    def finish(self, data, result, seconds):
        worker, task_id = data.draw(st.sampled_from(self.running()))
        returns = len(self.core.tasks[task_id].spec.return_ids)
        self.apply(TaskFinished(worker, task_id, [result] * returns, None, seconds))

    @precondition(lambda self: self.running())
    @rule(data=st.data(), resources=DEMANDS)
    def submit_from_worker(self, data, resources):
        """A running task submits a child (fib-like trees): the worker holds its result."""
        worker, _task_id = data.draw(st.sampled_from(self.running()))
        self.submit(TASK, [], resources, submitter=worker)

    @precondition(lambda self: self.running())
    @rule(data=st.data(), num_returns=st.sampled_from([-1, 1]),
          timeout=st.sampled_from([None, 1.0]))
    def blocking_get(self, data, num_returns, timeout):
        worker, _task_id = data.draw(st.sampled_from(self.running()))
        mine = self.worker_held.get(worker, [])
        choices = sorted(set(self.held + mine))  # a worker gets refs passed to it or its own
        if not choices:
            return
        object_ids = data.draw(st.lists(st.sampled_from(choices), min_size=1, max_size=3))
        given_back = list(self.core.workers[worker].queued)
        self.apply(GetRequested(worker, next(self.requests), object_ids, num_returns, timeout,
                                given_back, self.now))

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def worker_dies(self, data):
        worker = data.draw(st.sampled_from(sorted(self.alive)))
        self.exit(worker)

    @precondition(lambda self: self.actor_workers())
    @rule(data=st.data())
    def actor_worker_dies(self, data):
        """As `worker_dies`, aimed at actors: they restart, so their deaths chain."""
        self.exit(data.draw(st.sampled_from(self.actor_workers())))

    def actor_workers(self) -> list[int]:
        return sorted(w.worker_id for w in self.core.workers.values()
                      if w.actor_id is not None and w.worker_id in self.alive)

    @precondition(lambda self: self.stopped & self.alive)
    @rule(data=st.data())
    def stopped_worker_exits(self, data):
        self.exit(data.draw(st.sampled_from(sorted(self.stopped & self.alive))))

    def exit(self, worker: int) -> None:
        self.alive.discard(worker)
        self.starting.discard(worker)
        self.stopped.discard(worker)
        self.worker_held.pop(worker, None)
        self.apply(WorkerDied(worker, "killed by the test"))

    @invariant()
    def invariants_hold(self):
        self.core.validate()

    @invariant()
    def running_tasks_were_told_the_gpus_they_hold(self):
        for task_id, task in self.core.tasks.items():
            if task.state.value == "running" and task.spec.kind != ACTOR_CALL:
                assert self.sent_gpus[task_id] == gpu_ids(task.held), task.spec.name


SchedulerMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=40, derandomize=True, database=None, deadline=None)
test_scheduler_state_machine = SchedulerMachine.TestCase
