"""The DHT inside whole nodes: gossip feeds it, RPC over SimNetwork carries it."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import pytest
import trio

from p2pexec.dht.messages import FindValue, Store
from p2pexec.errors import DhtLookupError
from p2pexec.testing.cluster import SimCluster
from p2pexec.testing.simnet import LinkSpec, SimNetwork


def key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


async def converged_cluster(nursery, n=12, seed=3):
    net = SimNetwork(seed=seed, default_link=LinkSpec(latency=0.001, jitter=0.0005))
    cluster = SimCluster(net, n, cpus=1, seed=seed)
    await cluster.start(nursery)
    assert await cluster.wait_converged(60)
    return net, cluster


async def test_a_record_published_on_one_node_is_found_from_every_other(autojump_clock):
    async with trio.open_nursery() as nursery:
        _, cluster = await converged_cluster(nursery)
        dhts = [sim.node.cluster.dht for sim in cluster.nodes]
        assert await dhts[0].publish(key("object 1"), b"node 0 holds it") == len(dhts)
        for dht in dhts[1:]:
            records = await dht.find_value(key("object 1"))
            assert [r.value for r in records] == [b"node 0 holds it"]
            assert records[0].publisher == cluster.nodes[0].node.node_id
        with pytest.raises(DhtLookupError, match="no record"):
            await dhts[5].find_value(key("never published"))
        await dhts[0].withdraw(key("object 1"))
        with pytest.raises(DhtLookupError):
            await dhts[7].find_value(key("object 1"))
        nursery.cancel_scope.cancel()


async def test_records_of_a_crashed_node_disappear_and_others_survive(autojump_clock):
    async with trio.open_nursery() as nursery:
        _, cluster = await converged_cluster(nursery)
        dhts = [sim.node.cluster.dht for sim in cluster.nodes]
        await dhts[1].publish(key("from 1"), b"1")
        await dhts[2].publish(key("from 2"), b"2")
        cluster.crash(1)
        await trio.sleep(30)  # gossip declares it dead
        with pytest.raises(DhtLookupError):
            await dhts[4].find_value(key("from 1"))
        assert [r.value for r in await dhts[4].find_value(key("from 2"))] == [b"2"]
        for sim in cluster.nodes[2:]:
            held = sim.node.cluster.dht.core.store
            assert held.get(key("from 1"), trio.current_time()) == []
        nursery.cancel_scope.cancel()


async def test_forged_records_and_bad_requests_cost_the_sender_only(autojump_clock, caplog):
    async with trio.open_nursery() as nursery:
        _, cluster = await converged_cluster(nursery, n=4)
        liar, victim = cluster.nodes[0].node.cluster, cluster.nodes[1].node.cluster
        honest = await liar.dht.publish(key("mine"), b"x")
        assert honest == 4
        genuine = liar.dht.core.published[key("mine")]
        forged = dataclasses.replace(genuine, publisher=cluster.nodes[2].node.node_id)
        tampered = dataclasses.replace(genuine, value=b"changed")
        answer = await liar.rpc.call(victim.address, Store([forged, tampered], 60.0),
                                     node=victim.node_id)
        assert answer.accepted == 0 and len(answer.refused) == 2
        assert "refused 2 records" in caplog.text
        stored = victim.dht.core.store.get(key("mine"), trio.current_time())
        assert [r.value for r in stored] == [b"x"]
        with caplog.at_level(logging.WARNING):
            with pytest.raises(trio.BrokenResourceError):
                await liar.rpc.call(victim.address, FindValue(b"too short"),
                                    node=victim.node_id)
        assert "a DHT key is 32 bytes" in caplog.text
        # the victim serves on, the others included
        records = await cluster.nodes[3].node.cluster.dht.find_value(key("mine"))
        assert [r.value for r in records] == [b"x"]
        nursery.cancel_scope.cancel()
