"""Discovery: the sans-IO rules without zeroconf, then real mDNS on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import threading

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import ServiceInfo, ServiceStateChange, Zeroconf

from p2pexec.errors import LocalUsageError, RemoteProtocolError
from p2pexec.ids import NodeId
from p2pexec.net import discovery
from p2pexec.net.discovery import (
    SERVICE_TYPE,
    Announcement,
    DiscoveredPeer,
    DiscoveryConfig,
    PeerTable,
    advertised_addresses,
    encode_txt,
    order_addresses,
    parse_announcement,
    parse_seed,
    run_discovery,
    seed_peer,
    service_info_for,
)

ID_A = NodeId(bytes(range(32)))
ID_B = NodeId(bytes(range(1, 33)))
ID_C = NodeId(bytes(range(2, 34)))


def _threads() -> set[threading.Thread]:
    """Live threads, less trio's worker-thread cache (its idle threads come and go on their
    own, whatever other tests in this process did)."""
    return {t for t in threading.enumerate() if not t.name.startswith("Trio thread")}


def announcement(node_id: NodeId = ID_A, port: int = 7000, cluster: str = "c0ffee",
                 name: str = "alpha", version: int = 1, host: str = "127.0.0.1") -> Announcement:
    return Announcement(address=(host, port), node_id=node_id, cluster_id=cluster, name=name,
                        protocol_version=version)


def as_properties(txt: dict[str, str]) -> dict[bytes, bytes | None]:
    """TXT properties as zeroconf hands them over: bytes keys and values."""
    return {k.encode(): v.encode() for k, v in txt.items()}


def as_peer(ann: Announcement) -> DiscoveredPeer:
    return DiscoveredPeer(address=ann.address, node_id=ann.node_id, cluster_id=ann.cluster_id,
                          name=ann.name, source="mdns", addresses=(ann.address,))


# ---------------------------------------------------------------------------------------
# TXT records


def test_txt_round_trip_gives_back_the_announcement():
    ann = announcement(name="gpu-box 3 ü")
    assert encode_txt(ann) == {"id": ID_A.hex, "c": "c0ffee", "n": "gpu-box 3 ü", "v": "1"}
    got = parse_announcement(as_properties(encode_txt(ann)), ["127.0.0.1"], 7000)
    assert got == dataclasses.replace(ann, addresses=(("127.0.0.1", 7000),))


def test_txt_never_carries_a_token_like_field():
    assert set(encode_txt(announcement())) == {"id", "c", "n", "v"}


def test_unknown_txt_keys_are_ignored():
    props = as_properties(encode_txt(announcement())) | {b"future": b"x", b"flag": None}
    assert parse_announcement(props, ["127.0.0.1"], 7000) == dataclasses.replace(
        announcement(), addresses=(("127.0.0.1", 7000),))


def test_every_usable_address_is_kept_best_first():
    props = as_properties(encode_txt(announcement()))
    got = parse_announcement(props, ["fe80::1%2", "169.254.0.7", "0.0.0.0", "10.0.0.5",
                                     "224.0.0.251", "10.0.0.5", "2001:db8::1"], 7000)
    assert (got.address, got.addresses) == (("10.0.0.5", 7000), (
        ("10.0.0.5", 7000), ("169.254.0.7", 7000), ("2001:db8::1", 7000),
        ("fe80::1%2", 7000)))


GOOD = as_properties(encode_txt(announcement()))


@pytest.mark.parametrize(("props", "addresses", "port", "message"), [
    ({k: v for k, v in GOOD.items() if k != b"id"}, ["127.0.0.1"], 7000, "lacks 'id'"),
    (GOOD | {b"id": None}, ["127.0.0.1"], 7000, "lacks 'id'"),
    (GOOD | {b"id": ID_A.hex.upper().encode()}, ["127.0.0.1"], 7000, "64 lowercase hex"),
    (GOOD | {b"id": b"ab" * 31}, ["127.0.0.1"], 7000, "64 lowercase hex"),
    (GOOD | {b"id": b"zz" * 32}, ["127.0.0.1"], 7000, "64 lowercase hex"),
    (GOOD | {b"c": b""}, ["127.0.0.1"], 7000, "malformed cluster id"),
    (GOOD | {b"c": b"a" * 65}, ["127.0.0.1"], 7000, "malformed cluster id"),
    (GOOD | {b"c": b"evil cluster"}, ["127.0.0.1"], 7000, "malformed cluster id"),
    (GOOD | {b"n": b""}, ["127.0.0.1"], 7000, "malformed node name"),
    (GOOD | {b"n": b"x" * 64}, ["127.0.0.1"], 7000, "malformed node name"),
    (GOOD | {b"n": b"line\nbreak"}, ["127.0.0.1"], 7000, "malformed node name"),
    (GOOD | {b"n": b"\xff\xfe"}, ["127.0.0.1"], 7000, "not UTF-8"),
    (GOOD | {b"v": b"one"}, ["127.0.0.1"], 7000, "malformed protocol version"),
    (GOOD | {b"v": b"12345"}, ["127.0.0.1"], 7000, "malformed protocol version"),
    (GOOD, ["127.0.0.1"], None, "bad port"),
    (GOOD, ["127.0.0.1"], 0, "bad port"),
    (GOOD, ["127.0.0.1"], 65536, "bad port"),
    (GOOD, [], 7000, "no usable address"),
    (GOOD, ["0.0.0.0", "224.0.0.251"], 7000, "no usable address"),
    (GOOD, ["not-an-ip"], 7000, "bad address"),
])
def test_malformed_announcements_are_refused(props, addresses, port, message):
    with pytest.raises(RemoteProtocolError, match=message):
        parse_announcement(props, addresses, port)


@given(st.dictionaries(st.sampled_from([b"id", b"c", b"n", b"v", b"x"]),
                       st.one_of(st.none(), st.binary(max_size=80))),
       st.lists(st.text(max_size=20), max_size=3),
       st.one_of(st.none(), st.integers(-5, 70000)))
def test_any_network_input_parses_or_raises_a_protocol_error(props, addresses, port):
    try:
        ann = parse_announcement(props, addresses, port)
    except RemoteProtocolError:
        return
    assert encode_txt(ann) == {k.decode(): v.decode() for k, v in props.items()
                               if k != b"x" and v is not None}


def test_order_addresses_prefers_ipv4_and_caps_the_count():
    assert order_addresses(["fe80::1%2", "10.0.0.6", "10.0.0.5"]) == [
        "10.0.0.6", "10.0.0.5", "fe80::1%2"]
    assert order_addresses([f"10.0.0.{i}" for i in range(1, 20)]) == [
        f"10.0.0.{i}" for i in range(1, 9)]


# ---------------------------------------------------------------------------------------
# Seeds


@pytest.mark.parametrize(("text", "address"), [
    ("10.0.0.7:7946", ("10.0.0.7", 7946)),
    ("node-3.lan:1", ("node-3.lan", 1)),
    ("[fe80::1]:65535", ("fe80::1", 65535)),
])
def test_parse_seed(text, address):
    assert parse_seed(text) == address


@pytest.mark.parametrize("text", ["", "host", "host:", ":7946", "host:0", "host:65536",
                                  "host:port", "fe80::1:7946", "host:-1"])
def test_parse_seed_refuses_bad_input(text):
    with pytest.raises(LocalUsageError, match="--peer expects host:port"):
        parse_seed(text)


def test_seed_peer_has_no_node_id_until_connected():
    assert seed_peer(("fe80::1", 9), "c0ffee") == DiscoveredPeer(
        address=("fe80::1", 9), node_id=None, cluster_id="c0ffee", name="[fe80::1]:9",
        source="seed", addresses=(("fe80::1", 9),))


# ---------------------------------------------------------------------------------------
# PeerTable


def test_peer_table_reports_new_and_changed_peers_once():
    table = PeerTable(announcement(ID_A))
    b = announcement(ID_B, port=7001, name="beta")
    assert table.observe("b", b) == as_peer(b)
    assert table.observe("b", b) is None
    moved = announcement(ID_B, port=7009, name="beta")
    assert table.observe("b", moved) == as_peer(moved)
    assert table.known() == [as_peer(moved)]
    table.forget("b")
    assert table.known() == []
    assert table.observe("b", moved) == as_peer(moved)


def test_peer_table_ignores_itself_other_clusters_and_other_versions(caplog):
    caplog.set_level(logging.INFO, logger="p2pexec.discovery")
    table = PeerTable(announcement(ID_A))
    assert table.observe("a", announcement(ID_A, port=7050)) is None
    assert table.observe("x", announcement(ID_B, cluster="other")) is None
    assert table.observe("x", announcement(ID_B, cluster="other")) is None
    assert table.observe("v", announcement(ID_C, version=2)) is None
    assert table.known() == []
    assert [r.getMessage() for r in caplog.records] == [
        "alpha: ignoring mDNS service 'x': it belongs to cluster 'other'",
        "alpha: ignoring mDNS service 'v': it speaks protocol version 2, we speak 1",
    ]


def test_peer_table_forgets_a_peer_that_moves_to_another_cluster():
    table = PeerTable(announcement(ID_A))
    b = announcement(ID_B, port=7001)
    assert table.observe("b", b) == as_peer(b)
    assert table.observe("b", announcement(ID_B, port=7001, cluster="other")) is None
    assert table.known() == []


def test_peer_table_caps_the_number_of_peers():
    table = PeerTable(announcement(ID_A), max_peers=1)
    b = announcement(ID_B, port=7001)
    assert table.observe("b", b) == as_peer(b)
    assert table.observe("c", announcement(ID_C, port=7002)) is None
    moved = announcement(ID_B, port=7003)
    assert table.observe("b", moved) == as_peer(moved)
    assert table.known() == [as_peer(moved)]


def test_peer_table_logs_a_malformed_name_once(caplog):
    caplog.set_level(logging.INFO, logger="p2pexec.discovery")
    table = PeerTable(announcement(ID_A))
    table.reject("bad", "malformed announcement: TXT record lacks 'id'")
    table.reject("bad", "malformed announcement: TXT record lacks 'id'")
    assert [r.getMessage() for r in caplog.records] == [
        "alpha: ignoring mDNS service 'bad': malformed announcement: TXT record lacks 'id'"]


# ---------------------------------------------------------------------------------------
# Our own record and config


def test_service_info_advertises_address_and_txt():
    info = service_info_for(announcement(host="10.77.0.2"), DiscoveryConfig())
    assert (info.type, info.name, info.server, info.port, info.parsed_addresses()) == (
        SERVICE_TYPE, f"{ID_A.hex[:32]}.{SERVICE_TYPE}", f"px-{ID_A.hex[:32]}.local.", 7000,
        ["10.77.0.2"])
    assert info.properties == as_properties(encode_txt(announcement()))


def test_wildcard_listen_address_advertises_the_mdns_interfaces():
    assert advertised_addresses("0.0.0.0", ("10.77.0.1", "10.78.0.1")) == [
        "10.77.0.1", "10.78.0.1"]
    assert advertised_addresses("10.77.0.3", ("10.77.0.1",)) == ["10.77.0.3"]


@pytest.mark.parametrize("kwargs", [
    {"service_type": "_p2pexec._udp.local."}, {"resolve_timeout": 0}, {"max_peers": 0},
    {"refresh_interval": 0.0}, {"goodbye_timeout": -1.0}])
def test_config_refuses_nonsense(kwargs):
    with pytest.raises(LocalUsageError):
        DiscoveryConfig(**kwargs)


async def test_bad_local_identity_is_a_usage_error():
    send, _recv = trio.open_memory_channel[DiscoveredPeer](10)
    with pytest.raises(LocalUsageError, match="cluster id"):
        await run_discovery(DiscoveryConfig(mdns=False), announcement(cluster="a b"), send)
    with pytest.raises(LocalUsageError, match="node name"):
        await run_discovery(DiscoveryConfig(mdns=False), announcement(name=""), send)
    with pytest.raises(LocalUsageError, match="'localhost' is not one"):
        await run_discovery(DiscoveryConfig.local(), announcement(host="localhost"), send)


# ---------------------------------------------------------------------------------------
# Seeds only (no mDNS): deterministic on a mock clock


async def test_no_mdns_reports_seeds_and_repeats_them_each_refresh(autojump_clock):
    me = announcement()
    seeds = (("10.0.0.9", 7000), ("127.0.0.1", 7000), ("10.0.0.9", 7000), ("h2", 7001))
    config = DiscoveryConfig(mdns=False, seeds=seeds, refresh_interval=30.0)
    send, recv = trio.open_memory_channel[DiscoveredPeer](100)
    threads_before = _threads()
    got: list[tuple[float, DiscoveredPeer]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(run_discovery, config, me, send)
        assert _threads() == threads_before  # no zeroconf started
        async for peer in recv:
            got.append((trio.current_time(), peer))
            if len(got) == 6:
                nursery.cancel_scope.cancel()
                break
    s1, s2 = seed_peer(("10.0.0.9", 7000), "c0ffee"), seed_peer(("h2", 7001), "c0ffee")
    assert got == [(0.0, s1), (0.0, s2), (30.0, s1), (30.0, s2), (60.0, s1), (60.0, s2)]


async def test_discovery_ends_when_nobody_listens():
    send, recv = trio.open_memory_channel[DiscoveredPeer](0)
    await recv.aclose()
    config = DiscoveryConfig(mdns=False, seeds=(("10.0.0.9", 7000),))
    with trio.fail_after(5):
        await run_discovery(config, announcement(), send)


@pytest.mark.parametrize(("error", "shown"), [
    (OSError(19, "No such device"), "[Errno 19] No such device"),
    (RuntimeError("No interfaces to listen on"), "No interfaces to listen on"),
])
async def test_mdns_that_cannot_open_falls_back_to_seeds(monkeypatch, caplog, error, shown):
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(discovery, "Zeroconf", refuse)
    config = DiscoveryConfig(seeds=(("10.0.0.9", 7000),))
    send, recv = trio.open_memory_channel[DiscoveredPeer](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_discovery, config, announcement(), send)
        assert await recv.receive() == seed_peer(("10.0.0.9", 7000), "c0ffee")
        nursery.cancel_scope.cancel()
    assert f"mDNS unavailable ({shown}); discovering peers through --peer seeds only" in (
        caplog.text)


# ---------------------------------------------------------------------------------------
# Real mDNS on 127.0.0.1


@pytest.fixture
def loopback_mdns() -> DiscoveryConfig:
    """Loopback config, or a skip when this machine cannot do multicast on 127.0.0.1."""
    try:
        Zeroconf(interfaces=["127.0.0.1"]).close()
    except OSError as exc:
        pytest.skip(f"zeroconf cannot open multicast sockets on 127.0.0.1: {exc}")
    return dataclasses.replace(DiscoveryConfig.local(), refresh_interval=None)  # exact lists


class Node:
    """One discovery service in this test process and the peers it reported."""

    def __init__(self, index: int, cluster: str) -> None:
        self.me = announcement(NodeId(secrets.token_bytes(32)), port=20000 + index,
                               cluster=cluster, name=f"node{index}")
        self.peer = as_peer(self.me)
        self.send, self.recv = trio.open_memory_channel[DiscoveredPeer](100)
        self.found: list[DiscoveredPeer] = []

    async def collect(self) -> None:
        async for peer in self.recv:
            self.found.append(peer)


async def wait_until(condition, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.05)


def found_all(nodes: list[Node], expected: dict[int, list[Node]]):
    return lambda: all(len(nodes[i].found) >= len(others) for i, others in expected.items())


async def start_nodes(nursery: trio.Nursery, config: DiscoveryConfig, nodes: list[Node]) -> None:
    for node in nodes:
        nursery.start_soon(node.collect)
        await nursery.start(run_discovery, config, node.me, node.send)


def key(peer: DiscoveredPeer) -> bytes:
    assert peer.node_id is not None
    return peer.node_id.raw


@pytest.mark.parametrize("count", [2, 3])
async def test_nodes_on_loopback_find_each_other(loopback_mdns, count):
    cluster = secrets.token_hex(8)
    nodes = [Node(i, cluster) for i in range(count)]
    threads_before = _threads()
    expected = {i: [o for o in nodes if o is not n] for i, n in enumerate(nodes)}
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, loopback_mdns, nodes)
        await wait_until(found_all(nodes, expected))
        nursery.cancel_scope.cancel()
    for i, node in enumerate(nodes):
        assert sorted(node.found, key=key) == sorted([o.peer for o in expected[i]], key=key)
    assert _threads() == threads_before  # zeroconf closed, threads joined


async def test_other_clusters_are_ignored(loopback_mdns, caplog):
    caplog.set_level(logging.INFO, logger="p2pexec.discovery")
    x, y = secrets.token_hex(8), secrets.token_hex(8)
    nodes = [Node(0, x), Node(1, x), Node(2, y), Node(3, y)]
    expected = {0: [nodes[1]], 1: [nodes[0]], 2: [nodes[3]], 3: [nodes[2]]}

    def ignored(watcher: int, other: int) -> str:
        return (f"node{watcher}: ignoring mDNS service '{nodes[other].me.node_id.hex[:32]}"
                f".{SERVICE_TYPE}': it belongs to cluster")

    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, loopback_mdns, nodes)
        await wait_until(lambda: found_all(nodes, expected)() and all(
            ignored(w, o) in caplog.text for w, o in [(0, 2), (0, 3), (2, 0), (2, 1)]))
        nursery.cancel_scope.cancel()
    assert [n.found for n in nodes] == [[o.peer for o in expected[i]] for i in range(4)]


async def test_no_mdns_node_reports_only_its_seeds(loopback_mdns):
    cluster = secrets.token_hex(8)
    nodes = [Node(i, cluster) for i in range(3)]
    quiet = nodes[0]
    seed = ("127.0.0.1", 20001)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(quiet.collect)
        await nursery.start(run_discovery, DiscoveryConfig(mdns=False, seeds=(seed,)),
                            quiet.me, quiet.send)
        await start_nodes(nursery, loopback_mdns, nodes[1:])
        await wait_until(found_all(nodes, {1: [nodes[2]], 2: [nodes[1]]}))
        nursery.cancel_scope.cancel()
    assert quiet.found == [seed_peer(seed, cluster)]
    assert (nodes[1].found, nodes[2].found) == ([nodes[2].peer], [nodes[1].peer])


async def test_a_node_that_leaves_and_returns_is_reported_again(loopback_mdns):
    cluster = secrets.token_hex(8)
    a, b = Node(0, cluster), Node(1, cluster)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.collect)
        await nursery.start(run_discovery, loopback_mdns, a.me, a.send)
        async with trio.open_nursery() as b_nursery:
            await start_nodes(b_nursery, loopback_mdns, [b])
            await wait_until(lambda: a.found == [b.peer])
            b_nursery.cancel_scope.cancel()  # b says goodbye; a forgets it
        b.found.clear()
        async with trio.open_nursery() as b_nursery:
            await start_nodes(b_nursery, loopback_mdns, [b])
            await wait_until(lambda: len(a.found) == 2 and b.found == [a.peer])
            b_nursery.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    assert a.found == [b.peer, b.peer]


async def test_malformed_announcement_from_the_network_is_logged_and_ignored(
        loopback_mdns, caplog):
    caplog.set_level(logging.INFO, logger="p2pexec.discovery")
    cluster = secrets.token_hex(8)
    a, b = Node(0, cluster), Node(1, cluster)
    bad_name = f"bad{secrets.token_hex(4)}.{SERVICE_TYPE}"
    bad = ServiceInfo(SERVICE_TYPE, bad_name, port=20099, server="bad-host.local.",
                      properties={"id": "zz", "c": cluster, "n": "liar", "v": "1"},
                      parsed_addresses=["127.0.0.1"])
    zc = Zeroconf(interfaces=["127.0.0.1"])
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, zc.register_service, bad)
            await start_nodes(nursery, loopback_mdns, [a, b])
            line = (f"node0: ignoring mDNS service {bad_name!r}: malformed announcement: "
                    "node id is not 64 lowercase hex digits: 'zz'")
            await wait_until(lambda: line in caplog.text and a.found == [b.peer]
                             and b.found == [a.peer])
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(zc.close)
    assert caplog.text.count(line) == 1
    assert (a.found, b.found) == ([b.peer], [a.peer])


async def test_a_peer_that_never_announced_is_found_by_the_next_fresh_query(loopback_mdns):
    """zeroconf alone asks at ~0, 1, 5 and 14 s, then hardly ever: a peer that came up
    (or was cut off) during its announcements would stay unknown for an hour."""
    cluster = secrets.token_hex(8)
    a = Node(0, cluster)
    quiet = Node(1, cluster)
    config = dataclasses.replace(loopback_mdns, requery_interval=0.5)
    zc = Zeroconf(interfaces=["127.0.0.1"])
    try:
        async with trio.open_nursery() as nursery:
            await start_nodes(nursery, config, [a])
            await trio.sleep(2.0)  # past zeroconf's second startup query, before its third
            assert zc.loop is not None
            # answer queries for `quiet` without ever announcing it
            zc.loop.call_soon_threadsafe(zc.registry.async_add,
                                         service_info_for(quiet.me, loopback_mdns))
            await wait_until(lambda: a.found == [quiet.peer], timeout=2.5)
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(zc.close)


async def test_browser_events_beyond_the_buffer_are_dropped_with_one_log_line(caplog):
    send, recv = trio.open_memory_channel[tuple[ServiceStateChange, str]](1)
    handler = discovery._browser_handler(trio.lowlevel.current_trio_token(), send)

    def fire_from_zeroconfs_thread() -> None:
        for name in ("a", "b", "c"):
            handler(zeroconf=None, service_type=SERVICE_TYPE, name=name,
                    state_change=ServiceStateChange.Added)

    await trio.to_thread.run_sync(fire_from_zeroconfs_thread)
    await trio.testing.wait_all_tasks_blocked()
    assert recv.receive_nowait() == (ServiceStateChange.Added, "a")
    with pytest.raises(trio.WouldBlock):
        recv.receive_nowait()
    assert [r.getMessage() for r in caplog.records if r.name == "p2pexec.discovery"] == [
        "mDNS events arrive faster than they are handled; dropped 'b'"]
    await recv.aclose()
    await trio.to_thread.run_sync(fire_from_zeroconfs_thread)  # a closed channel: no error
    await trio.testing.wait_all_tasks_blocked()


# ---------------------------------------------------------------------------------------
# Hostile names and floods (review findings)


class _StubMdns:
    """Stands in for zeroconf: resolving takes a while or raises, as a hostile LAN makes it."""

    def __init__(self, error: Exception | None = None) -> None:
        self.config = DiscoveryConfig.local()
        self.error = error
        self.resolving = 0
        self.most_at_once = 0

    async def resolve(self, name):
        if self.error is not None:
            raise self.error
        self.resolving += 1
        self.most_at_once = max(self.most_at_once, self.resolving)
        await trio.sleep(1)
        self.resolving -= 1
        return None


async def test_unresolvable_service_name_is_rejected_not_raised(caplog):
    from zeroconf import BadTypeInNameException

    caplog.set_level(logging.INFO, logger="p2pexec.discovery")
    table = PeerTable(announcement(ID_A))
    mdns = _StubMdns(BadTypeInNameException("evil._http._tcp.local."))
    assert await discovery._judge(mdns, table, "evil._http._tcp.local.") is None
    assert any("unresolvable service name" in r.getMessage() for r in caplog.records)


async def test_announcement_flood_waits_in_the_bounded_buffer_not_in_tasks(autojump_clock):
    mdns = _StubMdns()
    table = PeerTable(announcement(ID_A))
    send, receive = trio.open_memory_channel(math.inf)
    for i in range(200):
        send.send_nowait((ServiceStateChange.Added, f"flood-{i}._p2pexec._tcp.local."))
    send.close()

    async def emit(peer):
        raise AssertionError("nothing resolves in this test")

    limit = discovery._RESOLVE_CONCURRENCY
    async with trio.open_nursery() as nursery:
        nursery.start_soon(discovery._handle_events, mdns, table, receive, emit)
        await trio.sleep(0.5)
        # `limit` resolutions run; one more event is taken and waits for a slot; the rest
        # stay in the channel (which a real browser bounds and drops from), not in tasks
        assert mdns.most_at_once == limit
        assert receive.statistics().current_buffer_used == 200 - limit - 1
    assert mdns.most_at_once == limit
