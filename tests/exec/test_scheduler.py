"""The sans-IO scheduler: stimuli in, instruction lists out. No processes, no clock."""

import dataclasses

import pytest

from p2pexec import errors
from p2pexec.exec import protocol as p
from p2pexec.exec.config import ExecConfig
from p2pexec.exec.events import (
    ActorKilled,
    CancelRequested,
    CodeRegistered,
    GetRequested,
    Put,
    RefsChanged,
    Started,
    Submitted,
    TaskFinished,
    TasksGranted,
    Tick,
    WorkerDied,
    WorkerReady,
)
from p2pexec.exec.instructions import (
    CancelRemote,
    Completed,
    Interrupt,
    Recycle,
    ReturnResult,
    Send,
    StartWorker,
    StopWorker,
    Unlink,
    Warn,
)
from p2pexec.exec.refs import return_id
from p2pexec.exec.scheduler import DRIVER, STOLEN, Scheduler
from p2pexec.exec.serialization import from_payload, system_error_payload
from p2pexec.exec.task import ACTOR_CALL, ACTOR_CREATE, TASK, TaskSpec

ARGS = [p.INLINE, b"args", []]
CODE = b"h" * 16


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def rid(n: int) -> bytes:
    return return_id(tid(n), 1)


def spec(n: int, deps=(), cpus=1.0, kind=TASK, actor=None, **extra) -> TaskSpec:
    return TaskSpec(tid(n), kind, CODE if kind != ACTOR_CALL else None,
                    "m" if kind == ACTOR_CALL else None, ARGS, list(deps), list(deps), [rid(n)],
                    f"t{n}", {"CPU": cpus} if cpus else {}, actor_id=actor, **extra)


def exec_msg(n, code=None, deps=None, nested=False, kind=TASK, target=CODE, resources=None):
    code_hash, method = (None, target) if kind == ACTOR_CALL else (target, None)
    if resources is None:
        resources = {} if kind == ACTOR_CALL else {"CPU": 1.0}
    return p.Execute(kind, tid(n), code_hash, code, method, ARGS, deps or {}, [rid(n)],
                     f"t{n}", nested, resources)


def ok(value: bytes = b"v") -> list:
    return [p.INLINE, value, []]


class CheckedScheduler(Scheduler):
    """Checks every invariant after each batch a test hands it."""

    def handle(self, *events):
        out = super().handle(*events)
        self.validate()
        return out


@pytest.fixture
def core():
    scheduler = CheckedScheduler(ExecConfig(num_cpus=2, max_prefetch=1))
    assert scheduler.handle(CodeRegistered(CODE, b"code"), Started()) == [
        StartWorker(1), StartWorker(2)]
    return scheduler


def test_task_waits_for_a_ready_worker_and_ships_code_once(core):
    assert core.handle(Submitted(spec(1), DRIVER)) == []
    assert core.handle(WorkerReady(1)) == [Send(1, exec_msg(1, code=b"code"))]
    assert core.handle(TaskFinished(1, tid(1), [ok()]), Submitted(spec(2), DRIVER)) == [
        Completed((rid(1),)), Send(1, exec_msg(2))]
    assert core.objects.payload(rid(1)) == ok()


def test_dependency_resolved_before_the_task_runs(core):
    assert core.handle(WorkerReady(1), WorkerReady(2), Submitted(spec(1), DRIVER),
                       Submitted(spec(2, deps=[rid(1)]), DRIVER)) == [
        Send(1, exec_msg(1, code=b"code"))]
    assert core.handle(TaskFinished(1, tid(1), [ok(b"one")])) == [
        Completed((rid(1),)), Send(1, exec_msg(2, deps={rid(1): ok(b"one")}))]


def test_failed_dependency_fails_dependent_without_running_it(core):
    core.handle(WorkerReady(1), Submitted(spec(1), DRIVER),
                Submitted(spec(2, deps=[rid(1)]), DRIVER))
    error = [p.ERROR, b"pickled error"]
    assert core.handle(TaskFinished(1, tid(1), [error])) == [
        Completed((rid(1),)), Completed((rid(2),))]
    assert core.objects.payload(rid(2)) == error


def test_busy_worker_prefetches_only_when_none_idle(core):
    out = core.handle(WorkerReady(1), *(Submitted(spec(n), DRIVER) for n in (1, 2, 3)))
    # one runs; the others wait for the second worker, which is starting
    assert out == [Send(1, exec_msg(1, code=b"code"))]
    # once it is ready it takes one, and the last is queued behind a busy worker
    assert core.handle(WorkerReady(2)) == [Send(2, exec_msg(2, code=b"code")),
                                           Send(1, exec_msg(3))]
    assert core.available["CPU"] == 0.0
    assert core.handle(TaskFinished(1, tid(1), [ok()])) == [Completed((rid(1),))]
    assert core.workers[1].stack == [tid(3)]
    assert core.available["CPU"] == 0.0


def test_blocked_worker_gives_back_queue_lends_cpu_and_runs_awaited_task(core):
    core.handle(WorkerReady(1), Submitted(spec(1), DRIVER),
                Submitted(spec(2), DRIVER))  # 2 is queued behind task 1 on worker 1
    # task 1 submits task 3 and waits for it and for task 2
    out = core.handle(Submitted(spec(3), 1),
                      GetRequested(1, 7, [rid(3), rid(2)], -1, None, [tid(2)], now=0.0))
    assert out[0] == Send(1, exec_msg(3, nested=True))
    assert core.available["CPU"] == 1.0  # lent CPU taken by nested task 3
    assert core.workers[1].stack == [tid(1), tid(3)]
    out = core.handle(TaskFinished(1, tid(3), [ok(b"3")]))
    assert out[:2] == [Completed((rid(3),)), Send(1, exec_msg(2, nested=True))]
    out = core.handle(TaskFinished(1, tid(2), [ok(b"2")]))
    assert out == [Completed((rid(2),)),
                   Send(1, p.Values(7, {rid(3): ok(b"3"), rid(2): ok(b"2")}, [], False))]
    assert core.available["CPU"] == 1.0  # task 1 holds its CPU again


def test_more_workers_start_while_every_worker_is_blocked(core):
    core.handle(WorkerReady(1), WorkerReady(2), Submitted(spec(1), DRIVER),
                Submitted(spec(2), DRIVER), Submitted(spec(8, deps=[rid(1)]), DRIVER))
    assert core.handle(GetRequested(1, 1, [rid(2)], -1, None, [], now=0.0),
                       GetRequested(2, 1, [rid(8)], -1, None, [], now=0.0)) == []
    assert core.available["CPU"] == 2.0
    assert core.handle(Submitted(spec(5), DRIVER)) == [StartWorker(3)]
    assert core.handle(WorkerReady(3)) == [Send(3, exec_msg(5, code=b"code"))]


def test_worker_death_retries_then_fails_with_worker_crashed(core):
    core.handle(WorkerReady(1), Submitted(spec(1, max_retries=1), DRIVER))
    assert core.handle(WorkerDied(1, "pid 9 killed by SIGSEGV")) == [
        # a replacement starts; task 1 waits for a worker
        Warn("the worker process running task t1 died (pid 9 killed by SIGSEGV); "
             "retrying it (retry 1 of 1)"),
        StartWorker(3)]
    assert core.handle(WorkerReady(2)) == [Send(2, exec_msg(1, code=b"code"))]
    out = core.handle(WorkerDied(2))
    assert Completed((rid(1),)) in out
    with pytest.raises(errors.WorkerCrashedError, match="2 attempts"):
        from_payload(core.objects.payload(rid(1)))


def test_release_frees_object_and_its_shared_memory(core):
    shared = [p.SHARED, "p2px_1_seg", 10, [1000]]
    assert core.handle(Put(rid(1), shared, [], DRIVER)) == [
        Completed((rid(1),))]  # wakes a waiting driver
    assert core.handle(RefsChanged(5, {rid(1): +1}), RefsChanged(DRIVER, {rid(1): -1})) == []
    assert core.handle(RefsChanged(5, {rid(1): -1})) == [Unlink("p2px_1_seg")]
    assert not core.objects.known(rid(1))


def test_object_argument_kept_alive_until_task_finishes(core):
    core.handle(Put(rid(50), ok(b"arg"), [], DRIVER), Submitted(spec(1, deps=[rid(50)]), DRIVER),
                RefsChanged(DRIVER, {rid(50): -1}))
    assert core.objects.known(rid(50))
    core.handle(WorkerReady(1))
    core.handle(TaskFinished(1, tid(1), [ok()]))
    assert not core.objects.known(rid(50))


def test_infeasible_task_warns_once_and_waits(core):
    out = core.handle(WorkerReady(1), Submitted(spec(1, cpus=8), DRIVER))
    assert len(out) == 1 and isinstance(out[0], Warn) and "needs {'CPU': 8}" in out[0].text


def test_wait_with_timeout_answers_partial_at_deadline(core):
    core.handle(WorkerReady(1), Submitted(spec(1), DRIVER))
    core.handle(Put(rid(60), ok(), [], DRIVER))
    assert core.handle(GetRequested(1, 3, [rid(60), rid(1)], 2, 5.0, [], now=10.0)) == []
    assert core.next_deadline() == 15.0
    assert core.handle(Tick(14.9)) == []
    assert core.handle(Tick(15.0)) == [Send(1, p.Values(3, {}, [rid(60)], True))]


def test_actor_calls_wait_for_creation_and_keep_order(core):
    actor = tid(100)
    create = TaskSpec(actor, ACTOR_CREATE, CODE, None, ARGS, [], [], [return_id(actor, 1)],
                      "A.__init__", {}, actor_id=actor)
    assert core.handle(Submitted(create, DRIVER)) == [StartWorker(3, actor)]
    assert core.handle(Submitted(spec(1, kind=ACTOR_CALL, actor=actor, cpus=0), DRIVER),
                       Submitted(spec(2, kind=ACTOR_CALL, actor=actor, cpus=0), DRIVER)) == []
    assert core.handle(WorkerReady(3)) == [Send(3, p.Execute(
        ACTOR_CREATE, actor, CODE, b"code", None, ARGS, {}, [return_id(actor, 1)],
        "A.__init__", False, {}))]
    assert core.handle(TaskFinished(3, actor, [ok()])) == [
        Completed((return_id(actor, 1),)),
        Send(3, exec_msg(1, kind=ACTOR_CALL, target="m")),
        Send(3, exec_msg(2, kind=ACTOR_CALL, target="m"))]


def test_killed_actor_fails_pending_calls(core):
    actor = tid(100)
    create = TaskSpec(actor, ACTOR_CREATE, CODE, None, ARGS, [], [], [return_id(actor, 1)],
                      "A.__init__", {}, actor_id=actor, actor_name="a")
    core.handle(Submitted(create, DRIVER), WorkerReady(3), TaskFinished(3, actor, [ok()]),
                Submitted(spec(1, kind=ACTOR_CALL, actor=actor, cpus=0), DRIVER))
    assert core.lookup_actor("a") == actor
    assert core.actor_alive(actor) is True
    out = core.handle(ActorKilled(actor))
    assert core.actor_alive(actor) is False
    assert StopWorker(3) in out and Completed((rid(1),)) in out
    assert core.objects.payload(rid(1))[:2] == system_error_payload(
        errors.ActorDiedError(""))[:2]
    assert core.lookup_actor("a") is None


def test_argument_segment_is_recycled_only_when_the_worker_unmapped_it(core):
    core.handle(WorkerReady(1))
    freed = {}
    for n, unmapped in ((1, True), (2, False)):
        task = dataclasses.replace(spec(n), args=[p.SHARED, f"p2px_1_args{n}", 10, [1000]])
        core.handle(Submitted(task, DRIVER))
        out = core.handle(TaskFinished(1, tid(n), [ok()], None, 0.01, args_unmapped=unmapped))
        freed[n] = [i for i in out if isinstance(i, (Recycle, Unlink))]
    assert freed == {1: [Recycle("p2px_1_args1")], 2: [Unlink("p2px_1_args2")]}


@pytest.mark.parametrize("how", ["worker exits", "task raises"])
def test_failed_argument_freed_by_its_dependent_does_not_stop_the_node(core, how):
    # px.get(ident.remote(error.remote())): the driver drops error's ref once ident is
    # submitted, so failing ident unpins error's result while that result is completing
    core.handle(WorkerReady(1), Submitted(spec(1, max_retries=0), DRIVER),
                Submitted(spec(2, deps=[rid(1)]), DRIVER), RefsChanged(DRIVER, {rid(1): -1}))
    if how == "worker exits":
        out = core.handle(WorkerDied(1, "pid 9 exit code 1"))
        assert out[:2] == [Completed((rid(1),)), Completed((rid(2),))]
        with pytest.raises(errors.WorkerCrashedError, match="ran out of retries"):
            from_payload(core.objects.payload(rid(2)))
    else:
        error = [p.ERROR, b"pickled error"]
        assert core.handle(TaskFinished(1, tid(1), [error])) == [
            Completed((rid(1),)), Completed((rid(2),))]
        assert core.objects.payload(rid(2)) == error
    assert not core.objects.known(rid(1))  # nobody holds it any more: freed, once
    core.handle(WorkerReady(2))
    next_run = (Send(2, exec_msg(3, code=b"code")) if how == "worker exits"
                else Send(1, exec_msg(3)))
    assert core.handle(Submitted(spec(3), DRIVER)) == [next_run]  # the node carries on


def test_actor_whose_worker_dies_while_creating_restarts_with_its_resources_back(core):
    actor = tid(100)
    create = TaskSpec(actor, ACTOR_CREATE, CODE, None, ARGS, [], [], [return_id(actor, 1)],
                      "A.__init__", {"CPU": 1.0}, actor_id=actor, max_restarts=2)
    create_msg = p.Execute(ACTOR_CREATE, actor, CODE, b"code", None, ARGS, {},
                           [return_id(actor, 1)], "A.__init__", False, {"CPU": 1.0})
    core.handle(Submitted(create, DRIVER), WorkerReady(3))
    assert core.available["CPU"] == 1.0
    assert core.handle(WorkerDied(3, "pid 9 exit code 1")) == [StartWorker(4, actor)]
    assert core.available["CPU"] == 2.0
    assert core.handle(WorkerReady(4)) == [Send(4, create_msg)]
    # the second incarnation's constructor waits for a result, and its process dies
    core.handle(Submitted(spec(7, cpus=0), DRIVER),
                GetRequested(4, 1, [rid(7)], -1, None, [], now=0.0))
    assert core.handle(WorkerDied(4, "pid 10 exit code 1")) == [StartWorker(5, actor)]
    assert core.tasks[actor].request is None  # that get died with the process
    assert core.available["CPU"] == 2.0
    assert core.handle(WorkerReady(5)) == [Send(5, create_msg)]
    assert core.available["CPU"] == 1.0


def test_prefetched_tasks_never_start_with_resources_nobody_gave_back():
    # each queued task starts with what the one before it releases: a gpu task queued
    # behind a cpu-only one would take a gpu that another worker took meanwhile
    core = CheckedScheduler(ExecConfig(num_cpus=2, max_prefetch=2), {"gpu": 1.0})
    core.handle(CodeRegistered(CODE, b"code"), Started(), WorkerReady(1),
                Submitted(spec(1), DRIVER))
    core.handle(TaskFinished(1, tid(1), [ok()], None, 1e-5))  # tiny: prefetch depth 2
    gpu = {"CPU": 1.0, "gpu": 1.0}
    on_gpu, cpu_only = dataclasses.replace(spec(2), resources=gpu), spec(3)
    gpu_after = dataclasses.replace(spec(4), resources=gpu)
    assert core.handle(*(Submitted(s, DRIVER) for s in (on_gpu, cpu_only, gpu_after))) == [
        Send(1, exec_msg(2, resources=gpu)), Send(1, exec_msg(3))]  # the gpu task does not
    # queue behind 3
    core.handle(TaskFinished(1, tid(2), [ok()]))
    assert core.workers[1].stack == [tid(3)] and core.available == {"CPU": 1.0, "gpu": 1.0}
    assert core.handle(WorkerReady(2)) == [Send(2, exec_msg(4, code=b"code", resources=gpu))]
    core.handle(TaskFinished(1, tid(3), [ok()]))
    assert core.available == {"CPU": 1.0, "gpu": 0.0}


def test_a_worker_reporting_a_queued_task_done_is_ignored():
    """A worker runs what it is sent in order; a Done for a task still queued behind
    another (a broken worker, or a simulation that ran both at once) must not retire it
    while its id stays in the queue (it would start twice)."""
    core = CheckedScheduler(ExecConfig(num_cpus=1, max_prefetch=2))
    core.handle(CodeRegistered(CODE, b"code"), Started(), WorkerReady(1),
                Submitted(spec(1), DRIVER))
    core.handle(TaskFinished(1, tid(1), [ok()], None, 1e-5))  # tiny: prefetch depth 2
    core.handle(Submitted(spec(2), DRIVER), Submitted(spec(3), DRIVER))
    assert core.workers[1].stack == [tid(2)] and list(core.workers[1].queued) == [tid(3)]
    out = core.handle(TaskFinished(1, tid(3), [ok()], None, 1e-5))
    assert [type(i) for i in out] == [Warn] and core.tasks[tid(3)].state.value == "queued"
    out = core.handle(TaskFinished(1, tid(2), [ok()], None, 1e-5))
    assert Completed((rid(2),)) in out and core.tasks[tid(3)].state.value == "running"


def test_a_batch_of_submissions_costs_one_scheduling_pass(core, monkeypatch):
    passes = []
    schedule = core._schedule
    monkeypatch.setattr(core, "_schedule", lambda: passes.append(1) or schedule())
    out = core.handle(WorkerReady(1), WorkerReady(2),
                      *(Submitted(spec(n), DRIVER) for n in range(1, 10_001)))
    assert passes == [1]
    assert [i.worker for i in out] == [1, 2, 1, 2]  # two run, one queued behind each


def test_a_call_in_flight_when_its_actor_dies_runs_again_after_the_restart(core):
    actor = tid(100)
    create = TaskSpec(actor, ACTOR_CREATE, CODE, None, ARGS, [], [], [return_id(actor, 1)],
                      "A.__init__", {}, actor_id=actor, max_restarts=1)
    create_msg = p.Execute(ACTOR_CREATE, actor, CODE, b"code", None, ARGS, {},
                           [return_id(actor, 1)], "A.__init__", False, {})
    core.handle(Submitted(create, DRIVER), WorkerReady(3))
    core.handle(TaskFinished(3, actor, [[p.INLINE, b"", []]], None, 0.01))
    core.handle(Submitted(spec(1, kind=ACTOR_CALL, actor=actor, cpus=0, max_retries=1),
                          DRIVER),
                Submitted(spec(2, kind=ACTOR_CALL, actor=actor, cpus=0, max_retries=0),
                          DRIVER))
    assert core.handle(WorkerDied(3, "pid 9 exit code 1")) == [Completed((rid(2),)),
                                                               StartWorker(4, actor)]
    assert core.objects.payload(rid(1)) is None  # kept for the next incarnation
    assert "ActorDiedError" in core.objects.payload(rid(2))[1]
    assert core.handle(WorkerReady(4)) == [Send(4, create_msg)]
    out = core.handle(TaskFinished(4, actor, [[p.INLINE, b"", []]], None, 0.01))
    assert Send(4, exec_msg(1, kind=ACTOR_CALL, target="m")) in out
    out = core.handle(WorkerDied(4, "pid 10 exit code 1"))  # out of restarts
    assert out == [Completed((rid(1),))]
    assert "ActorDiedError" in core.objects.payload(rid(1))[1]


def gpu_spec(n: int, gpus: float, **extra) -> TaskSpec:
    return dataclasses.replace(spec(n, **extra), resources={"CPU": 1.0, "GPU": gpus})


def gpu_msg(n: int, gpus: float, ids: list[int], code=None) -> p.Execute:
    return dataclasses.replace(exec_msg(n, code=code, resources={"CPU": 1.0, "GPU": gpus}),
                               gpu_ids=ids)


@pytest.fixture
def gpu_core():
    scheduler = CheckedScheduler(ExecConfig(num_cpus=3, max_prefetch=4), {"GPU": 2.0})
    scheduler.handle(CodeRegistered(CODE, b"code"), Started(), WorkerReady(1), WorkerReady(2),
                     WorkerReady(3))
    return scheduler


def test_execute_names_the_gpus_the_node_gave_each_task(gpu_core):
    core = gpu_core
    out = core.handle(*(Submitted(gpu_spec(n, 1.0), DRIVER) for n in (1, 2, 3)))
    # two tasks on GPUs 0 and 1; the third waits for one (it never queues at a worker)
    assert out == [Send(1, gpu_msg(1, 1.0, [0], code=b"code")),
                   Send(2, gpu_msg(2, 1.0, [1], code=b"code"))]
    assert core.handle(TaskFinished(1, tid(1), [ok()], None, 1e-5)) == [
        Completed((rid(1),)), Send(1, gpu_msg(3, 1.0, [0]))]  # GPU 0 again, once it is free
    core.handle(TaskFinished(1, tid(3), [ok()]), TaskFinished(2, tid(2), [ok()]))
    assert core.handle(Submitted(gpu_spec(4, 2.0), DRIVER), Submitted(spec(5), DRIVER)) == [
        Send(1, gpu_msg(4, 2.0, [0, 1])), Send(2, exec_msg(5))]  # a CPU task: no GPUs
    assert core.available["GPU"] == 0.0


def test_fractional_gpu_tasks_share_one_index(gpu_core):
    out = gpu_core.handle(Submitted(gpu_spec(1, 0.5), DRIVER),
                          Submitted(gpu_spec(2, 0.5), DRIVER))
    assert [i.message.gpu_ids for i in out] == [[0], [0]]
    assert gpu_core.available["GPU"] == 1.0


def test_an_actor_keeps_its_gpu_for_life_and_gives_it_back_when_it_dies(gpu_core):
    core = gpu_core
    actor = tid(100)
    create = TaskSpec(actor, ACTOR_CREATE, CODE, None, ARGS, [], [], [return_id(actor, 1)],
                      "A.__init__", {"GPU": 1.0}, actor_id=actor)
    core.handle(Submitted(create, DRIVER))
    out = core.handle(WorkerReady(4))
    assert [(i.message.kind, i.message.gpu_ids) for i in out] == [(ACTOR_CREATE, [0])]
    core.handle(TaskFinished(4, actor, [ok()]))
    assert core.actors.get(actor).holds == {"GPU": 1.0, "_gpu:0": 1.0}
    call = core.handle(Submitted(spec(1, kind=ACTOR_CALL, actor=actor, cpus=0), DRIVER))
    assert call == [Send(4, exec_msg(1, kind=ACTOR_CALL, target="m"))]  # runs with the
    # actor's GPU: the worker keeps its creation's ids
    assert core.handle(Submitted(gpu_spec(2, 1.0), DRIVER))[0].message.gpu_ids == [1]
    assert not core.resources.fits({"GPU": 0.5})
    core.handle(ActorKilled(actor))
    assert core.resources.gpus.free == [10_000, 0]


# ---- px.cancel: instruction lists for each state a task can be in ----
def cancelled(n: int) -> list:
    return system_error_payload(errors.TaskCancelledError(
        f"task t{n} was cancelled (px.cancel)"))


def test_a_task_that_has_not_started_never_runs(core):
    core.handle(WorkerReady(1), *(Submitted(spec(n), DRIVER) for n in (1, 2, 3)))
    # 1 runs, 2 and 3 wait for the second worker: cancelling 3 fails it at once
    assert core.handle(CancelRequested(tid(3), False, True)) == [Completed((rid(3),))]
    assert core.objects.payload(rid(3)) == cancelled(3)
    # the second worker runs 2, and nothing else ever runs
    assert core.handle(WorkerReady(2)) == [Send(2, exec_msg(2, code=b"code"))]
    assert core.handle(TaskFinished(1, tid(1), [ok()])) == [Completed((rid(1),))]


def test_a_task_sent_ahead_to_a_busy_worker_is_skipped_there(core):
    core.handle(WorkerReady(1), WorkerReady(2),
                *(Submitted(spec(n), DRIVER) for n in (1, 2, 3)))
    assert list(core.workers[1].queued) == [tid(3)]
    assert core.handle(CancelRequested(tid(3), False, True)) == [
        Completed((rid(3),)), Interrupt(1, tid(3))]
    # the worker skips it and says so: nothing more is delivered, its CPU comes back
    assert core.handle(TaskFinished(1, tid(1), [ok()])) == [Completed((rid(1),))]
    assert core.handle(TaskFinished(1, tid(3), [cancelled(3)])) == []
    assert tid(3) not in core.tasks and core.available["CPU"] == 1.0


def test_a_running_task_is_interrupted_and_its_late_result_dropped(core):
    core.handle(WorkerReady(1), Submitted(spec(1), DRIVER))
    assert core.handle(CancelRequested(tid(1), False, True)) == [
        Completed((rid(1),)), Interrupt(1, tid(1))]
    assert core.available["CPU"] == 1.0  # still running until its worker says otherwise
    # it ignored the interrupt and finished: the result stays TaskCancelledError
    assert core.handle(TaskFinished(1, tid(1), [ok()]), Submitted(spec(2), DRIVER)) == [
        Send(1, exec_msg(2))]
    assert core.objects.payload(rid(1)) == cancelled(1)


def test_force_kills_the_process_and_the_task_is_not_retried(core):
    core.handle(WorkerReady(1), Submitted(spec(1, max_retries=5), DRIVER))
    assert core.handle(CancelRequested(tid(1), True, True)) == [
        Completed((rid(1),)), Interrupt(1, tid(1)), StopWorker(1)]
    out = core.handle(WorkerDied(1, "killed"))
    assert out == [StartWorker(3)]  # a replacement, and no retry of the task
    assert tid(1) not in core.tasks and core.available["CPU"] == 2.0


def test_recursive_cancel_reaches_the_tasks_a_task_submitted(core):
    core.handle(WorkerReady(1), WorkerReady(2), Submitted(spec(1), DRIVER))
    core.handle(Submitted(spec(2), 1), Submitted(spec(3), 1))  # from inside task 1
    # 2 runs on the second worker, 3 waits behind 1 on the first
    assert core.handle(CancelRequested(tid(1), False, True)) == [
        Completed((rid(2),)), Interrupt(2, tid(2)), Completed((rid(3),)), Interrupt(1, tid(3)),
        Completed((rid(1),)), Interrupt(1, tid(1))]
    # without recursive, only the task itself
    core.handle(TaskFinished(1, tid(1), [cancelled(1)]), TaskFinished(1, tid(3), []),
                TaskFinished(2, tid(2), []), Submitted(spec(4), DRIVER))
    core.handle(Submitted(spec(5), core.tasks[tid(4)].worker))
    out = core.handle(CancelRequested(tid(4), False, False))
    assert Completed((rid(4),)) in out and Completed((rid(5),)) not in out
    assert tid(5) in core.tasks


def test_actor_calls_are_left_to_their_actor_and_force_is_refused(core):
    creation = spec(10, kind=ACTOR_CREATE, cpus=0, actor=tid(10))
    assert core.handle(Submitted(creation, DRIVER)) == [StartWorker(3, tid(10))]
    assert core.cancel_refusal(tid(10), False) is not None  # px.kill stops actors
    core.handle(WorkerReady(3))
    core.handle(TaskFinished(3, tid(10), [ok()]))
    call = spec(11, kind=ACTOR_CALL, cpus=0, actor=tid(10))
    assert [type(i) for i in core.handle(Submitted(call, DRIVER))] == [Send]
    assert core.cancel_refusal(tid(11), True) is not None
    # sent to the actor's worker: the worker decides (skipped, or it ran), no result yet
    assert core.handle(CancelRequested(tid(11), False, True)) == [Interrupt(3, tid(11))]
    assert core.handle(TaskFinished(3, tid(11), [cancelled(11)])) == [Completed((rid(11),))]
    assert core.objects.payload(rid(11)) == cancelled(11)


def test_a_task_given_to_a_peer_is_cancelled_there_and_failed_here():
    scheduler = Scheduler(ExecConfig(num_cpus=1), in_cluster=True, node_id=b"A" * 32)
    scheduler.handle(Submitted(spec(1), DRIVER))
    task = scheduler.tasks[tid(1)]  # as a steal grant leaves it
    scheduler._transition(task, STOLEN)
    scheduler.ready.clear()
    task.node = b"B" * 32
    assert scheduler.handle(CancelRequested(tid(1), False, True)) == [
        CancelRemote(b"B" * 32, tid(1), False, True), Completed((rid(1),))]
    # a task this node never saw is cancelled at the node that owns its ref
    assert scheduler.handle(CancelRequested(tid(9), True, False, b"C" * 32)) == [
        CancelRemote(b"C" * 32, tid(9), True, False)]
    assert scheduler.handle(CancelRequested(tid(8), True, False, b"A" * 32)) == []
    scheduler.validate()


def test_a_thief_cancels_a_task_it_was_given_and_tells_its_owner():
    thief = Scheduler(ExecConfig(num_cpus=1), in_cluster=True, node_id=b"B" * 32)
    thief.handle(TasksGranted(b"A" * 32, [spec(1)], {}, {CODE: b"code"}))
    assert thief.handle(CancelRequested(tid(1), False, True)) == [
        ReturnResult(b"A" * 32, tid(1), [rid(1)], [cancelled(1)], None, None)]
    thief.validate()
