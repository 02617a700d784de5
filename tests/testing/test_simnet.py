"""SimNetwork's own promises: timing, loss, duplication, partitions, crashes, determinism.

Every async test runs on pytest-trio's `autojump_clock` (MockClock(autojump_threshold=0)),
so simulated time is exact and costs no real time.
"""

from __future__ import annotations

import contextlib
import math
import random

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pexec.errors import AuthenticationError, LocalProtocolError, LocalUsageError
from p2pexec.ids import NodeId
from p2pexec.net.transport import Address, Connection
from p2pexec.testing import LinkSpec, NodeCrashedError, NodeStats, SimNetwork, SimTransport


async def serve_into(nursery: trio.Nursery, transport: SimTransport,
                     ) -> trio.MemoryReceiveChannel[Connection]:
    """Serve `transport`; accepted connections come out of the returned channel. Serving
    ends quietly when the test crashes the node."""
    send, receive = trio.open_memory_channel[Connection](math.inf)

    async def handler(conn: Connection) -> None:
        await send.send(conn)

    async def run(task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        with contextlib.suppress(NodeCrashedError):
            await transport.serve(handler, task_status=task_status)

    await nursery.start(run)
    return receive


async def drain_datagrams(transport: SimTransport, into: list[tuple[float, Address, bytes]],
                          ) -> None:
    """Record (arrival time, source, payload) of every datagram until cancelled."""
    while True:
        src, payload = await transport.receive_datagram()
        into.append((trio.current_time(), src, payload))


def test_link_spec_rejects_nonsense() -> None:
    for bad in (dict(latency=-1.0), dict(jitter=-0.1), dict(loss=1.5), dict(duplicate=-0.1),
                dict(bandwidth=0.0)):
        with pytest.raises(LocalUsageError):
            LinkSpec(**bad)


def test_addresses_and_ids_are_deterministic_and_unique() -> None:
    net = SimNetwork(seed=1)
    nodes = [net.add_node() for _ in range(300)]
    assert [n.local.address for n in nodes[:2]] == [("10.0.0.1", 7946), ("10.0.0.2", 7946)]
    assert nodes[299].local.address == ("10.0.1.44", 7946)
    assert len({n.local.node_id for n in nodes}) == 300
    assert SimNetwork(seed=2).add_node().local == nodes[0].local  # ids do not need keys
    custom = net.add_node(NodeId(bytes(32)), ("sim-a", 1))
    assert custom.local.node_id == NodeId(bytes(32))
    with pytest.raises(LocalUsageError):
        net.add_node(address=("sim-a", 1))
    assert net.addresses[-1] == ("sim-a", 1)
    assert len(net.addresses) == 301


async def test_stream_latency_handshake_and_bandwidth(autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork(default_link=LinkSpec(latency=0.01, bandwidth=1_000_000))
    a, b = net.add_node(), net.add_node()
    async with trio.open_nursery() as nursery:
        accepted = await serve_into(nursery, b)
        t0 = trio.current_time()
        conn = await a.connect(b.local.address)
        assert trio.current_time() - t0 == pytest.approx(0.02)  # one round trip
        server = await accepted.receive()
        t1 = trio.current_time()
        await conn.send_many([b"x" * 100_000, b"y" * 100_000, b"z"])
        arrivals = []
        for _ in range(3):
            await server.receive()
            arrivals.append(trio.current_time() - t1)
        # transmissions queue behind each other on the link, each then pays the latency
        assert arrivals == pytest.approx([0.11, 0.21, 0.210001])
        nursery.cancel_scope.cancel()


async def test_datagram_delay_stays_within_latency_plus_jitter(
        autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork(seed=5, default_link=LinkSpec(latency=0.010, jitter=0.004))
    a, b = net.add_node(), net.add_node()
    got: list[tuple[float, Address, bytes]] = []
    sent_at: dict[bytes, float] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_datagrams, b, got)
        for i in range(500):
            payload = i.to_bytes(2, "big")
            sent_at[payload] = trio.current_time()
            await a.send_datagram(b.local.address, payload)
            await trio.sleep(0.001)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    delays = [at - sent_at[payload] for at, _src, payload in got]
    assert len(delays) == 500
    assert {src for _at, src, _p in got} == {a.local.address}
    assert min(delays) >= 0.010
    assert max(delays) <= 0.014 + 1e-9
    assert max(delays) - min(delays) > 0.0035  # the jitter is really drawn
    assert [p for _a, _s, p in got] != sorted(p for _a, _s, p in got)  # jitter reorders


async def _lossy_datagrams(seed: int, spec: LinkSpec, count: int) -> tuple[list[bytes],
                                                                         NodeStats, NodeStats]:
    """Send `count` numbered datagrams a -> b; what b got, and both nodes' stats."""
    net = SimNetwork(seed=seed, default_link=spec)
    a, b = net.add_node(), net.add_node()
    got: list[tuple[float, Address, bytes]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_datagrams, b, got)
        for i in range(count):
            await a.send_datagram(b.local.address, i.to_bytes(2, "big"))
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return [p for _at, _src, p in got], net.stats(a.local.address), net.stats(b.local.address)


async def test_datagram_loss_matches_rate_and_replays_with_the_seed(
        autojump_clock: trio.abc.Clock) -> None:
    spec = LinkSpec(latency=0.001, jitter=0.001, loss=0.3)
    got, sender, receiver = await _lossy_datagrams(11, spec, 2000)
    assert 1400 - 90 < len(got) < 1400 + 90  # 4 sigma of Binomial(2000, 0.7)
    assert len(set(got)) == len(got)
    assert sender == NodeStats(datagrams_sent=2000, datagrams_dropped=2000 - len(got),
                               bytes_sent=4000)
    assert receiver == NodeStats(datagrams_delivered=len(got), bytes_delivered=2 * len(got))
    assert (await _lossy_datagrams(11, spec, 2000))[0] == got
    assert sorted((await _lossy_datagrams(12, spec, 2000))[0]) != sorted(got)


async def test_datagram_duplication(autojump_clock: trio.abc.Clock) -> None:
    got, sender, _ = await _lossy_datagrams(3, LinkSpec(duplicate=0.25, jitter=0.002), 2000)
    counts = {p: got.count(p) for p in set(got)}
    assert set(counts) == {i.to_bytes(2, "big") for i in range(2000)}
    assert sum(c == 2 for c in counts.values()) == sender.datagrams_duplicated
    assert 500 - 80 < sender.datagrams_duplicated < 500 + 80
    assert len(got) == 2000 + sender.datagrams_duplicated


async def test_directional_link_settings(autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork(default_link=LinkSpec(latency=0.001))
    a, b = net.add_node(), net.add_node()
    net.set_link(a.local.address, b.local.address, LinkSpec(latency=0.001, loss=1.0),
                 both_ways=False)
    at_a: list[tuple[float, Address, bytes]] = []
    at_b: list[tuple[float, Address, bytes]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_datagrams, a, at_a)
        nursery.start_soon(drain_datagrams, b, at_b)
        await a.send_datagram(b.local.address, b"lost")
        await b.send_datagram(a.local.address, b"kept")
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert [(src, p) for _t, src, p in at_a] == [(b.local.address, b"kept")]
    assert at_b == []
    assert net.link(b.local.address, a.local.address) == LinkSpec(latency=0.001)


async def test_partition_blocks_both_directions_and_heal_restores(
        autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork(default_link=LinkSpec(latency=0.01), connect_timeout=2.0,
                     stream_break_after=30.0)
    a, b, c = net.add_node(), net.add_node(), net.add_node()
    log: list[tuple[float, Address, bytes]] = []
    async with trio.open_nursery() as nursery:
        accepted = await serve_into(nursery, b)
        conn = await a.connect(b.local.address)
        server = await accepted.receive()
        for node in (a, b, c):
            nursery.start_soon(drain_datagrams, node, log)
        t0 = trio.current_time()
        net.partition([a.local.address], [b.local.address])
        await a.send_datagram(b.local.address, b"a->b")
        await b.send_datagram(a.local.address, b"b->a")
        await c.send_datagram(b.local.address, b"c->b")
        for i in range(3):
            await conn.send(b"held %d" % i)
        await server.send(b"held back")
        with pytest.raises(TimeoutError):
            await a.connect(b.local.address)
        assert trio.current_time() - t0 == pytest.approx(2.0)
        await trio.sleep(3.0)
        healed_at = trio.current_time()
        net.heal()
        assert [p for _t, _s, p in log] == [b"c->b"]
        assert [await server.receive() for _ in range(3)] == [b"held 0", b"held 1", b"held 2"]
        assert trio.current_time() == pytest.approx(healed_at + 0.01)
        assert await conn.receive() == b"held back"
        await a.send_datagram(b.local.address, b"after heal")
        await trio.sleep(0.1)
        assert [p for _t, _s, p in log] == [b"c->b", b"after heal"]
        conn2 = await a.connect(b.local.address)
        await conn2.send(b"new")
        assert await (await accepted.receive()).receive() == b"new"
        nursery.cancel_scope.cancel()
    assert net.stats(a.local.address).datagrams_dropped == 1
    assert net.stats(b.local.address).datagrams_dropped == 1


async def test_datagram_in_flight_when_partition_starts_is_dropped(
        autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork(default_link=LinkSpec(latency=0.05))
    a, b = net.add_node(), net.add_node()
    log: list[tuple[float, Address, bytes]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_datagrams, b, log)
        await a.send_datagram(b.local.address, b"in flight")
        await trio.sleep(0.01)
        net.partition([a.local.address])
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert log == []
    assert net.stats(a.local.address).datagrams_dropped == 1


async def test_long_partition_breaks_connections_at_the_break_timer(
        autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork(stream_break_after=5.0)
    a, b = net.add_node(), net.add_node()
    async with trio.open_nursery() as nursery:
        accepted = await serve_into(nursery, b)
        conn = await a.connect(b.local.address)
        server = await accepted.receive()
        t0 = trio.current_time()
        net.partition([a.local.address])
        for end in (conn, server):
            with pytest.raises(trio.BrokenResourceError):
                await end.receive()
            assert trio.current_time() == pytest.approx(t0 + 5.0)
        with pytest.raises(trio.BrokenResourceError):
            await conn.send(b"too late")
        net.heal()
        with pytest.raises(trio.BrokenResourceError):
            await server.receive()
        conn2 = await a.connect(b.local.address)
        await conn2.send(b"fresh")
        assert await (await accepted.receive()).receive() == b"fresh"
        nursery.cancel_scope.cancel()


async def test_partition_from_everyone_else_includes_later_nodes(
        autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork()
    a, b = net.add_node(), net.add_node()
    net.partition([a.local.address])
    c = net.add_node()
    log: list[tuple[float, Address, bytes]] = []
    async with trio.open_nursery() as nursery:
        for node in (a, b, c):
            nursery.start_soon(drain_datagrams, node, log)
        for src, dst in [(a, b), (a, c), (c, a), (b, c), (c, b)]:
            await src.send_datagram(dst.local.address, b"%s" % src.local.address[0].encode())
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert sorted(p for _t, _s, p in log) == [b"10.0.0.2", b"10.0.0.3"]
    with pytest.raises(LocalUsageError):
        net.partition([a.local.address], [a.local.address, b.local.address])


async def test_crash_breaks_everything_and_restart_gives_a_fresh_node(
        autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork(default_link=LinkSpec(latency=0.01))
    a, b = net.add_node(), net.add_node()
    address = a.local.address
    serve_outcome: list[BaseException] = []

    async def serve_a() -> None:
        try:
            await a.serve(lambda conn: trio.sleep_forever())
        except NodeCrashedError as exc:
            serve_outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_a)
        await trio.sleep(0.001)
        conn = await b.connect(address)
        t0 = trio.current_time()
        net.crash(address)
        with pytest.raises(trio.BrokenResourceError) as broken:
            await conn.receive()
        assert not isinstance(broken.value, NodeCrashedError)
        assert trio.current_time() == pytest.approx(t0 + 0.01)  # the reset takes a latency
        await trio.sleep(0.1)
        assert len(serve_outcome) == 1
        for op in (a.receive_datagram(), a.send_datagram(b.local.address, b"x"),
                   a.connect(b.local.address)):
            with pytest.raises(NodeCrashedError):
                await op
        await b.send_datagram(address, b"into the void")
        with pytest.raises(ConnectionRefusedError):
            await b.connect(address)
        with pytest.raises(LocalUsageError):
            net.crash(address)
        with pytest.raises(LocalUsageError):
            net.restart(b.local.address)

        a2 = net.restart(address)
        assert a2.local == a.local
        accepted = await serve_into(nursery, a2)
        conn2 = await b.connect(address, expected=a.local.node_id)
        await conn2.send(b"hello again")
        assert await (await accepted.receive()).receive() == b"hello again"
        with pytest.raises(NodeCrashedError):
            await a.send_datagram(b.local.address, b"old incarnation")

        net.crash(address)
        a3 = net.restart(address, node_id=NodeId(bytes(32)))
        await serve_into(nursery, a3)
        with pytest.raises(AuthenticationError):
            await b.connect(address, expected=a.local.node_id)
        nursery.cancel_scope.cancel()
    assert net.stats(b.local.address).datagrams_dropped == 1


async def test_crash_hidden_by_partition_surfaces_on_heal(
        autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork(stream_break_after=None)
    a, b = net.add_node(), net.add_node()
    async with trio.open_nursery() as nursery:
        await serve_into(nursery, a)
        conn = await b.connect(a.local.address)
        net.partition([a.local.address])
        net.crash(a.local.address)
        with trio.move_on_after(60):
            await conn.receive()
            pytest.fail("the crash must not be visible across the partition")
        net.heal()
        with pytest.raises(trio.BrokenResourceError):
            await conn.receive()
        nursery.cancel_scope.cancel()


async def test_cancelled_connect_and_stopped_serve_leave_nothing_half_open(
        autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork(default_link=LinkSpec(latency=0.01))
    a, b = net.add_node(), net.add_node()
    async with trio.open_nursery() as nursery:
        accepted = await serve_into(nursery, b)
        with trio.move_on_after(0.015):  # after the server accepted, before the reply
            await a.connect(b.local.address)
            pytest.fail("connect takes a full round trip")
        server = await accepted.receive()
        with pytest.raises(trio.EndOfChannel):
            await server.receive()
        nursery.cancel_scope.cancel()
    with pytest.raises(ConnectionRefusedError):
        await a.connect(b.local.address)


async def test_stats_count_streams_and_datagrams(autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork()
    a, b = net.add_node(), net.add_node()
    async with trio.open_nursery() as nursery:
        accepted = await serve_into(nursery, b)
        conn = await a.connect(b.local.address)
        await conn.send_many([b"abc", b"de"])
        server = await accepted.receive()
        assert [await server.receive() for _ in range(2)] == [b"abc", b"de"]
        await a.send_datagram(b.local.address, b"12345")
        assert await b.receive_datagram() == (a.local.address, b"12345")
        await b.send_datagram(("10.9.9.9", 1), b"nobody")
        nursery.cancel_scope.cancel()
    assert net.stats(a.local.address) == NodeStats(
        datagrams_sent=1, stream_messages_sent=2, bytes_sent=10, connections_opened=1)
    assert net.stats(b.local.address) == NodeStats(
        datagrams_sent=1, datagrams_dropped=1, datagrams_delivered=1,
        stream_messages_delivered=2, bytes_sent=6, bytes_delivered=10)
    assert net.total_stats() == net.stats(a.local.address) + net.stats(b.local.address)


async def test_oversized_datagram_is_refused_locally(autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork(max_datagram_size=100)
    a, b = net.add_node(), net.add_node()
    with pytest.raises(LocalProtocolError):
        await a.send_datagram(b.local.address, bytes(101))
    assert net.stats(a.local.address) == NodeStats()


def _traffic_trace(seed: int) -> list[tuple[float, Address, Address, bytes]]:
    """Twenty nodes gossip datagrams over a lossy, jittery, duplicating network and each
    streams to a neighbour; returns every delivery (time, receiver, sender, payload)."""
    trace: list[tuple[float, Address, Address, bytes]] = []

    async def scenario() -> None:
        net = SimNetwork(seed=seed, default_link=LinkSpec(latency=0.002, jitter=0.003,
                                                          loss=0.1, duplicate=0.1))
        nodes = [net.add_node() for _ in range(20)]

        async def listen(node: SimTransport) -> None:
            while True:
                src, payload = await node.receive_datagram()
                trace.append((trio.current_time(), node.local.address, src, payload))

        async def handle(node: SimTransport, conn: Connection) -> None:
            while True:
                payload = await conn.receive()
                trace.append((trio.current_time(), node.local.address, conn.peer.address,
                              payload))

        async def talk(i: int, node: SimTransport) -> None:
            chooser = random.Random(i)
            conn = await node.connect(nodes[(i + 1) % 20].local.address)
            for k in range(50):
                peer = nodes[chooser.randrange(20)].local.address
                await node.send_datagram(peer, b"d%d.%d" % (i, k))
                await conn.send(b"s%d.%d" % (i, k))
                await trio.sleep(chooser.random() * 0.01)

        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(listen, node)
                await nursery.start(node.serve, lambda conn, node=node: handle(node, conn))
            async with trio.open_nursery() as talkers:
                for i, node in enumerate(nodes):
                    talkers.start_soon(talk, i, node)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    return sorted(trace)


def test_same_seed_gives_the_same_delivery_trace() -> None:
    first = _traffic_trace(seed=3)
    assert len([t for t in first if t[3].startswith(b"s")]) == 1000  # streams lose nothing
    assert 850 < len([t for t in first if t[3].startswith(b"d")]) < 1150
    assert _traffic_trace(seed=3) == first
    assert _traffic_trace(seed=4) != first


async def test_thousand_nodes_exchange_datagrams_and_streams(
        autojump_clock: trio.abc.Clock) -> None:
    n = 1000
    net = SimNetwork(seed=1, default_link=LinkSpec(latency=0.001, jitter=0.002))
    nodes = [net.add_node() for _ in range(n)]
    got: dict[Address, set[bytes]] = {node.local.address: set() for node in nodes}

    async def listen(node: SimTransport) -> None:
        while True:
            _src, payload = await node.receive_datagram()
            got[node.local.address].add(payload)

    async def echo(conn: Connection) -> None:
        await conn.send(await conn.receive())

    async def talk(i: int, node: SimTransport) -> None:
        for step in (1, 7, 31):
            await node.send_datagram(nodes[(i + step) % n].local.address, b"%d" % i)
        conn = await node.connect(nodes[(i + 1) % n].local.address)
        await conn.send(b"echo %d" % i)
        assert await conn.receive() == b"echo %d" % i

    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(listen, node)
            await nursery.start(node.serve, echo)
        async with trio.open_nursery() as talkers:
            for i, node in enumerate(nodes):
                talkers.start_soon(talk, i, node)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert got == {nodes[i].local.address: {b"%d" % ((i - s) % n) for s in (1, 7, 31)}
                   for i in range(n)}
    total = net.total_stats()
    assert (total.datagrams_delivered, total.stream_messages_delivered,
            total.connections_opened) == (3 * n, 2 * n, n)


async def test_overlapping_cuts_heal_one_at_a_time(autojump_clock: trio.abc.Clock) -> None:
    net = SimNetwork(stream_break_after=None)
    a, b, c = net.add_node(), net.add_node(), net.add_node()
    async with trio.open_nursery() as nursery:
        accepted = await serve_into(nursery, b)
        conn = await a.connect(b.local.address)
        server = await accepted.receive()
        isolate_a = net.partition([a.local.address])
        split = net.partition([a.local.address, c.local.address], [b.local.address])
        await conn.send(b"waits for both heals")
        net.heal(isolate_a)
        with trio.move_on_after(10):
            await server.receive()
            pytest.fail("still cut by the second partition")
        with pytest.raises(LocalUsageError):
            net.heal(isolate_a)
        net.heal(split)
        assert await server.receive() == b"waits for both heals"
        nursery.cancel_scope.cancel()


_OPS = st.lists(st.one_of(
    st.tuples(st.just("send"), st.sampled_from(["client", "server"]), st.integers(1, 5)),
    st.tuples(st.just("sleep"), st.floats(0, 0.05)),
    st.tuples(st.just("partition")),
    st.tuples(st.just("heal"))), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS, seed=st.integers(0, 2**32), jitter=st.floats(0, 0.02),
       bandwidth=st.sampled_from([math.inf, 50_000.0]))
def test_streams_never_lose_duplicate_or_reorder_across_partitions(
        ops: list[tuple[object, ...]], seed: int, jitter: float, bandwidth: float) -> None:
    sent: dict[str, list[bytes]] = {"client": [], "server": []}
    received: dict[str, list[bytes]] = {}

    async def scenario() -> None:
        net = SimNetwork(seed=seed, stream_break_after=None,
                         default_link=LinkSpec(latency=0.005, jitter=jitter,
                                               bandwidth=bandwidth))
        a, b = net.add_node(), net.add_node()
        async with trio.open_nursery() as nursery:
            accepted = await serve_into(nursery, b)
            ends = {"client": await a.connect(b.local.address)}
            ends["server"] = await accepted.receive()

            async def read(side: str, conn: Connection) -> None:
                got = received.setdefault(side, [])
                while True:
                    got.append(await conn.receive())

            async with trio.open_nursery() as readers:
                readers.start_soon(read, "client", ends["server"])
                readers.start_soon(read, "server", ends["client"])
                for op in ops:
                    if op[0] == "send":
                        side, count = str(op[1]), int(op[2])  # type: ignore[call-overload]
                        batch = [b"%s %d" % (side.encode(), len(sent[side]) + i)
                                 for i in range(count)]
                        sent[side] += batch
                        await ends[side].send_many(batch)
                    elif op[0] == "sleep":
                        await trio.sleep(float(op[1]))  # type: ignore[arg-type]
                    elif op[0] == "partition":
                        net.partition([a.local.address])
                    else:
                        net.heal()
                net.heal()
                await trio.sleep(10)  # far longer than any delay left in flight
                readers.cancel_scope.cancel()
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert received == sent
