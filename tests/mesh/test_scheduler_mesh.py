"""The scheduler's side of the mesh, sans-IO: steal requests in, grants out; results and
departures of peers. Instruction lists are compared as in tests/exec/test_scheduler.py."""

from __future__ import annotations

import dataclasses
import math

import pytest

from p2pexec import errors
from p2pexec.exec import protocol as p
from p2pexec.exec.config import ExecConfig
from p2pexec.exec.events import (
    ActorKilled,
    ActorLocated,
    BorrowAnswered,
    BorrowRequested,
    CodeRegistered,
    Draining,
    Fetched,
    HeldAsked,
    PeerGone,
    PeerLoads,
    PeersResources,
    Prefetched,
    Put,
    RefsChanged,
    Released,
    RemoteFinished,
    RemoteYielded,
    Started,
    StealRequested,
    StreamYielded,
    Submitted,
    TaskFinished,
    TasksGranted,
    TasksReturned,
    Tick,
    WorkerReady,
)
from p2pexec.exec.instructions import (
    ActorHere,
    AskHeld,
    Borrow,
    Completed,
    Fetch,
    Forward,
    Grant,
    HandBack,
    Holding,
    Lend,
    LocateActor,
    Prefetch,
    Release,
    ReturnResult,
    ReturnYielded,
    Send,
    StartWorker,
    StopRemoteActor,
    StopWorker,
    Unlink,
    Warn,
)
from p2pexec.exec.refs import return_id, stream_item, stream_link
from p2pexec.exec.scheduler import DRIVER, STREAM_END, Scheduler
from p2pexec.exec.serialization import system_error_payload
from p2pexec.exec.stealing import PLACEMENT, PeerLoad, StealConfig
from p2pexec.exec.task import ACTOR_CALL, ACTOR_CREATE, STREAMING, TASK, TaskSpec
from p2pexec.ids import NodeId

ARGS = [p.INLINE, b"args", []]
CODE = b"h" * 16
THIEF, OWNER = b"T" * 32, b"O" * 32
CPU2 = {"CPU": 2.0}


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def rid(n: int) -> bytes:
    return return_id(tid(n), 1)


def spec(n: int, deps=(), resources=None, args=ARGS) -> TaskSpec:
    return TaskSpec(tid(n), TASK, CODE, None, args, tuple(deps), tuple(deps), (rid(n),),
                    f"t{n}", resources or {"CPU": 1.0})


def ok(value: bytes = b"v") -> list:
    return [p.INLINE, value, []]


def shared(name: str) -> list:
    return [p.SHARED, name, 10, []]


class Checked(Scheduler):
    def handle(self, *events):
        out = super().handle(*events)
        self.validate()
        return out


def node(cpus: float, workers_ready: bool = False, infeasible_grace: float = 10.0,
         **steal) -> Checked:
    """A node in a cluster. Its workers have not said READY unless `workers_ready`, so
    what is submitted stays in the ready queue, where steals look."""
    core = Checked(ExecConfig(num_cpus=cpus, max_prefetch=1, steal=StealConfig(**steal),
                              infeasible_grace=infeasible_grace), in_cluster=True)
    core.handle(CodeRegistered(CODE, b"code"), Started())
    if workers_ready:
        for worker in list(core.workers):
            core.handle(WorkerReady(worker))
    return core


def grants(out) -> list[Grant]:
    return [i for i in out if type(i) is Grant]


def test_a_thief_gets_the_back_of_the_queue_up_to_half_and_the_code():
    owner = node(1)
    for n in range(1, 9):
        owner.handle(Submitted(spec(n), DRIVER))
    (grant,) = grants(owner.handle(StealRequested(THIEF, 7, 2.0, CPU2)))
    # half of the 8 ready, from the back; unknown durations count 10 ms each, so the
    # 0.1 s budget of a 2-CPU thief is not what stops it
    assert [s.task_id for s in grant.specs] == [tid(8), tid(7), tid(6), tid(5)]
    assert grant.code == {CODE: b"code"} and grant.request_id == 7
    assert grant.queue_length == 4 == owner.queue_length()
    assert owner.counts["stolen_out"] == 4
    assert [owner.tasks[tid(n)].state.value for n in (4, 5)] == ["ready", "stolen"]


def test_the_batch_is_sized_by_the_expected_work():
    owner = node(1, batch_seconds=0.05)
    owner.pool.record_duration(CODE, 0.04)
    for n in range(1, 21):
        owner.handle(Submitted(spec(n), DRIVER))
    # a 1-CPU thief gets 0.05 s of 0.04 s tasks: the first brings 0.04, the second 0.08
    (grant,) = grants(owner.handle(StealRequested(THIEF, 1, 1.0, CPU2)))
    assert [s.task_id for s in grant.specs] == [tid(20), tid(19)]


def test_tasks_cheaper_to_run_at_home_stay():
    owner = node(2, move_cost_seconds=0.5)
    for n in range(1, 7):
        owner.handle(Submitted(spec(n), DRIVER))
    # the last waits 5 tasks x 10 ms / 2 CPUs = 25 ms, under the 0.5 s a move costs
    (grant,) = grants(owner.handle(StealRequested(THIEF, 1, 2.0, CPU2)))
    assert grant.specs == () and owner.queue_length() == 6


def test_resources_the_thief_lacks_and_large_local_inputs_are_refused():
    owner = node(1, bandwidth=1.0)  # 1 byte/s: any large input costs more than waiting
    owner.handle(Put(rid(100), shared("p2px-1-big"), [], DRIVER))
    owner.handle(Submitted(spec(1), DRIVER))
    owner.handle(Submitted(spec(2, resources={"CPU": 1.0, "gpu": 1.0}), DRIVER))
    owner.handle(Submitted(spec(3, deps=[rid(100)]), DRIVER))
    (grant,) = grants(owner.handle(StealRequested(THIEF, 1, 2.0, CPU2)))
    assert grant.specs == ()
    (grant,) = grants(owner.handle(StealRequested(THIEF, 2, 2.0, {"CPU": 2.0, "gpu": 1.0})))
    assert [s.task_id for s in grant.specs] == [tid(2)]


def test_a_node_without_cpus_gives_every_task_and_parks_none_for_ever():
    owner = node(0)
    assert owner.workers == {}
    owner.handle(Put(rid(100), ok(b"x"), [], DRIVER))
    out = owner.handle(Submitted(spec(1, deps=[rid(100)]), DRIVER))
    assert out == []  # parked without a warning: a peer may take it
    assert owner.queue_length() == 1
    (grant,) = grants(owner.handle(StealRequested(THIEF, 1, 2.0, CPU2)))
    assert [s.task_id for s in grant.specs] == [tid(1)]
    assert grant.values == {rid(100): ok(b"x")}  # small values travel with the task


def test_result_from_the_thief_completes_once_and_a_duplicate_is_dropped():
    owner = node(1)
    owner.handle(Submitted(spec(1), DRIVER), Submitted(spec(2), DRIVER))
    owner.handle(StealRequested(THIEF, 1, 2.0, CPU2))
    assert owner.handle(RemoteFinished(THIEF, tid(2), [rid(2)], [ok()], None, 0.3)) == [
        Completed((rid(2),))]
    assert owner.objects.payload(rid(2)) == ok()
    out = owner.handle(RemoteFinished(THIEF, tid(2), [rid(2)], [ok(b"again")], None, 0.3))
    assert owner.objects.payload(rid(2)) == ok() and not [i for i in out if type(i) is Completed]
    out = owner.handle(RemoteFinished(b"X" * 32, tid(1), [rid(1)], [ok()], None, None))
    assert [type(i) for i in out] == [Warn]  # never given to that node: refused
    assert owner.tasks[tid(1)].state.value == "ready"


def test_large_result_is_fetched_from_the_thief_then_released():
    owner = node(1)
    owner.handle(Submitted(spec(1), DRIVER), Submitted(spec(2), DRIVER))
    owner.handle(StealRequested(THIEF, 1, 2.0, CPU2))
    out = owner.handle(RemoteFinished(THIEF, tid(2), [rid(2)], [shared("p2px-9-r")],
                                      None, 0.1))
    assert out == [Fetch(rid(2), THIEF)]
    mine = shared("p2px-1-copy")
    out = owner.handle(Fetched(rid(2), mine))
    assert out == [Release(THIEF, (rid(2),)), Completed((rid(2),)), Holding(rid(2), True)]


def test_lost_large_result_runs_the_task_again():
    owner = node(1)
    owner.handle(Submitted(spec(1), DRIVER), Submitted(spec(2), DRIVER))
    owner.handle(StealRequested(THIEF, 1, 2.0, CPU2))
    owner.handle(RemoteFinished(THIEF, tid(2), [rid(2)], [shared("p2px-9-r")], None, 0.1))
    owner.handle(PeerGone(THIEF))
    lost = system_error_payload(errors.ObjectLostError("gone"))
    out = owner.handle(Fetched(rid(2), lost))
    assert [type(i) for i in out] == [Release, Warn]
    assert owner.tasks[tid(2)].state.value == "ready"


def test_peer_death_reruns_its_tasks_at_the_owner_until_retries_run_out():
    owner = node(0)  # it cannot run the task itself
    owner.handle(Submitted(dataclasses.replace(spec(2), max_retries=1), DRIVER))
    for attempt in range(2):
        (grant,) = grants(owner.handle(StealRequested(THIEF, attempt, 2.0, CPU2)))
        assert [s.task_id for s in grant.specs] == [tid(2)]
        owner.handle(PeerGone(THIEF))
    assert owner.objects.payload(rid(2))[0] == p.SYSTEM_ERROR
    assert "NodeDiedError" in owner.objects.payload(rid(2))[1]


def test_thief_runs_granted_tasks_and_returns_results_to_the_owner():
    thief = node(1, workers_ready=True)
    big = rid(100)
    out = thief.handle(TasksGranted(OWNER, [spec(1, deps=[rid(50), big])],
                                    {rid(50): ok(b"small")}, {CODE: b"code"}))
    assert out == [Fetch(big, OWNER)]  # the large argument is fetched, the small one came
    out = thief.handle(Fetched(big, shared("p2px-1-arg")))
    assert [type(i) for i in out] == [Completed, Holding, Send]
    out = thief.handle(TaskFinished(1, tid(1), [ok(b"r")], None, 0.2))
    assert ReturnResult(OWNER, tid(1), (rid(1),), [ok(b"r")], None, 0.2) in out
    assert Unlink("p2px-1-arg") in out  # the fetched argument goes once the task is over
    assert len(thief.objects) == 0 and thief.counts == {
        "done": 1, "stolen_in": 1, "stolen_out": 0, "steal_requests": 0}


def test_thief_keeps_a_large_result_for_the_owner_until_released():
    thief = node(1, workers_ready=True)
    thief.handle(TasksGranted(OWNER, [spec(1)], {}, {CODE: b"code"}))
    out = thief.handle(TaskFinished(1, tid(1), [shared("p2px-1-res")], None, 0.2))
    assert Holding(rid(1), True) in out and thief.objects.known(rid(1))
    out = thief.handle(Released(OWNER, [rid(1)]))
    assert out == [Holding(rid(1), False), Unlink("p2px-1-res")]


def test_owner_death_drops_its_waiting_tasks_and_the_running_result():
    thief = node(1, workers_ready=True)
    thief.handle(TasksGranted(OWNER, [spec(1), spec(2), spec(3)], {}, {CODE: b"code"}))
    thief.handle(PeerGone(OWNER))
    assert list(thief.tasks) == [tid(1), tid(2)]  # running, or queued at its worker
    out = thief.handle(TaskFinished(1, tid(1), [shared("p2px-1-res")], None, 0.2))
    assert Unlink("p2px-1-res") in out and not [i for i in out if type(i) is ReturnResult]
    assert len(thief.objects) == 0


@pytest.mark.parametrize("cpus", [1, 2])
def test_idle_cpus_count_what_the_ready_queue_leaves_short(cpus):
    core = node(cpus)
    assert core.idle_cpus() == cpus
    core.handle(Submitted(spec(1), DRIVER))
    assert core.idle_cpus() == cpus - 1
    core.handle(Submitted(spec(2), DRIVER))
    assert core.idle_cpus() == 0


def test_tasks_a_thief_hands_back_queue_again_uncharged():
    owner = node(1)
    owner.handle(Submitted(spec(1), DRIVER), Submitted(spec(2), DRIVER))
    owner.handle(StealRequested(THIEF, 1, 2.0, CPU2))
    owner.handle(TasksReturned(b"X" * 32, [tid(2)]))  # not that node's: ignored
    assert owner.tasks[tid(2)].state.value == "stolen"
    owner.handle(TasksReturned(THIEF, [tid(2)]))
    task = owner.tasks[tid(2)]
    assert task.state.value == "ready" and task.attempts == 0
    assert owner.counts["stolen_out"] == 0 and owner.queue_length() == 2


def test_an_owner_asks_its_thieves_after_a_whole_interval_and_reruns_what_they_dropped():
    owner = node(1, check_interval=10.0)
    for n in range(1, 5):
        owner.handle(Submitted(spec(n), DRIVER))
    owner.handle(StealRequested(THIEF, 1, 1.0, {"CPU": 1.0}))  # takes 4, then 3
    assert owner.next_deadline() == -math.inf  # the checks' clock starts at the next tick
    assert owner.handle(Tick(100.0)) == [] and owner.next_deadline() == 110.0
    assert owner.handle(Tick(110.0)) == []  # stolen less than a whole interval ago
    owner.handle(RemoteFinished(THIEF, tid(4), [rid(4)], [ok()], None, None))
    assert owner.handle(Tick(120.0)) == [AskHeld(THIEF, (tid(3),))]
    owner.handle(TasksReturned(THIEF, [tid(3)]))  # the thief's answer: it dropped it
    assert owner.tasks[tid(3)].state.value == "ready" and owner.tasks[tid(3)].attempts == 0
    assert owner.next_deadline() is None  # nothing at peers: no checks


def test_a_thief_answers_a_held_check_with_the_tasks_it_no_longer_holds():
    thief = node(1, workers_ready=True)
    thief.handle(TasksGranted(OWNER, [spec(1), spec(2), spec(3)], {}, {CODE: b"code"}))
    thief.handle(TaskFinished(1, tid(1), [ok()], None, 0.1))  # answered: not held
    assert thief.handle(HeldAsked(OWNER, [tid(1), tid(2), tid(3), tid(7)])) == [
        HandBack(OWNER, (tid(1), tid(7)))]
    assert thief.handle(HeldAsked(OWNER, [tid(2)])) == []
    assert thief.handle(HeldAsked(THIEF, [tid(2)])) == [HandBack(THIEF, (tid(2),))]
    thief.handle(PeerGone(OWNER))  # a verdict the owner, alive, then learns nothing of
    assert thief.handle(HeldAsked(OWNER, [tid(2), tid(3)])) == [
        HandBack(OWNER, (tid(2), tid(3)))]


def test_an_actor_call_its_node_no_longer_holds_fails_with_actor_died():
    caller = node(1)
    actor = tid(9)
    caller.handle(Put(return_id(actor, 1), ok(b"handle"), [], DRIVER))
    caller.handle(Submitted(call(1, actor), DRIVER), ActorLocated(actor, OWNER))
    caller.handle(TasksReturned(OWNER, [tid(1)]))
    assert "no longer has the call" in caller.objects.payload(rid(1))[2]


def call(n: int, actor: bytes, deps=(), retries: int = 0) -> TaskSpec:
    """A call as a handle makes it: `retries` is its actor's max_task_retries."""
    return TaskSpec(tid(n), ACTOR_CALL, None, "m", ARGS, tuple(deps),
                    (*deps, return_id(actor, 1)), (rid(n),), f"call{n}", {}, retries,
                    actor_id=actor)


def test_calls_of_an_actor_another_node_made_go_there_in_order():
    caller = node(1)
    actor = tid(9)
    caller.handle(Put(return_id(actor, 1), ok(b"handle"), [], DRIVER))  # its handle's ref
    out = caller.handle(Submitted(call(1, actor), DRIVER), Submitted(call(2, actor), DRIVER))
    assert out == [LocateActor(actor)]  # looked up once
    out = caller.handle(ActorLocated(actor, OWNER))
    assert out == [Forward(OWNER, (call(1, actor), call(2, actor)),
                           {return_id(actor, 1): ok(b"handle")})]
    out = caller.handle(RemoteFinished(OWNER, tid(1), [rid(1)], [ok(b"r")], None, None))
    assert out == [Completed((rid(1),))]
    caller.handle(PeerGone(OWNER))  # the actor's node died: the call in flight fails
    assert "ActorDiedError" in caller.objects.payload(rid(2))[1]
    other = tid(8)  # an actor no node has: its calls fail once the lookup says so
    caller.handle(Put(return_id(other, 1), ok(b"handle"), [], DRIVER))
    assert caller.handle(Submitted(call(3, other), DRIVER)) == [LocateActor(other)]
    assert caller.handle(ActorLocated(other, None)) and (
        "no node of the cluster has the actor" in caller.objects.payload(rid(3))[2])


def test_the_actors_node_runs_forwarded_calls_and_returns_their_results():
    home = node(1)
    create = dataclasses.replace(spec(9), kind=ACTOR_CREATE, actor_id=tid(9))
    out = home.handle(Submitted(create, DRIVER))
    assert ActorHere(tid(9), True) in out  # announced, so callers elsewhere find it
    worker = home.actors.get(tid(9)).worker
    home.handle(WorkerReady(worker), TaskFinished(worker, tid(9), [ok()], None, 0.1))
    out = home.handle(TasksGranted(THIEF, [call(1, tid(9))], {}, {}))
    assert [type(i) for i in out] == [Send]
    out = home.handle(TaskFinished(worker, tid(1), [ok(b"r")], None, 0.01))
    assert ReturnResult(THIEF, tid(1), (rid(1),), [ok(b"r")], None, None) in out
    assert home.counts["stolen_in"] == 0  # a forwarded call is not stolen work


def test_a_task_no_member_can_fit_fails_once_the_membership_has_settled():
    owner = node(1, infeasible_grace=10.0)
    gpu = spec(1, resources={"CPU": 1.0, "gpu": 1.0})
    tpu = spec(2, resources={"CPU": 1.0, "tpu": 1.0})
    owner.handle(PeersResources(({"CPU": 4.0, "gpu": 1.0},), now=0.0))
    owner.handle(WorkerReady(1))
    owner.handle(Submitted(gpu, DRIVER), Submitted(tpu, DRIVER))
    assert owner.queue_length() == 2  # both parked: the membership may still fill in
    out = owner.handle(PeersResources(({"CPU": 4.0, "gpu": 1.0},), now=10.5))
    assert Completed((rid(2),)) in out
    assert "ResourcesUnavailableError" in owner.objects.payload(rid(2))[1]
    assert owner.tasks[tid(1)].state.value == "waiting"  # a peer has a gpu: it waits
    owner.handle(Submitted(spec(3, resources={"tpu": 2.0}), DRIVER))  # settled: at once
    assert owner.objects.payload(rid(3))[0] == p.SYSTEM_ERROR


def gpu_actor(owner: Checked) -> tuple[bytes, TaskSpec]:
    """A restartable actor needing a gpu, submitted to `owner` (which has none)."""
    create = dataclasses.replace(spec(9, resources={"gpu": 1.0}), kind=ACTOR_CREATE,
                                 actor_id=tid(9), max_restarts=1)
    owner.handle(Submitted(create, DRIVER))
    return tid(9), create


def test_an_actor_needing_what_only_a_peer_has_is_placed_there_and_restarts_elsewhere():
    owner = node(1)
    actor, create = gpu_actor(owner)
    assert owner.queue_length() == 1 and not owner.actors.actors  # parked, not started
    gpu_box, other_box = b"G" * 32, b"H" * 32
    (grant,) = grants(owner.handle(StealRequested(gpu_box, 1, 1.0, {"gpu": 1.0})))
    assert grant.specs == (create,)
    owner.handle(Submitted(call(1, actor), DRIVER))  # no lookup: this node made it
    out = owner.handle(RemoteFinished(gpu_box, actor, [rid(9)], [ok()], None, 0.1))
    assert Forward(gpu_box, (call(1, actor),), {rid(9): ok()}) in out
    out = owner.handle(PeerGone(gpu_box))  # the call in flight dies with the node...
    assert "ActorDiedError" in owner.objects.payload(rid(1))[1]
    assert owner.queue_length() == 1  # ...and the actor waits to be placed again
    owner.handle(Submitted(call(2, actor), DRIVER))
    (grant,) = grants(owner.handle(StealRequested(other_box, 2, 1.0, {"gpu": 1.0})))
    assert grant.specs == (create,)
    out = owner.handle(RemoteFinished(other_box, actor, [rid(9)], [ok()], None, 0.1))
    assert Forward(other_box, (call(2, actor),), {rid(9): ok()}) in out
    owner.handle(PeerGone(other_box))  # out of restarts: dead for good
    owner.handle(Submitted(call(3, actor), DRIVER))
    assert owner.handle(ActorLocated(actor, None))
    assert owner.objects.payload(rid(3))[0] == p.SYSTEM_ERROR


def test_an_actor_placed_here_stops_when_its_owner_dies():
    thief = node(1, workers_ready=True)
    create = dataclasses.replace(spec(9), kind=ACTOR_CREATE, actor_id=tid(9))
    thief.handle(TasksGranted(OWNER, [create], {}, {CODE: b"code"}))
    worker = thief.actors.get(tid(9)).worker
    thief.handle(WorkerReady(worker), TaskFinished(worker, tid(9), [ok()], None, 0.1))
    out = thief.handle(PeerGone(OWNER))
    assert StopWorker(worker) in out and ActorHere(tid(9), False) in out
    assert not thief.actor_alive(tid(9))


# ---- borrowing: refs to objects another node owns ----
def test_a_ref_from_another_node_is_borrowed_from_its_owner_and_released_when_dropped():
    borrower = node(1)
    out = borrower.handle(RefsChanged(DRIVER, {rid(7): 1}, {rid(7): OWNER}))
    assert out == [Borrow(OWNER, (rid(7),))]
    out = borrower.handle(BorrowAnswered(OWNER, {rid(7): ok(b"small")}, []))
    assert out == [Completed((rid(7),))]
    assert borrower.objects.payload(rid(7)) == ok(b"small")
    assert borrower.handle(RefsChanged(DRIVER, {rid(7): -1})) == [Release(OWNER, (rid(7),))]
    assert len(borrower.objects) == 0 and borrower.loans.lenders == {}


def test_a_borrowed_large_object_is_fetched_from_its_owner():
    borrower = node(1)
    borrower.handle(RefsChanged(DRIVER, {rid(7): 1}, {rid(7): OWNER}))
    assert borrower.handle(BorrowAnswered(OWNER, {}, [rid(7)])) == [Fetch(rid(7), OWNER)]
    out = borrower.handle(Fetched(rid(7), shared("p2px-1-copy")))
    assert out == [Completed((rid(7),)), Holding(rid(7), True)]
    out = borrower.handle(RefsChanged(DRIVER, {rid(7): -1}))
    assert out == [Holding(rid(7), False), Unlink("p2px-1-copy"), Release(OWNER, (rid(7),))]


def borrowed_large_once(borrower: Checked) -> None:
    """`borrower` borrowed and fetched a large object from OWNER (and still holds it)."""
    borrower.handle(RefsChanged(DRIVER, {rid(1): 1}, {rid(1): OWNER}))
    assert borrower.handle(BorrowAnswered(OWNER, {}, [rid(1)])) == [Fetch(rid(1), OWNER)]
    borrower.handle(Fetched(rid(1), shared("p2px-1-first")))


def test_a_borrow_from_a_lender_of_large_objects_fetches_alongside_its_round_trip():
    borrower = node(1)
    borrowed_large_once(borrower)
    out = borrower.handle(RefsChanged(DRIVER, {rid(7): 1}, {rid(7): OWNER}))
    assert out == [Borrow(OWNER, (rid(7),)), Prefetch(rid(7), OWNER)]
    out = borrower.handle(Prefetched(rid(7), OWNER, shared("p2px-1-copy")))
    assert out == [Completed((rid(7),)), Holding(rid(7), True)]
    assert borrower.handle(BorrowAnswered(OWNER, {}, [rid(7)])) == []  # no second fetch
    out = borrower.handle(RefsChanged(DRIVER, {rid(7): -1}))
    assert out == [Holding(rid(7), False), Unlink("p2px-1-copy"), Release(OWNER, (rid(7),))]


def test_a_prefetch_that_brings_nothing_leaves_the_answer_to_the_borrow():
    """The answer says fetch while the prefetch runs: the fetch waits for its end. An
    inline answer completes the object; the lender's next borrow is not prefetched."""
    borrower = node(1)
    borrowed_large_once(borrower)
    borrower.handle(RefsChanged(DRIVER, {rid(7): 1, rid(8): 1}, {rid(7): OWNER, rid(8): OWNER}))
    assert borrower.handle(BorrowAnswered(OWNER, {}, [rid(7)])) == []
    assert borrower.handle(Prefetched(rid(7), OWNER, None)) == [Fetch(rid(7), OWNER)]
    assert borrower.handle(Prefetched(rid(8), OWNER, None)) == []
    out = borrower.handle(BorrowAnswered(OWNER, {rid(8): ok(b"small")}, []))
    assert out == [Completed((rid(8),))]
    out = borrower.handle(RefsChanged(DRIVER, {rid(9): 1}, {rid(9): OWNER}))
    assert out == [Borrow(OWNER, (rid(9),))]


def test_a_prefetched_copy_nobody_waits_for_any_more_is_deleted():
    borrower = node(1)
    borrowed_large_once(borrower)
    borrower.handle(RefsChanged(DRIVER, {rid(7): 1, rid(8): 1}, {rid(7): OWNER, rid(8): OWNER}))
    borrower.handle(BorrowAnswered(OWNER, {rid(7): ok(b"small")}, [rid(8)]))
    assert borrower.handle(RefsChanged(DRIVER, {rid(7): -1})) == [Release(OWNER, (rid(7),))]
    # borrowed again while its prefetch is still out: that one serves the new borrow
    assert borrower.handle(RefsChanged(DRIVER, {rid(7): 1}, {rid(7): OWNER})) == [
        Borrow(OWNER, (rid(7),))]
    assert borrower.handle(Prefetched(rid(7), OWNER, None)) == []
    assert borrower.handle(BorrowAnswered(OWNER, {}, [rid(7)])) == [Fetch(rid(7), OWNER)]
    borrower.handle(PeerGone(OWNER))  # rid(8) fails with OwnerDiedError
    assert borrower.handle(Prefetched(rid(8), OWNER, shared("p2px-1-late"))) == [
        Unlink("p2px-1-late")]
    assert borrower.loans.prefetching == {}


def test_answers_a_borrower_did_not_ask_that_node_for_are_ignored():
    borrower = node(1)
    borrower.handle(RefsChanged(DRIVER, {rid(7): 1}, {rid(7): OWNER}))
    assert borrower.handle(BorrowAnswered(THIEF, {rid(7): ok(b"forged")}, [rid(7)])) == []
    assert borrower.handle(BorrowAnswered(OWNER, {rid(8): ok(b"stray")}, [])) == []
    assert borrower.objects.payload(rid(7)) is None and not borrower.objects.known(rid(8))


def test_the_lender_holds_an_object_for_its_borrower_until_released():
    lender = node(1)
    lender.handle(Put(rid(7), ok(b"small"), [], DRIVER))
    assert lender.handle(BorrowRequested(THIEF, [rid(7)])) == [
        Lend(THIEF, {rid(7): ok(b"small")}, ())]
    assert lender.handle(RefsChanged(DRIVER, {rid(7): -1})) == []  # the borrower holds it
    assert lender.objects.known(rid(7))
    assert lender.handle(Released(THIEF, [rid(7)])) == []
    assert not lender.objects.known(rid(7))


def test_the_lender_sends_a_value_when_it_arrives_and_large_ones_by_id():
    lender = node(1, workers_ready=True)
    lender.handle(Submitted(spec(1), DRIVER), Put(rid(8), shared("p2px-1-big"), [], DRIVER))
    out = lender.handle(BorrowRequested(THIEF, [rid(1), rid(8)]))
    assert out == [Lend(THIEF, {}, (rid(8),))]  # rid(1) is still being computed
    out = lender.handle(TaskFinished(1, tid(1), [ok(b"r")], None, 0.1))
    assert Lend(THIEF, {rid(1): ok(b"r")}, ()) in out


def test_a_borrow_of_an_object_already_freed_answers_object_lost():
    lender = node(1)
    (lend,) = lender.handle(BorrowRequested(THIEF, [rid(9)]))
    assert type(lend) is Lend and "ObjectLostError" in lend.values[rid(9)][1]


def test_borrowed_objects_without_a_value_fail_with_owner_died_when_the_owner_dies():
    borrower = node(1)
    borrower.handle(RefsChanged(DRIVER, {rid(7): 1, rid(8): 1}, {rid(7): OWNER, rid(8): OWNER}))
    borrower.handle(BorrowAnswered(OWNER, {rid(8): ok(b"here")}, []))
    out = borrower.handle(PeerGone(OWNER))
    assert Completed((rid(7),)) in out
    assert "OwnerDiedError" in borrower.objects.payload(rid(7))[1]
    assert borrower.objects.payload(rid(8)) == ok(b"here")  # a copy already here stays
    out = borrower.handle(RefsChanged(DRIVER, {rid(7): -1, rid(8): -1}))
    assert not [i for i in out if type(i) is Release]  # nobody left to tell
    assert len(borrower.objects) == 0


def test_refs_inside_a_stolen_tasks_result_are_held_by_the_thief_for_the_owner():
    thief = node(1, workers_ready=True)
    thief.handle(TasksGranted(OWNER, [spec(1)], {}, {CODE: b"code"}))
    inner = return_id(tid(50), 0)  # a put the task made: the thief owns it
    thief.handle(Put(inner, ok(b"inner"), [], 1))
    out = thief.handle(TaskFinished(1, tid(1), [ok(b"[ref]")], [[inner]], 0.1),
                       RefsChanged(1, {inner: -1}))  # the worker lets go of it
    assert ReturnResult(OWNER, tid(1), (rid(1),), [ok(b"[ref]")], [[inner]], 0.1) in out
    assert thief.objects.known(inner)  # held for the owner
    assert thief.handle(BorrowRequested(OWNER, [inner])) == [
        Lend(OWNER, {inner: ok(b"inner")}, ())]
    # lent twice (inside the result, then for the borrow): held until both come back
    thief.handle(Released(OWNER, [inner]))
    assert thief.objects.known(inner)
    thief.handle(Released(OWNER, [inner]))
    assert not thief.objects.known(inner)


def test_the_owner_borrows_refs_a_result_from_the_thief_contains():
    owner = node(1)
    owner.handle(Submitted(spec(1), DRIVER), Submitted(spec(2), DRIVER))
    owner.handle(StealRequested(THIEF, 1, 2.0, CPU2))
    inner = return_id(tid(50), 0)
    out = owner.handle(RemoteFinished(THIEF, tid(2), [rid(2)], [ok(b"[ref]")], [[inner]], 0.1))
    assert out == [Borrow(THIEF, (inner,)), Completed((rid(2),))]
    owner.handle(BorrowAnswered(THIEF, {inner: ok(b"inner")}, []))
    assert owner.objects.payload(inner) == ok(b"inner")
    out = owner.handle(RefsChanged(DRIVER, {rid(2): -1}))  # the result goes, and with it
    assert Release(THIEF, (inner,), (2,)) in out         # the ref it contained (lent in
    assert not owner.objects.known(inner)                # the result, then for the borrow)


def test_a_dropped_result_lets_go_of_the_refs_it_contained():
    owner = node(1)
    inner = return_id(tid(50), 0)
    out = owner.handle(RemoteFinished(THIEF, tid(9), [rid(9)], [ok()], [[inner]], 0.1))
    assert [type(i) for i in out] == [Warn, Release] and out[1] == Release(THIEF, (inner,))


# ---- leaving gracefully ----
def test_a_leaving_node_hands_back_unstarted_tasks_and_drains_the_running_one():
    thief = node(1, workers_ready=True)
    thief.handle(TasksGranted(OWNER, [spec(1), spec(2), spec(3)], {}, {CODE: b"code"}))
    # task 1 runs and task 2 is queued behind it at the worker; task 3 is still ready
    assert thief.handle(Draining()) == [HandBack(OWNER, (tid(3),))]
    assert thief.idle_cpus() == 0 and not thief.drained()
    thief.handle(TaskFinished(1, tid(1), [ok(b"r1")], None, 0.1))
    assert not thief.drained()
    out = thief.handle(TaskFinished(1, tid(2), [shared("p2px-1-res")], None, 0.1))
    assert [type(i) for i in out if type(i) is ReturnResult] == [ReturnResult]
    assert not thief.drained()  # the owner has not fetched the large result yet
    thief.handle(Released(OWNER, [rid(2)]))
    assert thief.drained() and thief.counts["stolen_in"] == 2


def test_tasks_a_peer_ran_when_it_left_gracefully_run_again_uncharged():
    owner = node(0)  # it cannot run the task itself
    owner.handle(Submitted(dataclasses.replace(spec(2), max_retries=0), DRIVER))
    grants(owner.handle(StealRequested(THIEF, 1, 2.0, CPU2)))
    owner.handle(PeerGone(THIEF, left=True))
    task = owner.tasks[tid(2)]
    assert task.attempts == 0 and tid(2) in owner.parked  # queued again for a thief
    owner.handle(StealRequested(b"X" * 32, 2, 2.0, CPU2))
    owner.handle(PeerGone(b"X" * 32))  # a death is charged: no retry left
    assert "NodeDiedError" in owner.objects.payload(rid(2))[1]


def test_calls_in_flight_to_a_dead_actor_node_wait_for_the_restart_within_max_task_retries():
    owner = node(1)
    actor, create = gpu_actor(owner)
    gpu_box, other_box = b"G" * 32, b"H" * 32
    grants(owner.handle(StealRequested(gpu_box, 1, 1.0, {"gpu": 1.0})))
    owner.handle(RemoteFinished(gpu_box, actor, [rid(9)], [ok()], None, 0.1))
    owner.handle(Submitted(call(1, actor, retries=1), DRIVER),
                 Submitted(call(2, actor), DRIVER))
    owner.handle(Submitted(call(3, actor, retries=1), DRIVER))  # not sent yet: no charge
    owner.handle(PeerGone(gpu_box))
    assert owner.objects.payload(rid(1)) is None  # waits for the actor's new home
    assert "ActorDiedError" in owner.objects.payload(rid(2))[1]  # max_task_retries=0
    assert owner.tasks[tid(1)].attempts == 1
    (grant,) = grants(owner.handle(StealRequested(other_box, 2, 1.0, {"gpu": 1.0})))
    assert grant.specs == (create,)
    out = owner.handle(RemoteFinished(other_box, actor, [rid(9)], [ok()], None, 0.1))
    forwards = [i for i in out if type(i) is Forward]
    assert [s.task_id for f in forwards for s in f.specs] == [tid(1), tid(3)]  # in order


def test_a_callers_calls_in_flight_wait_while_the_actors_creator_places_it_again():
    """A node calling an actor another node made cannot place it again when the actor's
    node dies, nor know whether its creator will: its calls whose max_task_retries allow
    wait, first and in order, with those made meanwhile, while it looks for the actor
    again (at once, then each `actor_relocate_interval`); they go where it is found."""
    caller = node(1)
    actor, home, new_home = tid(9), b"B" * 32, b"D" * 32
    handle = {return_id(actor, 1): ok(b"handle")}
    caller.handle(Put(return_id(actor, 1), ok(b"handle"), [], DRIVER))
    caller.handle(Submitted(call(1, actor, retries=1), DRIVER), Submitted(call(2, actor), DRIVER),
                  Submitted(call(3, actor, retries=-1), DRIVER), ActorLocated(actor, home))
    out = caller.handle(PeerGone(home))
    assert out == [LocateActor(actor), Completed((rid(2),))]  # looked for again at once
    assert "ActorDiedError" in caller.objects.payload(rid(2))[1]  # max_task_retries=0
    assert [caller.tasks[tid(n)].attempts for n in (1, 3)] == [1, 1]
    assert caller.actor_node(actor) is None
    assert caller.handle(Submitted(call(4, actor, retries=1), DRIVER)) == []  # waits too
    assert caller.next_deadline() == -math.inf  # a tick starts the search's clock
    interval = caller.config.actor_relocate_interval
    assert caller.handle(Tick(100.0)) == []  # the first search is still out
    assert caller.handle(ActorLocated(actor, None)) == []  # not placed again yet
    assert caller.next_deadline() == 100.0 + interval
    assert caller.handle(Tick(100.0 + interval / 2)) == []
    assert caller.handle(Tick(100.0 + interval)) == [LocateActor(actor)]
    out = caller.handle(ActorLocated(actor, new_home))
    assert out == [Forward(new_home, (call(1, actor, retries=1), call(3, actor, retries=-1),
                                      call(4, actor, retries=1)), handle)]
    assert caller.actor_node(actor) == new_home
    out = caller.handle(PeerGone(new_home))  # died again: call 1 has no retry left
    assert out == [LocateActor(actor), Completed((rid(1),))]
    assert "ActorDiedError" in caller.objects.payload(rid(1))[1]
    assert [caller.tasks[tid(n)].attempts for n in (3, 4)] == [2, 1]
    out = caller.handle(ActorLocated(actor, home))  # placed again where it first lived
    assert out == [Forward(home, (call(3, actor, retries=-1), call(4, actor, retries=1)),
                           handle)]


def test_a_callers_calls_fail_when_no_live_node_has_the_actor_again_in_time():
    """The actor's creator may be out of restarts, or dead itself: past
    `actor_relocate_timeout` since its node died, the calls waiting for it fail with
    ActorDiedError saying so, and a later call looks for it afresh."""
    caller = node(1)
    actor, home = tid(9), b"B" * 32
    caller.handle(Put(return_id(actor, 1), ok(b"handle"), [], DRIVER))
    caller.handle(Submitted(call(1, actor, retries=2), DRIVER), ActorLocated(actor, home))
    caller.handle(PeerGone(home), Tick(0.0), ActorLocated(actor, None))
    timeout, interval = caller.config.actor_relocate_timeout, caller.config.actor_relocate_interval
    asks = 0
    while (now := caller.next_deadline()) < timeout:
        asks += caller.handle(Tick(now)).count(LocateActor(actor))
        caller.handle(ActorLocated(actor, None))
    assert asks == round(timeout / interval) - 1  # one each interval after the first
    assert caller.objects.payload(rid(1)) is None  # still waiting just before
    assert caller.handle(Tick(timeout)) == [Completed((rid(1),))]
    message = caller.objects.payload(rid(1))[2]
    assert f"no live node had it again within {timeout:g} s" in message
    assert f"node {home.hex()[:12]}" in message
    assert caller.next_deadline() is None
    out = caller.handle(Submitted(call(2, actor, retries=2), DRIVER))
    assert out == [LocateActor(actor)]  # looked up afresh


# ---- actor placement ----
def creation(n: int, cpus: float = 1.0) -> TaskSpec:
    return dataclasses.replace(spec(n, resources={"CPU": cpus}), kind=ACTOR_CREATE,
                               actor_id=tid(n))


def test_an_actor_whose_cpu_is_taken_here_goes_to_a_peer_where_one_is_free():
    owner = node(1, workers_ready=True)
    owner.handle(PeersResources(({"CPU": 2.0},), now=0.0))
    owner.handle(Submitted(creation(1), DRIVER))  # it fits: created here
    assert owner.actors.get(tid(1)) is not None
    owner.handle(Submitted(creation(2), DRIVER))
    assert not owner.actors.get(tid(2)) and owner.queue_length() == 1  # offered to peers
    assert owner.idle_cpus() == 0  # the actor's CPU will not come back
    full = owner.handle(StealRequested(THIEF, 1, 2.0, CPU2, {"CPU": 0.0}))
    assert grants(full)[0].specs == ()  # its CPUs are held too: it cannot start there
    (grant,) = grants(owner.handle(StealRequested(THIEF, 2, 2.0, CPU2, {"CPU": 1.0})))
    assert grant.specs == (creation(2),)


def test_an_offered_actor_starts_here_when_its_cpu_frees_up_first():
    owner = node(1, workers_ready=True)
    owner.handle(PeersResources(({"CPU": 2.0},), now=0.0))
    owner.handle(Submitted(creation(1), DRIVER), Submitted(creation(2), DRIVER))
    assert tid(2) in owner.parked and owner.actors.get(tid(2)) is None
    out = owner.handle(ActorKilled(tid(1)))
    assert tid(2) not in owner.parked and owner.actors.get(tid(2)) is not None
    assert next(i for i in out if type(i) is StartWorker).actor_id == tid(2)


def test_alone_an_actor_waits_for_its_cpu_here():
    owner = node(1, workers_ready=True)  # no peers known: nowhere else to go
    owner.handle(Submitted(creation(1), DRIVER), Submitted(creation(2), DRIVER))
    assert owner.actors.get(tid(2)) is not None and not owner.parked


def test_one_grant_gives_a_thief_no_more_actors_than_its_free_cpus_hold():
    owner = node(1, workers_ready=True)
    owner.handle(PeersResources(({"CPU": 2.0},), now=0.0))
    for n in range(1, 6):
        owner.handle(Submitted(creation(n), DRIVER))
    (grant,) = grants(owner.handle(StealRequested(THIEF, 1, 2.0, CPU2, {"CPU": 2.0})))
    assert [s.task_id for s in grant.specs] == [tid(2), tid(3)]


def test_an_actor_placed_on_a_peer_lives_while_its_owner_holds_a_handle():
    thief = node(1, workers_ready=True)
    thief.handle(TasksGranted(OWNER, [creation(9)], {}, {CODE: b"code"}))
    (worker,) = [w for w, state in thief.workers.items() if state.actor_id == tid(9)]
    thief.handle(WorkerReady(worker), TaskFinished(worker, tid(9), [ok()], None, 0.1))
    # a forwarded call carries the creation object (its pin); the call ends, the pin goes
    out = thief.handle(TasksGranted(OWNER, [call(1, tid(9))], {rid(9): ok()}, {}))
    out = thief.handle(TaskFinished(worker, tid(1), [ok(b"r")], None, 0.01))
    assert not [i for i in out if type(i) is StopWorker] and thief.actors.alive(tid(9))
    # the owner's last handle goes: it stops the actor where it lives
    owner = node(1)
    owner.handle(PeersResources(({"gpu": 1.0},), now=0.0))
    gpu = dataclasses.replace(creation(9), resources={"gpu": 1.0})
    owner.handle(Submitted(gpu, DRIVER))
    grants(owner.handle(StealRequested(THIEF, 1, 1.0, {"gpu": 1.0}, {"gpu": 1.0})))
    owner.handle(RemoteFinished(THIEF, tid(9), [rid(9)], [ok()], None, 0.1))
    out = owner.handle(RefsChanged(DRIVER, {rid(9): -1}))
    assert StopRemoteActor(THIEF, tid(9)) in out and tid(9) not in owner.remote_actors


def test_an_actor_is_placed_where_a_cpu_is_free_as_in_ray_one_to_place_none_to_run():
    owner = node(1, workers_ready=True)
    owner.handle(PeersResources(({"CPU": 2.0},), now=0.0))
    owner.handle(Submitted(spec(1), DRIVER))  # runs: no CPU is free here now
    owner.handle(Submitted(creation(2, cpus=0.0), DRIVER))
    assert tid(2) in owner.parked and owner.actors.get(tid(2)) is None
    busy = owner.handle(StealRequested(THIEF, 1, 2.0, CPU2, {"CPU": 0.0}))
    assert grants(busy)[0].specs == ()  # no CPU free there either
    (grant,) = grants(owner.handle(StealRequested(THIEF, 2, 2.0, CPU2, {"CPU": 1.0})))
    assert grant.specs == (creation(2, cpus=0.0),)
    owner.handle(Submitted(creation(3, cpus=0.0), DRIVER))  # parked too, until...
    worker = owner.tasks[tid(1)].worker
    owner.handle(TaskFinished(worker, tid(1), [ok()], None, 0.1))  # ...a CPU is free here
    assert tid(3) not in owner.parked and owner.actors.get(tid(3)) is not None


def peer_load(raw: bytes, cpus: float = 2.0, in_use: int = 0, queued: int = 0,
              version: int = 1) -> PeerLoad:
    return PeerLoad(NodeId(raw), ("10.0.0.9", 7946), queued, version, {"CPU": cpus}, in_use)


def test_an_actor_goes_to_the_least_loaded_node_that_fits():
    owner = node(2, workers_ready=True)
    owner.handle(PeersResources(({"CPU": 2.0}, {"CPU": 2.0}), now=0.0))
    busier, idle = b"B" * 32, THIEF
    owner.handle(PeerLoads((peer_load(busier, in_use=1), peer_load(idle))))
    # no peer would be less loaded with it than this node: it stays here
    assert not grants(owner.handle(Submitted(creation(1), DRIVER)))
    assert owner.actors.get(tid(1)) is not None
    # now this node has a CPU taken: the idle peer is the least loaded, pushed there
    out = owner.handle(Submitted(creation(2), DRIVER))
    (grant,) = grants(out)
    assert (grant.thief, grant.request_id, grant.specs) == (idle, PLACEMENT, (creation(2),))
    assert grant.code == {CODE: b"code"} and owner.tasks[tid(2)].node == idle
    # its gossiped sample is older than that push: the push counts as its load, so the
    # next one ties with this node and stays here (the busier peer would be worse)
    owner.handle(Submitted(creation(3), DRIVER))
    assert owner.actors.get(tid(3)) is not None
    # a peer whose CPUs are all taken never gets one, however short its queue
    owner.handle(PeerLoads((peer_load(busier, in_use=2, version=2),
                            peer_load(idle, in_use=2, version=2))))
    owner.handle(Submitted(spec(4), DRIVER))
    assert not grants(owner.handle(Submitted(creation(5, cpus=0.0), DRIVER)))


def test_a_placed_actor_that_no_longer_fits_comes_back_and_starts_at_its_owner():
    thief = node(1, workers_ready=True)
    thief.handle(Submitted(spec(1), DRIVER))  # its one CPU is taken since its last sample
    out = thief.handle(TasksGranted(OWNER, [creation(9)], {}, {CODE: b"code"},
                                    placed=True))
    assert HandBack(OWNER, (tid(9),)) in out and tid(9) not in thief.tasks
    owner = node(2, workers_ready=True)
    owner.handle(PeersResources(({"CPU": 2.0},), now=0.0))
    owner.handle(PeerLoads((peer_load(THIEF),)))
    owner.handle(Submitted(spec(2), DRIVER))
    assert grants(owner.handle(Submitted(creation(9), DRIVER)))[0].thief == THIEF
    out = owner.handle(TasksReturned(THIEF, [tid(9)]))
    assert owner.actors.get(tid(9)) is not None  # created here, not pushed again
    assert not grants(out) and owner.counts["stolen_out"] == 0
    # a placed actor that fits is created there, with its owner as the task's owner
    fits = node(2, workers_ready=True)
    out = fits.handle(TasksGranted(OWNER, [creation(8)], {}, {CODE: b"code"},
                                   placed=True))
    assert fits.actors.get(tid(8)) is not None and fits.tasks[tid(8)].owner == OWNER


def test_a_release_crossing_a_new_lend_of_the_same_object_does_not_free_it():
    """The owner lets go of a ref it borrowed while the thief sends it a new result
    holding the same ref: the thief counts two lends, the release gives one back, so
    the object lives for the new ref (with a flag per borrower it was freed under it)."""
    owner_side = node(1)
    owner_side.handle(*(Submitted(spec(n), DRIVER) for n in range(1, 5)))
    granted = [s.task_id for req in (1, 2) for s in grants(owner_side.handle(
        StealRequested(THIEF, req, 2.0, CPU2)))[0].specs]
    first, second = [int.from_bytes(t, "big") for t in granted[:2]]
    thief = node(1, workers_ready=True)
    thief.handle(TasksGranted(OWNER, [spec(first), spec(second)], {}, {CODE: b"code"}))
    inner = return_id(tid(50), 0)
    thief.handle(Put(inner, ok(b"inner"), [], 1))
    thief.handle(TaskFinished(1, tid(first), [ok(b"[ref]")], [[inner]], 0.1))
    owner_side.handle(RemoteFinished(THIEF, tid(first), [rid(first)], [ok(b"[ref]")],
                                     [[inner]], 0.1))
    thief.handle(BorrowRequested(OWNER, [inner]))  # the owner's borrow, answered
    owner_side.handle(BorrowAnswered(THIEF, {inner: ok(b"inner")}, []))
    (release,) = [i for i in owner_side.handle(RefsChanged(DRIVER, {rid(first): -1}))
                  if type(i) is Release]
    # the thief sends the second result, with the same ref, before the release arrives
    out = thief.handle(TaskFinished(1, tid(second), [ok(b"[ref]")], [[inner]], 0.1),
                       RefsChanged(1, {inner: -1}))
    assert ReturnResult(OWNER, tid(second), (rid(second),), [ok(b"[ref]")], [[inner]],
                        0.1) in out
    thief.handle(Released(OWNER, list(release.object_ids), list(release.counts)))
    assert thief.objects.payload(inner) == ok(b"inner")  # held for the new result's ref
    # the owner gets the second result, borrows the ref again, and later lets go: freed
    out = owner_side.handle(RemoteFinished(THIEF, tid(second), [rid(second)],
                                           [ok(b"[ref]")], [[inner]], 0.1))
    assert Borrow(THIEF, (inner,)) in out
    thief.handle(BorrowRequested(OWNER, [inner]))
    owner_side.handle(BorrowAnswered(THIEF, {inner: ok(b"inner")}, []))
    (release,) = [i for i in owner_side.handle(RefsChanged(DRIVER, {rid(second): -1}))
                  if type(i) is Release]
    thief.handle(Released(OWNER, list(release.object_ids), list(release.counts)))
    assert not thief.objects.known(inner) and not thief.loans.lent


def test_an_actor_whose_node_dies_while_creating_it_is_placed_again_at_once():
    owner = node(2, workers_ready=True)
    owner.handle(PeersResources(({"CPU": 2.0},), now=0.0))
    owner.handle(PeerLoads((peer_load(THIEF),)))
    owner.handle(Submitted(spec(1), DRIVER))  # a CPU taken here: the idle peer gets it
    create = dataclasses.replace(creation(9), max_restarts=1)
    assert grants(owner.handle(Submitted(create, DRIVER)))[0].thief == THIEF
    owner.handle(PeerLoads(()))
    owner.handle(PeerGone(THIEF))  # before its creation result came
    assert owner.actors.get(tid(9)) is not None  # made here now, not left parked
    other = node(2, workers_ready=True)  # without restarts left, it is dead
    other.handle(PeersResources(({"CPU": 2.0},), now=0.0))
    other.handle(PeerLoads((peer_load(THIEF),)))
    other.handle(Submitted(spec(1), DRIVER))
    assert grants(other.handle(Submitted(creation(8), DRIVER)))[0].thief == THIEF
    other.handle(PeerGone(THIEF))
    assert "ActorDiedError" in other.objects.payload(rid(8))[1]


def test_an_actor_whose_constructor_runs_counts_its_cpu_once():
    owner = node(2)
    owner.handle(Submitted(creation(9), DRIVER))
    assert owner.cpus_in_use() == 1.0  # placed, not started: its CPU is spoken for
    (worker,) = [w for w, state in owner.workers.items() if state.actor_id == tid(9)]
    owner.handle(WorkerReady(worker))  # the constructor runs, holding the CPU
    assert owner.tasks[tid(9)].held and owner.cpus_in_use() == 1.0
    owner.handle(TaskFinished(worker, tid(9), [ok()], None, 0.1))
    assert owner.cpus_in_use() == 1.0


def test_a_stolen_gpu_task_runs_on_the_gpu_its_thief_picks():
    # an owner without GPUs parks it for a peer that has them; the node that runs it
    # names its GPU index (the owner could not: its holding is the thief's)
    gpu = {"CPU": 1.0, "GPU": 1.0}
    owner = node(1)
    owner.handle(Submitted(spec(1, resources=gpu), DRIVER))
    assert list(owner.parked) == [tid(1)]
    nothing = grants(owner.handle(StealRequested(THIEF, 1, 2.0, {"CPU": 2.0})))
    assert [g.specs for g in nothing] == [()]  # a thief without GPUs gets none of it
    (grant,) = grants(owner.handle(StealRequested(THIEF, 2, 2.0, {"CPU": 2.0, "GPU": 2.0})))
    assert [s.task_id for s in grant.specs] == [tid(1)]
    thief = Checked(ExecConfig(num_cpus=2, max_prefetch=1), {"GPU": 2.0}, in_cluster=True)
    thief.handle(CodeRegistered(CODE, b"code"), Started(), WorkerReady(1), WorkerReady(2))
    (own,) = thief.handle(Submitted(spec(9, resources=gpu), DRIVER))
    assert own.message.gpu_ids == [0]
    (stolen,) = thief.handle(TasksGranted(OWNER, grant.specs, grant.values, grant.code))
    assert (stolen.message.task_id, stolen.message.gpu_ids) == (tid(1), [1])


# ---- streaming generators across the mesh ----
def streaming_call(n: int, actor: bytes) -> TaskSpec:
    return dataclasses.replace(call(n, actor), generator=STREAMING)


def test_a_streaming_call_of_an_actor_on_a_peer_makes_its_links_at_the_caller():
    caller, actor = node(1), tid(9)
    caller.handle(Put(return_id(actor, 1), ok(b"handle"), [], DRIVER))
    caller.handle(Submitted(streaming_call(1, actor), DRIVER))
    caller.handle(ActorLocated(actor, OWNER))
    link, item = (lambda k: stream_link(tid(1), k)), (lambda k: stream_item(tid(1), k))
    out = caller.handle(RemoteYielded(OWNER, tid(1), 0, ok(b"a"), [], False))
    assert out == [Completed((link(0),))]
    assert caller.objects.payload(item(0)) == ok(b"a")
    # a large value stays at the actor's node until fetched, then is let go there
    out = caller.handle(RemoteYielded(OWNER, tid(1), 1, shared("p2px-9-y1"), [], False))
    assert out == [Fetch(item(1), OWNER), Completed((link(1),))]
    out = caller.handle(Fetched(item(1), shared("p2px-1-y1")))
    assert out == [Release(OWNER, (item(1),)), Completed((item(1),)), Holding(item(1), True)]
    # a value out of turn (a rerun's, before where the stream is) is handed back
    out = caller.handle(RemoteYielded(OWNER, tid(1), 0, shared("p2px-9-y0"), [], False))
    assert out == [Release(OWNER, (item(0),))]
    out = caller.handle(RemoteYielded(OWNER, tid(1), 2, None, [], True))
    assert out == [Completed((link(2),))]
    assert caller.objects.payload(link(2)) == STREAM_END
    assert caller.handle(RemoteFinished(OWNER, tid(1), [], [], None, None)) == []
    assert tid(1) not in caller.tasks


def test_a_lost_streamed_value_is_its_items_error_and_a_dead_actor_node_ends_the_stream():
    caller, actor = node(1), tid(9)
    caller.handle(Put(return_id(actor, 1), ok(b"handle"), [], DRIVER))
    caller.handle(Submitted(streaming_call(1, actor), DRIVER))
    caller.handle(ActorLocated(actor, OWNER))
    caller.handle(RemoteYielded(OWNER, tid(1), 0, shared("p2px-9-y0"), [], False))
    caller.handle(PeerGone(OWNER))
    lost = system_error_payload(errors.ObjectLostError("gone"))
    out = caller.handle(Fetched(stream_item(tid(1), 0), lost))
    assert Completed((stream_item(tid(1), 0),)) in out and not [
        i for i in out if type(i) is Warn]  # not run again: the stream goes on without it
    assert caller.objects.payload(stream_item(tid(1), 0)) == lost
    assert "ActorDiedError" in caller.objects.payload(stream_link(tid(1), 1))[1]


def test_the_actors_node_sends_a_streaming_calls_values_to_its_caller():
    home = node(1)
    create = dataclasses.replace(spec(9), kind=ACTOR_CREATE, actor_id=tid(9))
    home.handle(Submitted(create, DRIVER))
    worker = home.actors.get(tid(9)).worker
    home.handle(WorkerReady(worker), TaskFinished(worker, tid(9), [ok()], None, 0.1))
    home.handle(TasksGranted(THIEF, [streaming_call(1, tid(9))], {}, {}))
    out = home.handle(StreamYielded(worker, tid(1), 0, ok(b"a"), [], False))
    assert out == [ReturnYielded(THIEF, tid(1), 0, ok(b"a"), [], False)]
    big = shared("p2px-1-y1")
    out = home.handle(StreamYielded(worker, tid(1), 1, big, [], False))
    assert ReturnYielded(THIEF, tid(1), 1, big, [], False) in out
    assert home.objects.known(stream_item(tid(1), 1))  # held for the caller
    out = home.handle(StreamYielded(worker, tid(1), 2, None, [], True))
    assert out == [ReturnYielded(THIEF, tid(1), 2, None, [], True)]
    out = home.handle(TaskFinished(worker, tid(1), [], None, 0.01))
    assert ReturnResult(THIEF, tid(1), (), [], None, None) in out
    out = home.handle(Released(THIEF, [stream_item(tid(1), 1)]))
    assert Unlink("p2px-1-y1") in out
    assert list(home.objects.entries) == [rid(9)]  # the actor's handle, no more
