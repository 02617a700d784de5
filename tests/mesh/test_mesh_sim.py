"""Whole nodes on SimNetwork steal each other's work (inline workers, simulated time)."""

from __future__ import annotations

import collections
import dataclasses
import random

import trio

from p2pexec.exec import mesh
from p2pexec.exec import protocol as p
from p2pexec.exec.refs import task_of
from p2pexec.testing.cluster import SimCluster
from p2pexec.testing.simnet import LinkSpec, SimNetwork


def triple(x):
    return 3 * x


async def test_idle_nodes_steal_from_the_one_that_has_the_work(autojump_clock):
    """120 tasks of 0.1 s at one node of three: the other two take a share, and the
    120 x 0.1 s / 6 CPUs = 2 s of work takes about that (a steal is a round trip)."""
    net = SimNetwork(seed=3, default_link=LinkSpec(latency=0.001, jitter=0.0005))
    cluster = SimCluster(net, 3, cpus=2, duration=0.1, seed=3)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        assert await cluster.wait_converged(30)
        await trio.sleep(2)  # loads gossiped
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


def _seconds(task_id: bytes) -> float:
    """Each task's simulated run time, 50-500 ms, fixed by its id."""
    return random.Random(task_id).uniform(0.05, 0.5)


async def _run_5000(crash: tuple[int, ...]) -> tuple[float, float, list[dict]]:
    """5,000 tasks of random duration submitted at node 0 of 20; nodes in `crash` are
    unplugged 5, 10, 15 s into the run. Returns (makespan, ideal, per-node counts) and
    checks that each result reached its owner exactly once."""
    net = SimNetwork(seed=11, default_link=LinkSpec(latency=0.0005, jitter=0.0002))
    cluster = SimCluster(net, 20, cpus=2, duration=lambda work: _seconds(work.task_id),
                         seed=11)
    owner = cluster.nodes[0]
    completions: collections.Counter[bytes] = collections.Counter()
    table = owner.node.exec.core.objects
    complete = table.complete

    def counted(object_id, payload, contained):
        completions[object_id] += 1
        complete(object_id, payload, contained)

    table.complete = counted
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        assert await cluster.wait_converged(60)
        await trio.sleep(2)  # first load samples gossiped
        start = trio.current_time()
        ids = [owner.submit(triple, i) for i in range(5000)]

        async def unplug() -> None:
            for index, at in zip(crash, (5, 10, 15), strict=False):
                await trio.sleep_until(start + at)
                cluster.crash(index)

        nursery.start_soon(unplug)
        with trio.fail_after(600):  # simulated seconds: no future may hang
            results = [await owner.result(oid) for oid in ids]
        makespan = trio.current_time() - start
        assert results == [3 * i for i in range(5000)]
        assert set(completions) == set(ids) and set(completions.values()) == {1}
        durations = [_seconds(task_of(oid)) for oid in ids]
        ideal = sum(durations) / (2 * (20 - len(crash))) + max(durations)
        counts = [sim.node.exec.core.counts for sim in cluster.nodes]
        nursery.cancel_scope.cancel()
    return makespan, ideal, counts


async def test_twenty_nodes_run_5000_tasks_within_15_percent_of_the_ideal(autojump_clock):
    makespan, ideal, counts = await _run_5000(crash=())
    assert makespan <= 1.15 * ideal, (makespan, ideal)
    assert all(c["done"] >= 100 for c in counts), counts  # every node ran a share
    assert counts[0]["stolen_out"] == sum(c["stolen_in"] for c in counts[1:])


async def test_three_nodes_unplugged_mid_run_lose_no_result(autojump_clock):
    makespan, ideal, counts = await _run_5000(crash=(5, 9, 13))
    # the 17 survivors carry the load; tasks of the dead run again at their owner
    assert sum(c["done"] for c in counts) >= 5000
    assert makespan <= 1.5 * ideal, (makespan, ideal)


async def test_bad_mesh_input_from_a_peer_is_refused_and_loses_no_task(autojump_clock, caplog):
    net = SimNetwork(seed=5, default_link=LinkSpec(latency=0.001))
    cluster = SimCluster(net, 3, cpus=2, duration=0.1, seed=5)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        assert await cluster.wait_converged(30)
        victim, bad = cluster.nodes[0], cluster.nodes[1].node.cluster
        ids = [victim.submit(triple, i) for i in range(60)]
        address, node = victim.address, victim.node.cluster.node_id
        fake = mesh.TaskResult(b"\x01" * 16, [b"\x01" * 20], [[p.INLINE, b"x", []]], None,
                               None)
        await bad.rpc.notify(address, mesh.TaskResults([fake]), node=node)
        await bad.rpc.notify_many(address, [mesh.StealRequest(i, 2.0, {"CPU": 2.0})
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
