"""Gossip input a buggy or hostile token holder could send: each is refused at decode or
absorbed by the core, never a crash of the driver (code review findings)."""

from __future__ import annotations

import dataclasses
import logging
import random

import msgpack
import pytest
import trio

from p2pexec.errors import LocalUsageError, RemoteProtocolError
from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.core import Membership
from p2pexec.gossip.driver import GossipDriver
from p2pexec.gossip.messages import (
    MAX_COUNTER,
    MAX_LIFE,
    MAX_RESOURCE_NAME_BYTES,
    Ack,
    Alive,
    LoadUpdate,
    Ping,
    State,
    Suspect,
)
from p2pexec.gossip.wire import (
    PACKET_OVERHEAD,
    decode_packet,
    decode_stream,
    encode_packet,
    encoded_size,
)
from p2pexec.ids import NodeId
from p2pexec.net.config import NetConfig
from p2pexec.net.security import ClusterKeys, DatagramSealer, NodeIdentity
from p2pexec.net.tcp import TcpTransport
from p2pexec.net.tls import Credentials
from p2pexec.testing.simnet import LinkSpec, SimNetwork

A, B = NodeId(b"\x01" * 32), NodeId(b"\x02" * 32)
ADDR = {A: ("10.0.0.1", 7946), B: ("10.0.0.2", 7946)}
CFG = GossipConfig.local()
HUGE = 2**64 - 1


def make() -> Membership:
    """Core of A that knows B (outbox and events drained)."""
    core = Membership(A, ADDR[A], CFG, random.Random(7), name="a", resources={"CPU": 4.0})
    core.tick(0.0)
    core.receive(ADDR[B], Alive(B, 0, "b", ADDR[B], {"CPU": 1.0}), 0.0)
    core.outbox()
    core.events()
    return core


@pytest.mark.parametrize("raw", [
    [32, HUGE, A.raw, B.raw],                                   # Ping seq
    [33, -1, A.raw, ["10.0.0.1", 1], B.raw, True],              # IndirectPing seq
    [34, MAX_COUNTER, A.raw],                                   # Ack seq
    [36, A.raw, HUGE, "a", ["10.0.0.1", 1], {}],                # Alive incarnation
    [37, A.raw, HUGE, B.raw],                                   # Suspect incarnation
    [38, A.raw, MAX_COUNTER, B.raw],                            # Dead incarnation
    [39, A.raw, -1],                                            # Left incarnation
    [40, A.raw, HUGE, 0, 0],                                    # LoadUpdate version
    [40, A.raw, 1, -5, 0],                                      # negative queue length
    [40, A.raw, 1, 0, HUGE],                                    # running tasks
])
def test_counters_outside_the_bound_are_refused_at_decode(raw):
    with pytest.raises(RemoteProtocolError, match="outside 0"):
        decode_packet(msgpack.packb([43, [raw]]))


def test_the_largest_counters_about_us_never_break_our_own_packets():
    """Suspect(me, max) used to make our incarnation 2**64, LoadUpdate(me, max) our load
    version 2**64: the next encode raised OverflowError and killed the driver."""
    core = make()
    core.receive(ADDR[B], Suspect(A, MAX_COUNTER - 1, B), 1.0)
    core.receive(ADDR[B], LoadUpdate(A, MAX_COUNTER - 1, 0, 0), 1.0)
    core.set_local_load(3, 1, 2.0)
    core.set_local_resources({"CPU": 2.0}, 2.0)
    core.tick(5.0)
    sent = [decode_packet(encode_packet(s.msgs)) for s in core.outbox() if not s.stream]
    assert sent != []
    assert core.incarnation == MAX_COUNTER - 1
    assert core.rows()[A].load.version == MAX_COUNTER - 1


async def test_a_message_the_core_chokes_on_is_logged_and_dropped(caplog):
    net = SimNetwork(seed=1, default_link=LinkSpec(latency=0.001))
    transport = net.add_node()
    core = Membership(transport.local.node_id, transport.local.address, CFG, random.Random(1))
    driver = GossipDriver(core, transport)
    seen = []

    def choke(src, msg, now):
        seen.append(msg)
        raise OverflowError("int too big to convert")

    core.receive = choke
    caplog.set_level(logging.WARNING)
    driver.handle_datagram(("10.9.9.9", 7946), encode_packet([Ack(1, B), Ack(2, B)]))
    assert seen == [Ack(1, B), Ack(2, B)]
    assert [r.getMessage() for r in caplog.records] == [
        "dropped peer 10.9.9.9:7946: gossip Ack broke the membership core: "
        "OverflowError: int too big to convert"] * 2


async def test_a_push_pull_reply_the_core_chokes_on_does_not_stop_gossip(autojump_clock,
                                                                         caplog):
    net = SimNetwork(seed=2, default_link=LinkSpec(latency=0.001))
    ta, tb = net.add_node(), net.add_node()
    cores = [Membership(t.local.node_id, t.local.address, CFG, random.Random(i))
             for i, t in enumerate((ta, tb))]
    drivers = [GossipDriver(c, t) for c, t in zip(cores, (ta, tb), strict=True)]
    real_receive = cores[1].receive
    choked = []

    def choke_once(src, msg, now):
        if not choked:
            choked.append(msg)
            raise OverflowError("int too big to convert")
        real_receive(src, msg, now)

    cores[1].receive = choke_once
    caplog.set_level(logging.WARNING)
    async with trio.open_nursery() as nursery:
        for t, d in zip((ta, tb), drivers, strict=True):
            nursery.start_soon(t.serve, d.handle_stream)
            await nursery.start(d.run)
        drivers[1].join([ta.local.address])       # its reply chokes the core of b
        await trio.sleep(1.0)
        drivers[1].join([ta.local.address])       # b's driver is still there to retry
        await trio.sleep(1.0)
        assert sorted(drivers[1].view()) == sorted([ta.local.node_id, tb.local.node_id])
        nursery.cancel_scope.cancel()
    assert [type(m).__name__ for m in choked] == ["PushPull"]
    assert any("gossip PushPull broke the membership core" in r.getMessage()
               for r in caplog.records)


BAD_ADDRESSES = [["10.0.0.1", 0], ["10.0.0.1", 65536], ["10.0.0.1", -1],
                 ["10.0.0.1", 2**64 - 1], ["", 7946], ["10.0.\x000.1", 7946],
                 ["h\nx", 7946], ["x" * 256, 7946]]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_addresses_a_socket_cannot_take_are_refused_at_decode(address):
    for raw in ([33, 1, A.raw, address, B.raw, True],
                [36, A.raw, 0, "a", address, {}]):
        with pytest.raises(RemoteProtocolError, match="address"):
            decode_packet(msgpack.packb([43, [raw]]))
    record = [A.raw, "a", address, 0, 0, {}, 0, 0, 0]
    with pytest.raises(RemoteProtocolError, match="address"):
        decode_stream(msgpack.packb([42, B.raw, False, [record]]))


def test_the_widest_valid_addresses_still_decode():
    for address in (("h" * 255, 1), ("::1", 65535), ("sim0", 7946)):
        alive = Alive(A, 0, "a", address, {})
        assert decode_packet(encode_packet([alive])) == [alive]


def tcp_transport() -> TcpTransport:
    creds = Credentials.create(NodeIdentity.generate(), ClusterKeys("hostile-test-token-1234"))
    return TcpTransport(creds, NetConfig.local())


async def test_a_datagram_to_an_unusable_address_is_logged_not_raised(caplog):
    transport = tcp_transport()
    caplog.set_level(logging.WARNING)
    for address in (("127.0.0.1", 70000), ("127.0.0.\x001", 7946), ("x" * 64, 1)):
        await transport.send_datagram(address, b"payload")
    await transport.aclose()
    assert [r.getMessage().split(" not sent: ")[0] for r in caplog.records] == [
        "datagram to 127.0.0.1:70000", "datagram to 127.0.0.\x001:7946",
        f"datagram to {'x' * 64}:1"]


async def test_a_push_pull_to_an_unusable_address_does_not_stop_gossip():
    transport = tcp_transport()
    core = Membership(transport.local.node_id, ("127.0.0.1", 1), CFG, random.Random(3))
    driver = GossipDriver(core, transport)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve, driver.handle_stream)
        await nursery.start(driver.run)
        driver.join([("127.0.0.1", 2**70), ("127.0.0.\x001", 7946)])
        await trio.sleep(0.2)
        driver.set_local_load(2, 1)            # the driver still runs and ticks the core
        with trio.fail_after(5):
            while core.rows()[core.me].load.queue_length != 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    await transport.aclose()


def test_a_bad_local_address_life_or_resources_is_our_callers_bug():
    for kwargs in ({"address": ("127.0.0.1", 0)}, {"life": -1}, {"life": MAX_LIFE + 1},
                   {"resources": {"CPU": -1.0}}):
        args = {"address": ADDR[A], **kwargs}
        with pytest.raises(LocalUsageError, match="cannot start membership"):
            Membership(A, args.pop("address"), CFG, random.Random(1), **args)


SMALL = dataclasses.replace(CFG, max_packet_size=512)
MANY = {f"resource-{i:02}": 1.0 for i in range(40)}  # an Alive of about 900 bytes


def test_an_update_too_big_for_any_packet_is_dropped_not_queued_forever(caplog):
    core = Membership(A, ADDR[A], SMALL, random.Random(7), name="a")
    core.tick(0.0)
    caplog.set_level(logging.WARNING, "p2pexec.gossip")
    big = Alive(B, 0, "b", ADDR[B], MANY)
    core.receive(ADDR[B], big, 0.0)
    assert encoded_size(big) > SMALL.max_packet_size
    assert [m for m in core.pending_broadcasts() if m.node == B] == []
    now = 0.0
    for _ in range(50):               # our own Alive drains; then nothing is pending
        now = core.next_deadline()
        core.tick(now)
        core.outbox()
    assert core.pending_broadcasts() == []
    assert [r.getMessage() for r in caplog.records] == [
        f"gossip update Alive about node {B.short} is {encoded_size(big)} bytes, over the "
        f"{SMALL.max_packet_size - PACKET_OVERHEAD}-byte room of a packet "
        f"(max_packet_size): not piggybacked, push-pull still carries it"]
    assert core.member(B).resources == MANY  # the member is still known


def test_our_own_alive_must_fit_in_a_packet():
    with pytest.raises(LocalUsageError, match="does not fit in a gossip packet"):
        Membership(A, ADDR[A], SMALL, random.Random(7), resources=MANY)
    core = Membership(A, ADDR[A], SMALL, random.Random(7), resources={"CPU": 1.0})
    with pytest.raises(LocalUsageError, match="does not fit in a gossip packet"):
        core.set_local_resources(MANY, 1.0)
    assert (core.incarnation, core.view()[A].resources) == (0, {"CPU": 1.0})


def test_resource_names_are_bounded():
    with pytest.raises(ValueError, match="resource name"):
        Alive(B, 0, "b", ADDR[B], {"x" * (MAX_RESOURCE_NAME_BYTES + 1): 1.0})
    with pytest.raises(ValueError, match="resource name"):
        Alive(B, 0, "b", ADDR[B], {"": 1.0})
    name = "x" * MAX_RESOURCE_NAME_BYTES
    assert Alive(B, 0, "b", ADDR[B], {name: 1.0}).resources == {name: 1.0}


def test_rows_heard_of_only_through_load_or_suspicion_are_reaped():
    """A LoadUpdate or Suspect about a node nobody announced makes a hidden row; without
    reaping, made-up node ids would grow the table forever."""
    cfg = dataclasses.replace(CFG, reap_time=60.0)
    core = Membership(A, ADDR[A], cfg, random.Random(7), name="a")
    core.tick(0.0)
    core.receive(ADDR[B], Alive(B, 0, "b", ADDR[B], {}), 0.0)
    ghosts = [NodeId(bytes([0x40 + i]) * 32) for i in range(3)]
    core.receive(ADDR[B], LoadUpdate(ghosts[0], 1, 2, 3), 1.0)
    core.receive(ADDR[B], Suspect(ghosts[1], 0, B), 1.0)
    core.receive(ADDR[B], LoadUpdate(ghosts[2], 1, 0, 0), 1.0)
    core.receive(ADDR[B], Alive(ghosts[2], 0, "g", ("10.0.0.9", 1), {}), 1.0)  # announced
    assert set(core.rows()) == {A, B, *ghosts}
    assert set(core.view()) == {A, B, ghosts[2]}
    now = 1.0
    while now < 1.0 + cfg.reap_time + 2 * cfg.push_pull_interval:
        now = core.next_deadline()
        core.tick(now)
        for send in core.outbox():              # the announced members answer every probe
            for msg in send.msgs:
                if isinstance(msg, Ping) and msg.target in (B, ghosts[2]):
                    core.receive(send.to, Ack(msg.seq, msg.target), now)
    assert set(core.rows()) == {A, B, ghosts[2]}
    assert {n: m.state for n, m in core.view().items()} == {
        A: State.ALIVE, B: State.ALIVE, ghosts[2]: State.ALIVE}


def test_gossip_packets_must_fit_the_transports_datagrams():
    small = dataclasses.replace(NetConfig.local(), max_datagram_size=1200)
    creds = Credentials.create(NodeIdentity.generate(), ClusterKeys("hostile-test-token-1234"))
    transport = TcpTransport(creds, small)
    assert transport.max_datagram_payload == 1200 - DatagramSealer.OVERHEAD
    core = Membership(transport.local.node_id, ("127.0.0.1", 1), GossipConfig.lan(),
                      random.Random(1))
    with pytest.raises(LocalUsageError, match=r"max_packet_size \(1300\) is over the 1127 "
                                              r"bytes a datagram of this transport carries"):
        GossipDriver(core, transport)
    fits = dataclasses.replace(GossipConfig.lan(), max_packet_size=1127)
    driver = GossipDriver(Membership(transport.local.node_id, ("127.0.0.1", 1), fits,
                                     random.Random(1)), transport)
    assert driver.core.cfg.max_packet_size == 1127
