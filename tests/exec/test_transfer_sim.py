"""Large objects moving between whole nodes on SimNetwork: found through the DHT,
streamed in chunks, fetched once per node, resumed from another holder."""

from __future__ import annotations

import os

import trio

from p2pexec.errors import DhtLookupError, ObjectLostError
from p2pexec.exec import shm
from p2pexec.exec.transfer import CHECKSUM_SIZE, CHUNK_SIZE, object_key
from p2pexec.testing.cluster import SimCluster
from p2pexec.testing.simnet import LinkSpec, SimNetwork

SIZE = 5 * CHUNK_SIZE + 12345


def blob(tag: int) -> bytes:
    return bytes([tag]) * SIZE


async def start(nursery, n=4, seed=11, link=None):
    net = SimNetwork(seed=seed, default_link=link or LinkSpec(latency=0.001))
    cluster = SimCluster(net, n, cpus=1, seed=seed)
    await cluster.start(nursery)
    assert await cluster.wait_converged(60)
    return net, cluster


async def announced(cluster, object_id, holders):
    """Wait until the DHT lists `holders` (node indexes) for the object."""
    want = {cluster.nodes[i].node.node_id for i in holders}
    for _ in range(200):
        try:
            records = await cluster.nodes[-1].node.cluster.dht.find_value(
                object_key(object_id))
        except DhtLookupError:
            records = []
        if want <= {r.publisher for r in records}:
            return
        await trio.sleep(0.1)
    raise AssertionError("holders never announced")


async def test_two_nodes_read_one_object_at_once_each_fetching_it_once(autojump_clock):
    async with trio.open_nursery() as nursery:
        _, cluster = await start(nursery)
        a, b, c = cluster.nodes[0], cluster.nodes[1], cluster.nodes[2]
        oid = a.put(blob(7))
        await announced(cluster, oid, [0])
        for sim in (b, c):
            sim.receive_ref(oid)
            sim.receive_ref(oid)  # a second local ref: still one fetch
        async with trio.open_nursery() as readers:
            got = {}

            async def read(sim, name):
                got[name] = await sim.result(oid)

            readers.start_soon(read, b, "b")
            readers.start_soon(read, c, "c")
        assert got == {"b": blob(7), "c": blob(7)}
        served = a.node.exec.transfers.bytes_served
        assert b.node.exec.transfers.bytes_fetched == c.node.exec.transfers.bytes_fetched
        assert b.node.exec.transfers.bytes_fetched >= SIZE
        assert served + b.node.exec.transfers.bytes_served + \
            c.node.exec.transfers.bytes_served == 2 * b.node.exec.transfers.bytes_fetched
        nursery.cancel_scope.cancel()


async def copies_on_a_and_b(cluster, tag: int) -> bytes:
    """An object made on node 0 and fetched (and kept) by node 1; node 2 will ask node 0
    first. Returns its id."""
    a, b, c = cluster.nodes[0], cluster.nodes[1], cluster.nodes[2]
    oid = a.put(blob(tag))
    b.receive_ref(oid)
    assert await b.result(oid) == blob(tag)
    b.receive_ref(oid)  # b keeps its copy
    await announced(cluster, oid, [0, 1])
    c.node.exec.transfers.rng.shuffle = lambda holders: holders.sort(
        key=lambda node: node != a.node.node_id)
    return oid


async def test_a_holder_crashing_mid_transfer_hands_over_to_another(autojump_clock):
    async with trio.open_nursery() as nursery:
        net, cluster = await start(nursery)
        a, b, c = cluster.nodes[0], cluster.nodes[1], cluster.nodes[2]
        oid = await copies_on_a_and_b(cluster, 3)
        # a -> c is slow: one chunk per second
        net.set_link(a.address, c.address, LinkSpec(latency=0.001, bandwidth=CHUNK_SIZE))
        transfers = c.node.exec.transfers
        c.receive_ref(oid)
        while transfers.bytes_fetched < 2 * CHUNK_SIZE:
            await trio.sleep(0.05)
        cluster.crash(0)
        assert await c.result(oid) == blob(3)
        # resumed where a stopped, not restarted (a restart would fetch 2 chunks more)
        assert SIZE <= transfers.bytes_fetched < SIZE + CHUNK_SIZE
        assert b.node.exec.transfers.bytes_served > 0
        nursery.cancel_scope.cancel()


async def test_an_object_nobody_holds_fails_with_object_lost(autojump_clock):
    async with trio.open_nursery() as nursery:
        _, cluster = await start(nursery, n=3)
        missing = bytes(range(20))
        cluster.nodes[1].receive_ref(missing)
        try:
            await cluster.nodes[1].result(missing)
        except ObjectLostError as exc:
            assert "held by no node" in str(exc)
        else:
            raise AssertionError("a value appeared from nowhere")
        nursery.cancel_scope.cancel()


async def test_a_copy_that_fails_its_content_checksum_is_refused(autojump_clock):
    async with trio.open_nursery() as nursery:
        _, cluster = await start(nursery, n=3)
        a, b = cluster.nodes[0], cluster.nodes[1]
        oid = a.put(blob(9))
        await announced(cluster, oid, [0])
        a.node.exec.transfers._digests[oid] = bytes(CHECKSUM_SIZE)  # a holder that lies
        before = set(os.listdir(shm.segment_dir()))
        b.receive_ref(oid)
        try:
            await b.result(oid)
        except ObjectLostError as exc:
            assert "content checksum" in str(exc)
        else:
            raise AssertionError("a corrupt copy was accepted")
        assert b.node.exec.transfers.bytes_fetched >= SIZE  # it was fetched, then refused
        assert set(os.listdir(shm.segment_dir())) == before, "the bad copy is deleted"
        nursery.cancel_scope.cancel()


async def test_a_stalling_holder_costs_the_stall_timeout_then_another_serves(autojump_clock):
    async with trio.open_nursery() as nursery:
        net, cluster = await start(nursery)
        a, b, c = cluster.nodes[0], cluster.nodes[1], cluster.nodes[2]
        oid = await copies_on_a_and_b(cluster, 5)
        # a -> c carries 10 KiB/s: its first chunk would take 100 s
        net.set_link(a.address, c.address, LinkSpec(latency=0.001, bandwidth=10_000))
        transfers = c.node.exec.transfers
        started = trio.current_time()
        c.receive_ref(oid)
        assert await c.result(oid) == blob(5)
        waited = trio.current_time() - started
        assert transfers.stall_timeout <= waited < transfers.stall_timeout + 5
        assert b.node.exec.transfers.bytes_served >= SIZE
        nursery.cancel_scope.cancel()
