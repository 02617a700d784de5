"""Whole nodes on SimNetwork steal each other's work (inline workers, simulated time)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from p2pexec.errors import ActorDiedError, ObjectLostError, TaskUnschedulableError
from p2pexec.exec import mesh
from p2pexec.exec import protocol as p
from p2pexec.exec.events import PeerGone, TasksReturned
from p2pexec.exec.output import MAX_LINE, STDOUT, Output, OutputLines, job_id
from p2pexec.exec.stealing import PLACEMENT, PeerLoad
from p2pexec.exec.task import ACTOR_CREATE, NODE_AFFINITY, SPREAD, TaskSpec
from p2pexec.ids import NodeId
from p2pexec.testing.cluster import SimCluster
from p2pexec.testing.simnet import LinkSpec, SimNetwork

SCRIPT = Path(__file__).resolve().parents[2] / "simulations" / "mesh_figures.py"
_spec = importlib.util.spec_from_file_location("mesh_figures", SCRIPT)
figures = sys.modules.setdefault("mesh_figures", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(figures)
triple = figures.triple


async def converged(nursery: trio.Nursery, nodes: int, seed: int,
                    duration: float | Callable[[p.Execute], float],
                    jitter: float = 0.0005) -> SimCluster:
    """`nodes` nodes of two CPUs on 1 ms links, started, their membership converged."""
    net = SimNetwork(seed=seed, default_link=LinkSpec(latency=0.001, jitter=jitter))
    cluster = SimCluster(net, nodes, cpus=2, duration=duration, seed=seed)
    await cluster.start(nursery)
    assert await cluster.wait_converged(30)
    return cluster


async def three_nodes(nursery: trio.Nursery, seed: int,
                      duration: float | Callable[[p.Execute], float]) -> SimCluster:
    """Three converged nodes of two CPUs whose loads (and DHT tables) have been gossiped."""
    cluster = await converged(nursery, 3, seed, duration)
    await trio.sleep(2)  # loads gossiped
    return cluster


async def test_idle_nodes_steal_from_the_one_that_has_the_work(autojump_clock):
    """120 tasks of 0.1 s at one node of three: the other two take a share, and the
    120 x 0.1 s / 6 CPUs = 2 s of work takes about that (a steal is a round trip)."""
    async with trio.open_nursery() as nursery:
        cluster = await three_nodes(nursery, seed=3, duration=0.1)
        owner = cluster.nodes[0]
        started = trio.current_time()
        ids = [owner.submit(triple, i) for i in range(120)]
        results = [await owner.result(oid) for oid in ids]
        elapsed = trio.current_time() - started
        assert results == [3 * i for i in range(120)]
        counts = [sim.node.exec.core.counts for sim in cluster.nodes]
        assert elapsed <= 2.3, elapsed
        assert all(c["done"] >= 20 for c in counts), counts
        assert counts[0]["stolen_out"] == counts[1]["stolen_in"] + counts[2]["stolen_in"]
        nursery.cancel_scope.cancel()


async def test_twenty_nodes_run_5000_tasks_within_15_percent_of_the_ideal(autojump_clock):
    row = await figures.burst(20, 5000)
    assert row.ratio <= 1.15, (row.makespan, row.ideal)
    assert all(c["done"] >= 100 for c in row.counts), row.counts  # every node ran a share
    assert row.counts[0]["stolen_out"] == sum(c["stolen_in"] for c in row.counts[1:])
    assert row.steal_requests_per_task <= 2 and row.messages_per_task <= 5


async def test_three_nodes_unplugged_mid_run_lose_no_result(autojump_clock):
    # burst() checks that each of the 5,000 results reached the owner exactly once
    row = await figures.burst(20, 5000, crash=3)
    assert sum(c["done"] for c in row.counts) >= 5000  # the dead nodes' tasks ran again
    assert row.ratio <= 1.5, (row.makespan, row.ideal)


async def test_bad_mesh_input_from_a_peer_is_refused_and_loses_no_task(autojump_clock, caplog):
    async with trio.open_nursery() as nursery:
        cluster = await converged(nursery, 3, 5, 0.1, jitter=0.0)
        victim, bad = cluster.nodes[0], cluster.nodes[1].node.cluster
        ids = [victim.submit(triple, i) for i in range(60)]
        address, node = victim.address, victim.node.cluster.node_id
        fake = mesh.TaskResult(b"\x01" * 16, [b"\x01" * 20], [[p.INLINE, b"x", []]], None,
                               None)
        await bad.rpc.notify(address, mesh.TaskResults([fake]), node=node)
        await bad.rpc.notify_many(address, [mesh.StealRequest(i, 2.0, {"CPU": 2.0}, {"CPU": 2.0})
                                            for i in range(1000)], node=node)
        for message in (mesh.StealGrant(999, [], {}, {}, [], 0),
                        mesh.TaskResults([dataclasses.replace(fake, object_ids=[])])):
            await trio.sleep(0.5)
            await bad.rpc.notify(address, message, node=node)
        with trio.fail_after(60):
            results = [await victim.result(oid) for oid in ids]
        assert results == [3 * i for i in range(60)]
        nursery.cancel_scope.cancel()
    text = caplog.text
    assert "did not give it; dropped" in text
    assert "asks for work faster than" in text
    assert "which this node did not send it; refused" in text
    assert "payload count unlike its ids" in text


async def test_a_peers_output_reaches_the_jobs_driver_and_bad_output_drops_the_peer(
        autojump_clock, caplog):
    async with trio.open_nursery() as nursery:
        cluster = await converged(nursery, 2, 6, 0.1, jitter=0.0)
        home, peer = cluster.nodes[0], cluster.nodes[1].node.cluster
        shown: list[OutputLines] = []
        home.node.exec.driver_output = shown.extend
        address, node = home.address, home.node.cluster.node_id
        job = job_id(node.raw, 0)  # the embedded driver of `home`
        good = OutputLines(job, "f", 42, "thief", STDOUT, ["hello"])
        await peer.rpc.notify(address, Output([good]), node=node)
        await trio.sleep(0.5)
        assert shown == [good]
        bad = OutputLines(job, "f", 42, "thief", STDOUT, ["x" * (MAX_LINE + 1000)])
        await peer.rpc.notify(address, Output([bad]), node=node)
        await trio.sleep(0.5)
        assert shown == [good]
        with trio.fail_after(60):  # and the node serves on
            assert await home.result(home.submit(triple, 5)) == 15
        nursery.cancel_scope.cancel()
    assert "output line over the length limit" in caplog.text


async def test_tasks_a_thief_dropped_on_a_one_sided_verdict_run_again_at_the_owner(
        autojump_clock):
    """Whole nodes: the thieves hear a `PeerGone` for the owner that the owner never
    hears of them (a one-sided false verdict) and drop its tasks; the owner's held
    checks (HeldCheck, answered by ReturnTasks over the mesh) bring every one back."""
    async with trio.open_nursery() as nursery:
        cluster = await three_nodes(nursery, seed=9, duration=2.0)
        owner = cluster.nodes[0]
        ids = [owner.submit(triple, i) for i in range(24)]
        await trio.sleep(1.0)  # the thieves took their share
        taken = [sim.node.exec.core.counts["stolen_in"] for sim in cluster.nodes[1:]]
        assert sum(taken) > 0, taken
        for sim in cluster.nodes[1:]:
            sim.node.exec.stimulus(PeerGone(owner.node.node_id.raw))
        started = trio.current_time()
        with trio.fail_after(60):
            results = [await owner.result(oid) for oid in ids]
        assert results == [3 * i for i in range(24)]
        # back within two check intervals (plus the reruns' own time)
        assert trio.current_time() - started <= 2 * 10.0 + 8, trio.current_time() - started
        nursery.cancel_scope.cancel()


class Worker:
    def __init__(self) -> None:
        self.steps = 0

    def step(self) -> int:
        self.steps += 1
        return self.steps


async def test_actors_go_to_the_least_loaded_node_and_their_calls_follow(autojump_clock):
    """Three nodes of two CPUs: one-CPU actors made one after another at the same node
    spread over all three (each lands where it leaves the most room), and calls reach
    each actor wherever it went."""
    async with trio.open_nursery() as nursery:
        cluster = await three_nodes(nursery, seed=8, duration=0.01)
        home = cluster.nodes[0]

        def where(actor: bytes) -> int:
            (index,) = [i for i, sim in enumerate(cluster.nodes)
                        if sim.node.exec.core.actors.alive(actor)]
            return index

        actors = []
        for _ in range(3):
            actor = home.create_actor(Worker, resources={"CPU": 1.0})
            assert await home.result(home.call_actor(actor, "step")) == 1
            actors.append(actor)
            await trio.sleep(1)  # the new load gossiped before the next one
        assert sorted(where(actor) for actor in actors) == [0, 1, 2]
        assert [await home.result(home.call_actor(a, "step")) for a in actors] == [2, 2, 2]
        nursery.cancel_scope.cancel()



class Tally:
    """An actor that counts its calls: a restarted one counts from 1 again."""

    def __init__(self) -> None:
        self.calls = 0

    def work(self, x: int) -> tuple[int, int]:
        self.calls += 1
        return x, self.calls


SECONDS = {"work": 1.0, "busy": 10.0, "busier": 20.0}


def seconds(work: p.Execute) -> float:
    """`Tally.work` takes a simulated second, `busy` and `busier` tasks 10 and 20,
    everything else 10 ms."""
    return SECONDS.get(work.name, 0.01)


async def tally_called_from_a_third_node(nursery: trio.Nursery, seed: int,
                                         cpus: float = 0.0
                                         ) -> tuple[SimCluster, bytes, list[bytes], bytes]:
    """Three nodes of two CPUs: the first makes a Tally (max_restarts=1, holding `cpus`)
    that lives on the second; the third calls it, three calls with max_task_retries=1
    then one without, and the second crashes while the first of them runs. The actor,
    its retried calls' ids and the doomed call's id."""
    cluster = await three_nodes(nursery, seed, seconds)
    maker, home, caller = cluster.nodes
    there = {"strategy": NODE_AFFINITY, "affinity": home.node.node_id.raw, "soft": True}
    actor = maker.create_actor(Tally, max_restarts=1, strategy=there,
                               resources={"CPU": cpus} if cpus else None)
    assert await maker.result(maker.call_actor(actor, "work", -1)) == (-1, 1)
    assert home.node.exec.core.actor_alive(actor)
    retried = [caller.call_actor(actor, "work", i, max_task_retries=1) for i in range(3)]
    doomed = caller.call_actor(actor, "work", 99)
    await trio.sleep(0.5)  # all forwarded; the first runs
    cluster.crash(1)
    return cluster, actor, retried, doomed


async def test_a_third_nodes_calls_in_flight_follow_the_restarted_actor(autojump_clock):
    """The actor's node dies with calls from a node that did not make it in flight: its
    maker places it again, the caller finds it, and the calls max_task_retries allows
    run on the new incarnation (fresh state), in order; the other fails."""
    async with trio.open_nursery() as nursery:
        cluster, actor, retried, doomed = await tally_called_from_a_third_node(nursery, 21)
        caller = cluster.nodes[2]
        with pytest.raises(ActorDiedError, match="the node of the actor running work died"):
            await caller.result(doomed)
        assert [await caller.result(oid) for oid in retried] == [(0, 1), (1, 2), (2, 3)]
        alive = [i for i, sim in enumerate(cluster.nodes)
                 if i != 1 and sim.node.exec.core.actor_alive(actor)]
        assert len(alive) == 1
        nursery.cancel_scope.cancel()


async def test_a_third_nodes_calls_wait_while_the_maker_has_no_room_for_the_actor(
        autojump_clock):
    """The maker can place the two-CPU actor again only once its own tasks end, 10 s
    later (the caller's CPUs are taken longer): the caller looks for it, in vain, until
    then, finds it at the maker, and its retried calls run there."""
    async with trio.open_nursery() as nursery:
        cluster, actor, retried, doomed = await tally_called_from_a_third_node(
            nursery, 23, cpus=2.0)
        maker, caller = cluster.nodes[0], cluster.nodes[2]
        busy = [maker.submit(triple, i, name="busy") for i in range(2)]
        busier = caller.submit(triple, 9, name="busier")
        crashed = trio.current_time()
        with pytest.raises(ActorDiedError):
            await caller.result(doomed)
        assert [await caller.result(oid) for oid in retried] == [(0, 1), (1, 2), (2, 3)]
        assert trio.current_time() - crashed > SECONDS["busy"]
        assert maker.node.exec.core.actor_alive(actor)
        assert [await maker.result(oid) for oid in busy] == [0, 3]
        assert await caller.result(busier) == 27
        nursery.cancel_scope.cancel()


async def test_a_third_nodes_calls_fail_when_the_actor_is_not_restarted(autojump_clock):
    """Its maker crashes with the actor's node: nobody places it again, and the calls
    waiting at the caller fail with ActorDiedError once the search's deadline passes."""
    async with trio.open_nursery() as nursery:
        cluster, _actor, retried, doomed = await tally_called_from_a_third_node(nursery, 22)
        cluster.crash(0)
        caller = cluster.nodes[2]
        timeout = caller.node.exec.config.actor_relocate_timeout
        crashed = trio.current_time()
        with trio.fail_after(timeout + 60):  # + failure detection (slow: two of three died)
            with pytest.raises(ActorDiedError):
                await caller.result(doomed)
            for oid in retried:
                with pytest.raises(ActorDiedError, match=f"again within {timeout:g} s"):
                    await caller.result(oid)
        assert trio.current_time() - crashed >= timeout
        nursery.cancel_scope.cancel()


async def test_an_actor_is_looked_for_only_on_nodes_membership_shows_alive():
    """A dead node's actor record outlives it in the DHT until every node holding it
    hears of the death, and the dead node cannot withdraw it: the lookup names the first
    publisher that is a live member, never the dead one."""
    dead, live, me = NodeId(b"B" * 32), NodeId(b"D" * 32), NodeId(b"C" * 32)

    class Dht:
        async def find_value(self, key: bytes) -> list[SimpleNamespace]:
            return [SimpleNamespace(publisher=dead), SimpleNamespace(publisher=live)]

    mesher = mesh.Mesh.__new__(mesh.Mesh)
    mesher.dht = Dht()
    mesher.rpc = SimpleNamespace(local=SimpleNamespace(node_id=me))
    mesher.peers = lambda: [PeerLoad(live, ("10.0.0.4", 7946), 0, 1)]
    assert await mesher._actor_home(b"a" * 16) == live.raw
    mesher.peers = lambda: [PeerLoad(dead, ("10.0.0.2", 7946), 0, 1)]
    assert await mesher._actor_home(b"a" * 16) == dead.raw
    mesher.peers = lambda: []
    assert await mesher._actor_home(b"a" * 16) is None


def test_a_grant_that_cannot_be_sent_queues_its_tasks_at_the_owner_again():
    """A peer that cannot be reached gets no grant (a steal's, or an actor pushed to
    it): its tasks come back here at once (`TasksReturned`), instead of waiting on a node
    that never heard of them until the membership declares it dead."""
    heard = []
    service = type("Service", (), {"stimulus": lambda self, *events: heard.extend(events)})
    mesher = mesh.Mesh.__new__(mesh.Mesh)
    mesher.service = service()
    peer = NodeId(b"P" * 32)
    spec = TaskSpec(b"t" * 16, ACTOR_CREATE, b"h" * 16, None,
                                   [p.INLINE, b"a", []], (), (), (b"r" * 20,), "A", {})
    grant = mesh.StealGrant(PLACEMENT, [spec], {}, {}, [], 0)
    mesher._unanswered(peer, [grant], ObjectLostError("unreachable"))
    assert heard == [TasksReturned(peer.raw, [spec.task_id])]


async def test_answers_to_borrows_lost_with_a_connection_go_again(autojump_clock):
    """A `LentObjects` the connection lost is sent again while the borrower is a live
    member (its gets would wait for ever otherwise); a duplicate is harmless there."""
    sent, failures = [], [OSError("connection reset")]

    class Rpc:
        async def notify_many(self, address, messages, node=None):
            if failures:
                raise failures.pop()
            sent.append((address, list(messages)))

    mesher = mesh.Mesh.__new__(mesh.Mesh)
    mesher.service = type("Service", (), {"stimulus": lambda self, *events: None})()
    mesher.rpc, mesher.address_of = Rpc(), lambda node: ("10.0.0.9", 7946)
    peer = NodeId(b"P" * 32)
    lent = mesh.LentObjects({b"o" * 20: [p.INLINE, b"v", []]}, [])
    async with trio.open_nursery() as nursery:
        mesher._nursery = nursery
        mesher._unanswered(peer, [lent], ObjectLostError("connection reset"))
    assert sent == [(("10.0.0.9", 7946), [lent])]  # the second try got through
    mesher.address_of = lambda node: None  # a borrower that left: nothing more is sent
    sent.clear()
    async with trio.open_nursery() as nursery:
        mesher._nursery = nursery
        mesher._unanswered(peer, [lent], ObjectLostError("connection reset"))
    assert sent == []


async def test_spread_lands_on_every_node_and_affinity_on_its_own(autojump_clock):
    """Three nodes of two CPUs, everything submitted at the first: 30 SPREAD tasks run
    10 on each node; 12 with hard affinity to the second all run there; with hard
    affinity to the third, they fail with TaskUnschedulableError when it crashes rather
    than run elsewhere, while soft affinity to it runs them anyway."""
    async with trio.open_nursery() as nursery:
        cluster = await three_nodes(nursery, seed=4, duration=0.1)
        owner = cluster.nodes[0]
        raw = [sim.node.node_id.raw for sim in cluster.nodes]

        def done() -> list[int]:
            return [sim.node.exec.core.counts["done"] for sim in cluster.nodes]

        ids = [owner.submit(triple, i, strategy={"strategy": SPREAD}) for i in range(30)]
        assert [await owner.result(oid) for oid in ids] == [3 * i for i in range(30)]
        assert done() == [10, 10, 10]
        hard = {"strategy": NODE_AFFINITY, "affinity": raw[1], "soft": False}
        ids = [owner.submit(triple, i, strategy=hard) for i in range(12)]
        assert [await owner.result(oid) for oid in ids] == [3 * i for i in range(12)]
        assert done() == [10, 22, 10]
        doomed = [owner.submit(triple, i, strategy={**hard, "affinity": raw[2]})
                  for i in range(40)]  # 4 s of work for its 2 CPUs
        await trio.sleep(0.5)
        cluster.crash(2)
        failed = 0
        for oid in doomed:
            try:
                await owner.result(oid)
            except TaskUnschedulableError as exc:
                assert f"node {raw[2].hex()} died" in str(exc)
                failed += 1
        # none ran anywhere else (a failure counts as done at its owner)
        assert failed > 30 and done()[:2] == [10 + failed, 22]
        soft = [owner.submit(triple, i, strategy={**hard, "affinity": raw[2], "soft": True})
                for i in range(6)]
        assert [await owner.result(oid) for oid in soft] == [3 * i for i in range(6)]
        nursery.cancel_scope.cancel()
