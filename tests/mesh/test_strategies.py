"""Scheduling strategies in the scheduler, sans-IO: SPREAD and node affinity turn into
grants an owner pushes (`PLACEMENT`), work kept here that no thief takes, or clear
failures. Instruction lists are compared as in test_scheduler_mesh.py."""

from __future__ import annotations

import dataclasses

from test_scheduler_mesh import (
    ARGS,
    CODE,
    Checked,
    call,
    grants,
    ok,
    peer_load,
    rid,
    shared,
    spec,
    tid,
)

from p2pexec.exec import protocol as p
from p2pexec.exec.config import ExecConfig
from p2pexec.exec.events import (
    CodeRegistered,
    Draining,
    PeerGone,
    PeerLoads,
    PeersResources,
    Put,
    RemoteFinished,
    Started,
    StealRequested,
    Submitted,
    TaskFinished,
    TasksGranted,
    TasksReturned,
    WorkerReady,
)
from p2pexec.exec.instructions import Completed, Forward, Grant, HandBack, Send
from p2pexec.exec.scheduler import DRIVER
from p2pexec.exec.stealing import PLACEMENT
from p2pexec.exec.task import ACTOR_CREATE, NODE_AFFINITY, SPREAD, TaskSpec

ME, B, C, GONE = b"M" * 32, b"B" * 32, b"C" * 32, b"G" * 32
CPU2 = {"CPU": 2.0}


def node(cpus: float = 2.0, in_cluster: bool = True, workers_ready: bool = False,
         peers: tuple = (B, C)) -> Checked:
    """Node ME; in a cluster its live peers are `peers` (two CPUs each), gossiped."""
    core = Checked(ExecConfig(num_cpus=cpus, max_prefetch=1), in_cluster=in_cluster,
                   node_id=ME)
    core.handle(CodeRegistered(CODE, b"code"), Started())
    if workers_ready:
        for worker in list(core.workers):
            core.handle(WorkerReady(worker))
    if in_cluster:
        core.handle(PeerLoads(tuple(peer_load(peer) for peer in peers)),
                    PeersResources(tuple(CPU2 for _ in peers), now=0.0))
    return core


def spread(n: int, **fields) -> TaskSpec:
    return dataclasses.replace(spec(n, **fields), strategy=SPREAD)


def affine(n: int, target: bytes, soft: bool = False, **fields) -> TaskSpec:
    return dataclasses.replace(spec(n, **fields), strategy=NODE_AFFINITY, affinity=target,
                               soft=soft)


def failure(core: Checked, n: int) -> tuple[str, str]:
    """The error class and message task `n`'s result holds."""
    kind, name, message = core.objects.payload(rid(n))
    assert kind == p.SYSTEM_ERROR
    return name, message


def pushed(grant: Grant) -> tuple[bytes, int, list[bytes]]:
    return grant.thief, grant.request_id, [s.task_id for s in grant.specs]


# ---- SPREAD ----
def test_spread_tasks_go_round_robin_over_the_live_nodes_starting_here():
    owner = node()
    out = owner.handle(*(Submitted(spread(n), DRIVER) for n in range(1, 7)))
    # nodes by id: B, C, M; the turn starts here: 1 M, 2 B, 3 C, 4 M, 5 B, 6 C
    assert out == [Grant(B, PLACEMENT, (spread(2), spread(5)), {}, {CODE: b"code"}, 0),
                   Grant(C, PLACEMENT, (spread(3), spread(6)), {}, {CODE: b"code"}, 0)]
    assert [owner.tasks[tid(n)].state.value for n in (1, 4)] == ["ready", "ready"]
    assert owner.queue_length() == 0  # kept here by their strategy: not load to steal
    assert grants(owner.handle(StealRequested(B, 1, 2.0, CPU2)))[0].specs == ()
    assert owner.counts["stolen_out"] == 4


def test_spread_skips_nodes_that_could_never_fit_and_alone_just_runs():
    owner = node()
    owner.handle(PeerLoads((peer_load(B), dataclasses.replace(
        peer_load(C), resources={"CPU": 2.0, "gpu": 1.0}))))
    gpu = {"CPU": 1.0, "gpu": 1.0}
    out = owner.handle(*(Submitted(spread(n, resources=gpu), DRIVER) for n in (1, 2)))
    assert [pushed(g) for g in grants(out)] == [(C, PLACEMENT, [tid(1), tid(2)])]
    alone = node(in_cluster=False, workers_ready=True)
    out = alone.handle(Submitted(spread(1), DRIVER))
    assert [type(i) for i in out] == [Send]  # DEFAULT: it runs here


# ---- hard node affinity ----
def test_hard_affinity_pushes_to_its_node_and_no_thief_takes_it():
    owner = node()
    out = owner.handle(Submitted(affine(1, B), DRIVER), Submitted(affine(2, ME), DRIVER))
    assert [pushed(g) for g in grants(out)] == [(B, PLACEMENT, [tid(1)])]
    assert owner.tasks[tid(2)].state.value == "ready"
    assert grants(owner.handle(StealRequested(C, 1, 2.0, CPU2)))[0].specs == ()
    out = owner.handle(RemoteFinished(B, tid(1), [rid(1)], [ok()], None, 0.1))
    assert owner.objects.payload(rid(1)) == ok()


def test_hard_affinity_fails_when_its_node_dies_or_gives_it_back_never_running_elsewhere():
    owner = node()
    owner.handle(*(Submitted(affine(n, B), DRIVER) for n in (1, 2)),
                 Submitted(affine(3, C), DRIVER))
    owner.handle(TasksReturned(C, [tid(3)]))  # C is leaving
    assert failure(owner, 3)[0] == "TaskUnschedulableError"
    assert f"node {C.hex()} gave it back" in failure(owner, 3)[1]
    out = owner.handle(PeerGone(B))
    assert not grants(out) and not owner.tasks
    name, message = failure(owner, 1)
    assert name == "TaskUnschedulableError" and f"node {B.hex()} died" in message
    assert "soft=False" in message
    owner.handle(Submitted(affine(4, B), DRIVER))  # it was live: gone now, so at once
    assert f"node {B.hex()} is not a live member" in failure(owner, 4)[1]


def test_hard_affinity_to_an_unheard_of_node_waits_while_the_membership_fills_in():
    owner = node()
    owner.handle(Submitted(affine(1, GONE), DRIVER), Submitted(affine(2, b"N" * 32), DRIVER))
    assert owner.tasks[tid(1)].state.value == "waiting" and not owner.ready
    out = owner.handle(PeerLoads((peer_load(B), peer_load(b"N" * 32))))  # N joins
    assert [pushed(g) for g in grants(out)] == [(b"N" * 32, PLACEMENT, [tid(2)])]
    owner.handle(PeersResources((CPU2, CPU2), now=10.5))  # settled: GONE never came
    assert "is not a live member of the cluster" in failure(owner, 1)[1]
    owner.handle(Submitted(affine(3, GONE), DRIVER))  # settled: at once
    assert failure(owner, 3)[0] == "TaskUnschedulableError"


def test_hard_affinity_fails_on_a_node_too_small_or_for_arguments_a_grant_cannot_carry():
    owner = node()
    owner.handle(Submitted(affine(1, B, resources={"CPU": 4.0}), DRIVER),
                 Submitted(affine(2, ME, resources={"gpu": 1.0}), DRIVER),
                 Submitted(affine(3, B, args=shared("p2px-1-args")), DRIVER))
    assert "has {'CPU': 2.0}, not the {'CPU': 4.0} it needs" in failure(owner, 1)[1]
    assert failure(owner, 2)[0] == "TaskUnschedulableError"
    assert "px.put" in failure(owner, 3)[1]


def test_hard_affinity_waits_for_the_refs_inside_its_arguments_then_carries_their_values():
    owner = node(workers_ready=True)
    owner.handle(Put(rid(60), ok(b"top"), [], DRIVER))
    owner.handle(Submitted(spec(50), DRIVER))  # runs here; its result is nested below
    nested = dataclasses.replace(affine(1, B), deps=(rid(60),), contained=(rid(60), rid(50)))
    assert not grants(owner.handle(Submitted(nested, DRIVER)))
    (grant,) = grants(owner.handle(TaskFinished(1, tid(50), [ok(b"in")], None, 0.1)))
    assert pushed(grant) == (B, PLACEMENT, [tid(1)])
    assert grant.values == {rid(60): ok(b"top"), rid(50): ok(b"in")}


def test_alone_hard_affinity_runs_here_for_this_node_and_fails_for_another():
    alone = node(in_cluster=False, workers_ready=True)
    out = alone.handle(Submitted(affine(1, ME), DRIVER), Submitted(affine(2, B), DRIVER))
    assert [type(i) for i in out] == [Completed, Send]  # 2 failed, 1 runs
    assert "this node is in no cluster" in failure(alone, 2)[1]


# ---- soft node affinity ----
def test_soft_affinity_goes_to_a_live_node_and_else_runs_anywhere():
    owner = node(cpus=0)  # it cannot run anything itself
    out = owner.handle(Submitted(affine(1, B, soft=True), DRIVER),
                       Submitted(affine(2, GONE, soft=True), DRIVER))
    assert [pushed(g) for g in grants(out)] == [(B, PLACEMENT, [tid(1)])]
    assert owner.queue_length() == 1  # the other is DEFAULT: a thief may take it
    (grant,) = grants(owner.handle(StealRequested(C, 1, 2.0, CPU2)))
    assert [s.task_id for s in grant.specs] == [tid(2)]
    owner.handle(PeerGone(B))  # its node died: anywhere now, charged an attempt
    task = owner.tasks[tid(1)]
    assert task.state.value == "waiting" and task.attempts == 1  # parked for a thief
    (grant,) = grants(owner.handle(StealRequested(C, 2, 2.0, CPU2)))
    assert [s.task_id for s in grant.specs] == [tid(1)]


# ---- the node work is pushed to ----
def test_a_pushed_task_runs_on_its_node_and_one_it_cannot_start_is_handed_back_when_leaving():
    target = node(cpus=1, workers_ready=True, peers=())
    out = target.handle(TasksGranted(b"O" * 32, [affine(1, ME), affine(2, ME)], {},
                                     {CODE: b"code"}, placed=True))
    assert [type(i) for i in out] == [Send, Send]  # runs, and one queues at its worker
    assert target.tasks[tid(1)].owner == b"O" * 32
    assert grants(target.handle(StealRequested(C, 1, 2.0, CPU2)))[0].specs == ()
    target.handle(Draining())
    out = target.handle(TasksGranted(b"O" * 32, [affine(3, ME)], {}, {}, placed=True))
    assert out == [HandBack(b"O" * 32, (tid(3),))]


def creation(n: int, target: bytes, cpus: float = 1.0, **fields) -> TaskSpec:
    return dataclasses.replace(affine(n, target, resources={"CPU": cpus}), kind=ACTOR_CREATE,
                               actor_id=tid(n), **fields)


def test_an_actor_bound_to_a_busy_node_waits_there_for_its_cpu():
    target = node(cpus=1, workers_ready=True, peers=())
    target.handle(Submitted(spec(1), DRIVER))  # its one CPU is taken
    target.handle(TasksGranted(b"O" * 32, [creation(9, ME)], {}, {CODE: b"code"},
                               placed=True))
    assert target.actors.get(tid(9)) is not None and tid(9) in target.tasks


def test_an_actor_with_hard_affinity_lives_there_and_dies_with_that_node():
    owner = node()
    create = creation(9, B, max_restarts=1)
    (grant,) = grants(owner.handle(Submitted(create, DRIVER)))
    assert pushed(grant) == (B, PLACEMENT, [tid(9)])
    owner.handle(Submitted(call(1, tid(9)), DRIVER))
    out = owner.handle(RemoteFinished(B, tid(9), [rid(9)], [ok()], None, 0.1))
    assert Forward(B, (call(1, tid(9)),), {rid(9): ok()}) in out
    out = owner.handle(PeerGone(B), Submitted(call(2, tid(9)), DRIVER))
    assert not grants(out) and owner.actors.get(tid(9)) is None  # not restarted elsewhere
    assert "ActorDiedError" == failure(owner, 1)[0]


def test_an_actor_bound_to_an_unknown_node_is_dead_and_its_calls_say_why():
    owner = node()
    owner.handle(PeersResources((CPU2, CPU2), now=10.5))  # settled
    owner.handle(Submitted(creation(9, GONE), DRIVER), Submitted(call(1, tid(9)), DRIVER))
    name, message = failure(owner, 1)
    assert name == "ActorDiedError" and "cannot be scheduled" in message
    assert f"node {GONE.hex()} is not a live member" in message


def test_an_actor_bound_to_a_peer_is_sent_once_its_constructor_arguments_are_here():
    owner = node(workers_ready=True)
    create = dataclasses.replace(creation(9, B), deps=(rid(5),), contained=(rid(5),))
    owner.handle(Submitted(spec(5), DRIVER))  # makes the argument, here
    assert not grants(owner.handle(Submitted(create, DRIVER)))
    (grant,) = grants(owner.handle(TaskFinished(1, tid(5), [ok(b"a")], None, 0.1)))
    assert pushed(grant) == (B, PLACEMENT, [tid(9)]) and grant.values == {rid(5): ok(b"a")}


def test_the_spec_refuses_a_strategy_it_does_not_know():
    for fields in ({"strategy": 7}, {"strategy": NODE_AFFINITY},
                   {"strategy": SPREAD, "affinity": B}):
        try:
            TaskSpec(tid(1), 0, CODE, None, ARGS, (), (), (rid(1),), "t", **fields)
        except ValueError:
            continue
        raise AssertionError(fields)


def test_work_waiting_for_an_unknown_node_fails_together_when_the_membership_settles():
    """The actor's constructor argument comes from a task bound to the same unknown
    node: when the membership settles the task fails, and the actor with its error."""
    owner = node()
    owner.handle(Submitted(affine(1, GONE), DRIVER))
    create = dataclasses.replace(creation(9, GONE), deps=(rid(1),), contained=(rid(1),))
    owner.handle(Submitted(create, DRIVER))
    owner.handle(PeersResources((CPU2, CPU2), now=10.5))
    assert failure(owner, 1)[0] == failure(owner, 9)[0] == "TaskUnschedulableError"
    assert not owner.tasks and not owner.actors.alive(tid(9))


def test_default_placement_never_pushes_a_creation_whose_arguments_a_grant_cannot_carry():
    """(Before: pushed anyway; the peer refused the shared-memory arguments by dropping
    the connection, or fetched a constructor argument that did not exist yet.)"""
    owner = node(workers_ready=True)
    owner.handle(Submitted(spec(1), DRIVER))  # a CPU taken here: the peers look better
    plain = dataclasses.replace(spec(8), kind=ACTOR_CREATE, actor_id=tid(8))
    assert grants(owner.handle(Submitted(plain, DRIVER)))  # placed on a peer, as before
    for n, fields in ((9, {"args": shared("p2px-1-args")}),
                      (10, {"deps": (rid(1),), "contained": (rid(1),)})):
        create = dataclasses.replace(spec(n), kind=ACTOR_CREATE, actor_id=tid(n), **fields)
        assert not grants(owner.handle(Submitted(create, DRIVER)))
        assert owner.tasks[tid(n)].state.value == "waiting"  # here (or parked), not sent
