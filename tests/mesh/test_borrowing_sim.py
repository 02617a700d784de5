"""Refs to objects another node owns, on whole simulated nodes: the borrower gets the
value from the owner, the owner keeps the object while a borrower holds it, and a dead
owner's futures fail instead of hanging."""

from __future__ import annotations

import pytest
import trio

from p2pexec import errors
from p2pexec.exec import mesh, shm
from p2pexec.exec import protocol as p
from p2pexec.testing.cluster import SimCluster
from p2pexec.testing.simnet import LinkSpec, SimNetwork


def slow_square(x):
    return x * x


async def start(nursery: trio.Nursery, n: int = 2, duration: float = 0.0) -> SimCluster:
    net = SimNetwork(seed=11, default_link=LinkSpec(latency=0.001))
    cluster = SimCluster(net, n, cpus=1, duration=duration, seed=11)
    await cluster.start(nursery)
    assert await cluster.wait_converged(30)
    return cluster


def owner_id(sim) -> bytes:
    return sim.node.node_id.raw


async def test_a_small_object_is_read_on_another_node_and_freed_everywhere(autojump_clock):
    async with trio.open_nursery() as nursery:
        cluster = await start(nursery)
        owner, borrower = cluster.nodes
        oid = owner.put({"weights": [1, 2, 3]})
        borrower.receive_ref(oid, owner_id(owner))
        await trio.sleep(0.1)
        owner.drop_ref(oid)  # the owner's driver lets go; the borrower still holds it
        with trio.fail_after(10):
            assert await borrower.result(oid) == {"weights": [1, 2, 3]}
        await trio.sleep(0.5)  # the release reaches the owner
        assert len(owner.node.exec.core.objects) == 0
        assert len(borrower.node.exec.core.objects) == 0
        nursery.cancel_scope.cancel()


async def test_a_borrowed_result_arrives_when_the_task_at_its_owner_ends(autojump_clock):
    async with trio.open_nursery() as nursery:
        cluster = await start(nursery, duration=2.0)
        owner, borrower = cluster.nodes
        oid = owner.submit(slow_square, 12)
        borrower.receive_ref(oid, owner_id(owner))
        started = trio.current_time()
        with trio.fail_after(30):
            assert await borrower.result(oid) == 144
        assert trio.current_time() - started >= 1.9  # it waited for the task, not a poll
        assert await owner.result(oid) == 144
        nursery.cancel_scope.cancel()


async def test_a_dead_owners_future_fails_with_owner_died(autojump_clock):
    async with trio.open_nursery() as nursery:
        cluster = await start(nursery, n=3, duration=60.0)
        owner, borrower = cluster.nodes[0], cluster.nodes[1]
        oid = owner.submit(slow_square, 3)
        borrower.receive_ref(oid, owner_id(owner))
        await trio.sleep(1)
        cluster.crash(0)
        with trio.fail_after(60), pytest.raises(errors.OwnerDiedError, match="died or left"):
            await borrower.result(oid)
        nursery.cancel_scope.cancel()


async def test_a_ref_whose_owner_is_no_member_fails_at_once(autojump_clock):
    async with trio.open_nursery() as nursery:
        cluster = await start(nursery)
        borrower = cluster.nodes[1]
        oid = b"\x07" * 20
        borrower.receive_ref(oid, b"Z" * 32)
        with trio.fail_after(5), pytest.raises(errors.OwnerDiedError, match="not a live member"):
            await borrower.result(oid)
        nursery.cancel_scope.cancel()


async def test_a_lender_sending_a_segment_name_inline_is_dropped(autojump_clock, caplog):
    async with trio.open_nursery() as nursery:
        cluster = await start(nursery)
        owner, borrower = cluster.nodes
        oid = owner.put(b"x" * 10)
        bad = owner.node.cluster
        borrower.receive_ref(oid, owner_id(owner))
        segment = shm.segment_name(1, oid)  # well formed, but names a file of the sender's
        forged = mesh.LentObjects({oid: [p.SHARED, segment, 10, []]}, [])
        await bad.rpc.notify(borrower.address, forged, node=borrower.node.node_id)
        with trio.fail_after(10):  # the honest answer still comes, over a new connection
            assert await borrower.result(oid) == b"x" * 10
        assert "shared-memory payload" in caplog.text
        nursery.cancel_scope.cancel()


async def test_large_objects_borrowed_one_after_another_the_later_one_prefetched(
        autojump_clock):
    """The first large object is fetched once the owner answers; the next borrow from
    that owner fetches at once, beside its round trip, on the connection the first left.
    Each arrives whole, and once dropped every copy is freed on both nodes."""
    async with trio.open_nursery() as nursery:
        cluster = await start(nursery)
        owner, borrower = cluster.nodes
        values = [bytes([tag]) * 300_000 for tag in (1, 2, 3)]
        for value in values:
            oid = owner.put(value)
            borrower.receive_ref(oid, owner_id(owner))
            with trio.fail_after(10):
                assert await borrower.result(oid) == value
            borrower.drop_ref(oid)
            owner.drop_ref(oid)
        assert borrower.node.exec.transfers.prefetched == 2
        await trio.sleep(0.5)  # the releases reach the owner
        assert len(owner.node.exec.core.objects) == len(borrower.node.exec.core.objects) == 0
        nursery.cancel_scope.cancel()
