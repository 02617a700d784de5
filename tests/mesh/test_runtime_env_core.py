"""The scheduler's side of runtime_env, sans-IO: work runs only on workers started for
its environment (idle workers of other environments make room), and work a peer gave
waits for the packages this node lacks, fetched once from that peer, or fails clearly."""

from __future__ import annotations

import dataclasses

from test_scheduler_mesh import OWNER, Checked, node, ok, rid, spec, tid

from p2pexec.exec import protocol as p
from p2pexec.exec.config import ExecConfig
from p2pexec.exec.events import (
    CodeRegistered,
    PackageReady,
    Started,
    Submitted,
    TaskFinished,
    TasksGranted,
    WorkerDied,
    WorkerReady,
)
from p2pexec.exec.instructions import (
    FetchPackage,
    ReturnResult,
    Send,
    StartWorker,
    StopWorker,
)
from p2pexec.exec.runtime_env import RuntimeEnv
from p2pexec.exec.scheduler import DRIVER
from p2pexec.exec.task import ACTOR_CREATE

PACKAGE = b"P" * 32
ENV = RuntimeEnv((("MODE", "test"),), PACKAGE)
OTHER_OWNER = b"Q" * 32


def in_env(n: int, env: RuntimeEnv = ENV):
    return dataclasses.replace(spec(n), runtime_env=env)


def sent(out) -> list[tuple[int, bytes]]:
    return [(i.worker, i.message.task_id) for i in out if type(i) is Send]


def two_ready_workers() -> Checked:
    core = Checked(ExecConfig(num_cpus=2, max_prefetch=1))
    core.handle(CodeRegistered(spec(0).callable_hash, b"code"), Started(), WorkerReady(1),
                WorkerReady(2))
    core.handle(PackageReady(PACKAGE))  # a local client stored it
    return core


def test_work_of_an_environment_runs_on_a_worker_started_for_it():
    core = two_ready_workers()
    # no worker has ENV: one starts for it, and an idle one of another makes room
    assert core.handle(Submitted(in_env(1), DRIVER)) == [StartWorker(3, None, ENV),
                                                         StopWorker(1)]
    # default work does not wait for it: it runs on the default worker left
    assert sent(core.handle(Submitted(spec(2), DRIVER))) == [(2, tid(2))]
    assert core.handle(WorkerDied(1, "stopped")) == []  # retired: not replaced
    assert sent(core.handle(WorkerReady(3))) == [(3, tid(1))]
    assert core.workers[3].runtime_env == ENV
    # both busy: the next of each environment queues behind the worker of its own
    out = core.handle(Submitted(spec(4), DRIVER), Submitted(in_env(5), DRIVER))
    assert sorted(sent(out)) == [(2, tid(4)), (3, tid(5))]


def test_a_worker_of_an_environment_never_takes_other_work():
    core = two_ready_workers()
    core.handle(Submitted(in_env(1), DRIVER))
    core.handle(WorkerReady(3), WorkerDied(1, "stopped"))
    core.handle(TaskFinished(3, tid(1), [ok()], None, 0.01))  # worker 3 idle, ENV
    # default work goes to the default worker left, not to the idle ENV one
    assert sent(core.handle(Submitted(spec(2), DRIVER))) == [(2, tid(2))]
    other = RuntimeEnv((("MODE", "other"),))
    out = core.handle(Submitted(in_env(3, other), DRIVER))
    assert out == [StartWorker(4, None, other), StopWorker(3)]


def test_an_actor_keeps_its_environment_for_its_life():
    core = two_ready_workers()
    create = dataclasses.replace(in_env(9), kind=ACTOR_CREATE, actor_id=tid(9),
                                 max_restarts=1)
    assert core.handle(Submitted(create, DRIVER)) == [StartWorker(3, tid(9), ENV)]
    core.handle(WorkerReady(3), TaskFinished(3, tid(9), [ok()], None, 0.01))
    # its restart runs in it too
    assert core.handle(WorkerDied(3, "killed")) == [StartWorker(4, tid(9), ENV)]


def test_granted_work_waits_for_its_package_fetched_once_from_the_granting_node():
    thief = node(1, workers_ready=True)
    out = thief.handle(TasksGranted(OWNER, [in_env(1), in_env(2)], {}, {}))
    assert out == [FetchPackage(PACKAGE, OWNER)]  # once, for both
    assert [thief.tasks[tid(n)].state.value for n in (1, 2)] == ["waiting", "waiting"]
    out = thief.handle(PackageReady(PACKAGE, OWNER))
    assert StartWorker(2, None, ENV) in out and PACKAGE in thief.packages
    out = thief.handle(WorkerReady(2))
    assert sent(out) == [(2, tid(1)), (2, tid(2))]  # one runs, one queues
    # later grants find it here: no fetch
    assert thief.handle(TasksGranted(OWNER, [in_env(3)], {}, {})) == []


def test_a_package_that_cannot_be_had_fails_its_tasks_clearly():
    thief = node(1, workers_ready=True)
    thief.handle(TasksGranted(OWNER, [in_env(1)], {}, {}))
    thief.handle(TasksGranted(OTHER_OWNER, [in_env(2)], {}, {}))  # waits on the same fetch
    out = thief.handle(PackageReady(PACKAGE, OWNER, "its bytes do not hash to its name"))
    (result,) = [i for i in out if type(i) is ReturnResult]
    assert result.owner == OWNER
    kind, text = result.payloads[0][1:]
    assert result.payloads[0][0] == p.SYSTEM_ERROR and kind == "RuntimeEnvSetupError"
    assert "runtime_env of t1 could not be set up" in text and "do not hash" in text
    # the other owner's task is not failed for it: its own owner is asked now
    assert FetchPackage(PACKAGE, OTHER_OWNER) in out and tid(2) in thief.tasks
    assert thief.handle(PackageReady(PACKAGE, OTHER_OWNER))  # then it runs
    assert PACKAGE in thief.packages


def test_an_actor_placed_here_starts_only_once_its_package_is_here():
    home = node(1, workers_ready=True)
    create = dataclasses.replace(in_env(9), kind=ACTOR_CREATE, actor_id=tid(9))
    out = home.handle(TasksGranted(OWNER, [create], {}, {}, placed=True))
    assert FetchPackage(PACKAGE, OWNER) in out
    worker = home.actors.get(tid(9)).worker
    assert sent(home.handle(WorkerReady(worker))) == []  # waits for the package
    assert sent(home.handle(PackageReady(PACKAGE, OWNER))) == [(worker, tid(9))]
    failing = dataclasses.replace(create, task_id=tid(8), actor_id=tid(8),
                                  return_ids=(rid(8),),
                                  runtime_env=RuntimeEnv(working_dir=b"X" * 32))
    home.handle(TasksGranted(OWNER, [failing], {}, {}, placed=True))
    home.handle(PackageReady(b"X" * 32, OWNER, "node O does not hold it"))
    assert not home.actors.alive(tid(8))
