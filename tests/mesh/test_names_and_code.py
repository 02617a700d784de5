"""The scheduler's side of cluster-wide actor names, remote kills and code fetched by
hash, sans-IO: events in, instruction lists out, `validate()` after every batch."""

from __future__ import annotations

import dataclasses

from test_scheduler_mesh import CODE, CPU2, OWNER, THIEF, call, grants, node, ok, rid, spec, tid

from p2pexec.exec import protocol as p
from p2pexec.exec.events import (
    ActorKilled,
    CodeFetched,
    CodeRegistered,
    NameLost,
    PeerGone,
    Put,
    RemoteActorKilled,
    StealRequested,
    Submitted,
    TaskFinished,
    TasksGranted,
    WorkerReady,
)
from p2pexec.exec.instructions import (
    ActorHere,
    ActorNamed,
    CodeHere,
    Completed,
    FetchCode,
    LocateActor,
    ReturnResult,
    Send,
    StopWorker,
    Warn,
)
from p2pexec.exec.refs import return_id
from p2pexec.exec.scheduler import DRIVER
from p2pexec.exec.task import ACTOR_CREATE

OTHER = b"c" * 16
"""A code hash the thief has never seen."""


def named(n: int, name: str):
    return dataclasses.replace(spec(n), kind=ACTOR_CREATE, actor_id=tid(n), actor_name=name)


def started_actor(core, n: int, name: str) -> int:
    """Create the named actor `n` on `core` and finish its constructor; its worker id."""
    core.handle(Submitted(named(n, name), DRIVER))
    worker = core.actors.get(tid(n)).worker
    core.handle(WorkerReady(worker), TaskFinished(worker, tid(n), [ok()], None, 0.1))
    return worker


def error_of(core, object_id: bytes) -> tuple[str, str]:
    payload = core.objects.payload(object_id)
    assert payload[0] == p.SYSTEM_ERROR, payload
    return payload[1], payload[2]


def test_a_named_actor_publishes_its_name_while_it_lives():
    home = node(1)
    out = home.handle(Submitted(named(9, "ps"), DRIVER))
    assert ActorHere(tid(9), True) in out and ActorNamed("ps", tid(9), True) in out
    home.handle(WorkerReady(home.actors.get(tid(9)).worker))
    out = home.handle(ActorKilled(tid(9)))
    assert ActorHere(tid(9), False) in out and ActorNamed("ps", tid(9), False) in out


def test_the_larger_actor_id_loses_a_name_race_and_its_calls_say_why():
    home = node(1)
    worker = started_actor(home, 9, "ps")
    home.handle(Submitted(call(1, tid(9)), DRIVER))  # in flight at the actor
    out = home.handle(NameLost(tid(9), "ps", tid(3)))
    assert StopWorker(worker) in out and ActorNamed("ps", tid(9), False) in out
    kind, text = error_of(home, rid(1))
    assert kind == "ActorDiedError" and "kept the name" in text and "ps" in text
    assert home.lookup_actor("ps") is None


def test_a_name_race_claim_against_the_rule_or_for_an_unknown_actor_is_ignored():
    home = node(1)
    started_actor(home, 3, "ps")
    out = home.handle(NameLost(tid(3), "ps", tid(9)))  # 9 > 3: this actor keeps it
    assert [type(i) for i in out] == [Warn] and home.lookup_actor("ps") == tid(3)
    out = home.handle(NameLost(tid(7), "ps", tid(1)))  # no such actor here
    assert [type(i) for i in out] == [Warn] and home.lookup_actor("ps") == tid(3)


def test_code_is_published_once_per_hash():
    core = node(1)  # registered CODE already
    assert core.handle(CodeRegistered(CODE, b"code")) == []
    assert core.handle(CodeRegistered(OTHER, b"other")) == [CodeHere(OTHER)]


def test_a_grant_carries_code_the_thief_has_not_had_from_this_node_only():
    owner = node(1)
    for n in range(1, 9):
        owner.handle(Submitted(spec(n), DRIVER))
    (first,) = grants(owner.handle(StealRequested(THIEF, 1, 2.0, CPU2)))
    (second,) = grants(owner.handle(StealRequested(THIEF, 2, 2.0, CPU2)))
    (other,) = grants(owner.handle(StealRequested(b"X" * 32, 3, 2.0, CPU2)))
    assert first.specs and second.specs and other.specs
    assert (first.code, second.code, other.code) == ({CODE: b"code"}, {}, {CODE: b"code"})
    owner.handle(PeerGone(THIEF))  # a thief that comes back may have lost it
    owner.handle(*[Submitted(spec(n), DRIVER) for n in range(10, 14)])
    (again,) = grants(owner.handle(StealRequested(THIEF, 4, 2.0, CPU2)))
    assert again.specs and again.code == {CODE: b"code"}


def test_tasks_of_code_the_thief_lacks_wait_for_one_fetch_then_run():
    thief = node(1, workers_ready=True)
    tasks = [dataclasses.replace(spec(n), callable_hash=OTHER) for n in (1, 2)]
    out = thief.handle(TasksGranted(OWNER, tasks, {}, {}))
    assert out == [FetchCode(OTHER, OWNER)]  # asked once, of the granting node first
    assert [thief.tasks[tid(n)].state.value for n in (1, 2)] == ["waiting", "waiting"]
    out = thief.handle(CodeFetched(OTHER, b"other"))
    # no record of its own: the granting node has one, and is asked first (a record per
    # thief made messages per task grow with the cluster, simulations/mesh_figures.py)
    assert CodeHere(OTHER) not in out
    sends = [i.message for i in out if type(i) is Send]  # one runs, one queues behind
    assert [(m.task_id, m.code) for m in sends] == [(tid(1), b"other"), (tid(2), None)]
    out = thief.handle(TaskFinished(1, tid(1), [ok(b"r")], None, 0.01))
    assert ReturnResult(OWNER, tid(1), (rid(1),), [ok(b"r")], None, 0.01) in out


def test_code_no_node_can_give_fails_its_tasks_with_a_clear_error():
    thief = node(1, workers_ready=True)
    task = dataclasses.replace(spec(1), callable_hash=OTHER)
    thief.handle(TasksGranted(OWNER, [task], {}, {}))
    out = thief.handle(CodeFetched(OTHER, None, "O: does not have it"))
    (result,) = [i for i in out if type(i) is ReturnResult]
    kind, text = result.payloads[0][1:]
    assert kind == "CodeUnavailableError" and OTHER.hex() in text and "does not have" in text
    assert not thief.tasks


def test_an_actor_placed_here_whose_class_cannot_be_had_is_dead():
    home = node(1, workers_ready=True)
    create = dataclasses.replace(named(9, "ps"), callable_hash=OTHER)
    home.handle(TasksGranted(OWNER, [create], {}, {}))
    home.handle(WorkerReady(home.actors.get(tid(9)).worker))  # still waits for the code
    assert home.tasks[tid(9)].state.value == "waiting"
    home.handle(CodeFetched(OTHER, None, "nobody has it"))
    assert not home.actors.alive(tid(9)) and home.lookup_actor("ps") is None


def test_a_remote_kill_fails_the_calls_still_queued_here():
    caller = node(1)
    actor = tid(9)
    caller.handle(Put(return_id(actor, 1), ok(b"handle"), [], DRIVER))  # its handle's ref
    caller.handle(Submitted(spec(5), DRIVER))  # a call waits for this argument
    out = caller.handle(Submitted(call(1, actor, deps=[rid(5)]), DRIVER))
    assert out[-1] == LocateActor(actor)
    out = caller.handle(RemoteActorKilled(actor))
    assert Completed((rid(1),)) in out
    kind, text = error_of(caller, rid(1))
    assert kind == "ActorDiedError" and "killed with px.kill" in text
    assert caller.actor_node(actor) is None
