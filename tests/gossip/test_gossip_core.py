"""The sans-IO core, driven by hand: no event loop, no sleeping, whole results compared."""

from __future__ import annotations

import dataclasses
import random

import pytest

from p2pexec.errors import LocalUsageError
from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.core import EventKind, Membership, Send
from p2pexec.gossip.messages import (
    LIFE_SHIFT,
    Ack,
    Alive,
    Dead,
    IndirectPing,
    Left,
    LoadUpdate,
    MemberRecord,
    Nack,
    Ping,
    PushPull,
    State,
    Suspect,
)
from p2pexec.gossip.table import Load
from p2pexec.gossip.wire import encode_packet
from p2pexec.ids import NodeId

A, B, C, D = (NodeId(bytes([i]) * 32) for i in range(1, 5))
ADDR = {A: ("10.0.0.1", 7946), B: ("10.0.0.2", 7946), C: ("10.0.0.3", 7946),
        D: ("10.0.0.4", 7946)}
CFG = GossipConfig.local()


def alive(node: NodeId, inc: int = 0) -> Alive:
    return Alive(node, inc, node.short, ADDR[node], {"CPU": 1.0})


def make(*others: NodeId, cfg: GossipConfig = CFG) -> Membership:
    """Core of A that already knows `others` (events and outbox drained)."""
    core = Membership(A, ADDR[A], cfg, random.Random(7), name="a", resources={"CPU": 4.0})
    core.tick(0.0)
    for node in others:
        core.receive(ADDR[node], alive(node), 0.0)
    core.events()
    core.outbox()
    return core


def primary(sends: list[Send]) -> list[tuple]:
    """(destination, first message) of each datagram: what the protocol decided to send."""
    return [(s.to, s.msgs[0]) for s in sends]


def news(core: Membership) -> list:
    """Updates just sent (drains the outbox) or still waiting to be piggybacked."""
    probes = (Ping, IndirectPing, Ack, Nack)
    sent = [m for s in core.outbox() for m in s.msgs if not isinstance(m, probes)]
    return sent + core.pending_broadcasts()


def about(core: Membership, node: NodeId) -> list[tuple]:
    """(kind, incarnation) of the events about `node` (other members may be probed too)."""
    return [(e.kind, e.member.incarnation) for e in core.events() if e.member.node_id == node]


def until_ping(core: Membership) -> tuple[float, Ping]:
    """Tick deadline by deadline until the core probes someone."""
    for _ in range(100):
        now = core.next_deadline()
        core.tick(now)
        pings = [m for s in core.outbox() for m in s.msgs if isinstance(m, Ping)]
        if pings:
            assert len(pings) == 1
            return now, pings[0]
    raise AssertionError("no probe within 100 deadlines")


def test_new_members_are_announced_as_joined_events():
    core = make()
    core.receive(ADDR[B], alive(B), 1.0)
    events = core.events()
    assert [(e.kind, e.member.node_id, e.member.state, e.time) for e in events] == [
        (EventKind.JOINED, B, State.ALIVE, 1.0)]
    assert events[0].member.resources == {"CPU": 1.0}
    assert set(core.view()) == {A, B}
    assert core.view()[A].is_self and core.view()[A].resources == {"CPU": 4.0}


def test_ping_is_answered_with_an_ack_and_a_ping_for_someone_else_is_ignored():
    core = make(B)
    core.receive(ADDR[B], Ping(5, A, B), 1.0)
    assert primary(core.outbox()) == [(ADDR[B], Ack(5, A))]
    core.receive(ADDR[B], Ping(6, C, B), 1.0)
    assert core.outbox() == []
    assert core.member(B).last_heard == 1.0


def test_silent_member_gets_indirect_probes_then_is_suspected_then_declared_dead():
    core = make(B, C)
    t, ping = until_ping(core)
    target = ping.target
    helper = C if target == B else B
    assert ping == Ping(ping.seq, target, A)
    core.tick(t + CFG.probe_timeout)
    assert primary(core.outbox()) == [
        (ADDR[helper], IndirectPing(ping.seq, target, ADDR[target], A, True))]
    core.tick(t + CFG.probe_interval)
    assert [(e.kind, e.member.node_id) for e in core.events()] == [(EventKind.SUSPECT, target)]
    assert Suspect(target, 0, A) in news(core)
    assert core.awareness == 1  # the helper's nack never came: maybe we are the slow one
    # nobody confirms: the suspicion lasts suspicion_max(n) (k = 1 confirmation possible)
    timeout = CFG.suspicion_timeout(3, 0)
    assert timeout == CFG.suspicion_max(3)
    core.tick(t + CFG.probe_interval + timeout - 0.01)
    assert [e.kind for e in core.events() if e.member.node_id == target] == []
    core.tick(t + CFG.probe_interval + timeout)
    assert [(e.kind, e.member.node_id) for e in core.events()] == [(EventKind.FAILED, target)]
    assert Dead(target, 0, A) in news(core)


def test_an_independent_confirmation_shortens_the_suspicion_to_its_minimum():
    core = make(B, C)
    core.receive(ADDR[B], Suspect(D, 0, B), 0.0)  # unknown D: kept hidden, no event
    core.receive(ADDR[C], Suspect(B, 0, C), 1.0)
    assert [e.kind for e in core.events()] == [EventKind.SUSPECT]
    core.receive(ADDR[C], Suspect(B, 0, C), 1.5)   # same origin again: not a confirmation
    core.receive(ADDR[C], Suspect(B, 0, A), 2.0)   # a second, independent suspicion
    assert core.pending_broadcasts()[0] == Suspect(B, 0, A)
    core.tick(1.0 + CFG.suspicion_min(3) - 0.01)
    assert core.events() == []
    core.tick(1.0 + CFG.suspicion_min(3))
    assert [(e.kind, e.member.node_id) for e in core.events()] == [(EventKind.FAILED, B)]


def test_an_ack_before_the_deadline_keeps_the_member_alive_and_improves_health():
    core = make(B, C)
    t, ping = until_ping(core)
    core.tick(t + CFG.probe_timeout)
    core.outbox()
    core.receive(("10.0.0.9", 1), Ack(ping.seq, ping.target), t + CFG.probe_timeout + 0.1)
    core.tick(t + CFG.probe_interval)
    assert core.events() == []
    assert core.member(ping.target).state == State.ALIVE
    assert core.awareness == 0


def test_nacks_from_every_helper_mean_our_health_is_fine():
    core = make(B, C)
    t, ping = until_ping(core)
    core.tick(t + CFG.probe_timeout)
    core.outbox()
    core.receive(ADDR[C], Nack(ping.seq, C), t + CFG.probe_timeout + 0.17)
    core.tick(t + CFG.probe_interval)
    assert [e.kind for e in core.events()] == [EventKind.SUSPECT]
    assert core.awareness == 0


def test_poor_health_stretches_the_probe_period():
    core = make(B, C)
    t1, p1 = until_ping(core)
    core.receive(ADDR[B], Ack(p1.seq, p1.target), t1)
    t2, p2 = until_ping(core)
    assert t2 - t1 == pytest.approx(CFG.probe_interval)
    core.receive(ADDR[B], Suspect(A, 0, B), t2)      # refuting costs health: score 1
    core.receive(ADDR[B], Suspect(A, 1, B), t2)      # and again: score 2
    assert (core.incarnation, core.awareness) == (2, 2)
    core.receive(ADDR[B], Ack(p2.seq, p2.target), t2)
    t3, p3 = until_ping(core)                        # this period was fixed at t2
    assert core.awareness == 1
    core.tick(t3 + 2 * CFG.probe_timeout - 0.001)    # its timeout is stretched too
    assert core.outbox() == []
    core.tick(t3 + 2 * CFG.probe_timeout)
    assert [type(s.msgs[0]) for s in core.outbox()] == [IndirectPing]
    core.receive(ADDR[B], Ack(p3.seq, p3.target), t3)
    t4, _ = until_ping(core)
    assert t4 - t3 == pytest.approx(2 * CFG.probe_interval)


def test_an_intermediary_forwards_the_ack_or_sends_a_nack():
    core = make(B, C)
    core.receive(ADDR[B], IndirectPing(41, C, ADDR[C], B, True), 5.0)
    ((to, ping),) = primary(core.outbox())
    assert (to, ping) == (ADDR[C], Ping(ping.seq, C, A))
    core.receive(ADDR[C], Ack(ping.seq, C), 5.1)
    assert primary(core.outbox()) == [(ADDR[B], Ack(41, C))]
    core.receive(ADDR[B], IndirectPing(42, C, ADDR[C], B, True), 6.0)
    core.outbox()
    core.tick(6.0 + CFG.nack_fraction * CFG.probe_timeout)
    assert [x for x in primary(core.outbox()) if not isinstance(x[1], Ping)] == [
        (ADDR[B], Nack(42, A))]


def test_suspicion_of_ourselves_is_refuted_with_a_higher_incarnation():
    core = make(B)
    core.receive(ADDR[B], Dead(A, 3, B), 1.0)
    assert core.incarnation == 4
    assert core.pending_broadcasts()[0] == Alive(A, 4, "a", ADDR[A], {"CPU": 4.0})
    assert core.view()[A].state == State.ALIVE
    core.receive(ADDR[B], Suspect(A, 2, B), 1.0)  # stale: already outbid
    assert core.incarnation == 4


def test_a_stale_suspicion_of_ourselves_gets_our_alive_again_in_the_very_ack():
    """B missed our refutation and still suspects us at incarnation 0; its probe carries
    that suspicion before the ping, so our ack carries the Alive that clears it."""
    core = make(B)
    core.receive(ADDR[B], Suspect(A, 0, B), 1.0)
    assert core.incarnation == 1
    # the accuser hears the refutation at once, whatever becomes of the gossip
    (straight,) = core.outbox()
    assert (straight.to, straight.msgs) == (ADDR[B], (Alive(A, 1, "a", ADDR[A],
                                                            {"CPU": 4.0}),))
    sent = 0
    while core.pending_broadcasts():  # the refutation is gossiped until its limit
        core.tick(core.next_deadline())
        sent += sum(isinstance(m, Alive) and m.node == A for s in core.outbox() for m in s.msgs)
    assert sent == CFG.retransmit_limit(2)
    core.receive(ADDR[B], Suspect(A, 0, B), 30.0)
    core.receive(ADDR[B], Ping(9, A, B), 30.0)
    (ack,) = core.outbox()
    assert ack.msgs == (Ack(9, A), Alive(A, 1, "a", ADDR[A], {"CPU": 4.0}))
    assert core.incarnation == 1


def test_a_process_restarted_before_detection_is_the_old_one_failed_and_a_new_one_joined():
    """Its new life outbids all the old one said, and its peers learn the process
    changed: what the old one ran or held is gone (a `FAILED`, its own word)."""
    core = make(B, C)
    core.receive(ADDR[B], alive(B, 3), 1.0)  # the old process refuted thrice
    core.events()
    later = 1 << LIFE_SHIFT
    core.receive(ADDR[B], alive(B, later), 2.0)
    assert [(e.kind, e.member.incarnation, e.origin) for e in core.events()] == [
        (EventKind.FAILED, 3, B), (EventKind.JOINED, later, None)]
    core.receive(ADDR[C], Suspect(B, later + 1, C), 3.0)  # a suspicion of the new one
    core.receive(ADDR[B], alive(B, later + 2), 3.1)
    assert about(core, B) == [(EventKind.SUSPECT, later + 1), (EventKind.ALIVE, later + 2)]


def test_a_node_starts_in_its_life_and_refutes_within_it():
    life = 2 << LIFE_SHIFT
    core = Membership(A, ADDR[A], CFG, random.Random(7), life=2)
    assert core.incarnation == life
    core.receive(ADDR[B], Suspect(A, 0, B), 1.0)  # about an earlier life: repeated Alive
    assert core.incarnation == life
    core.receive(ADDR[B], Suspect(A, life, B), 1.0)
    assert core.incarnation == life + 1


def test_a_member_that_left_is_never_reported_failed_and_may_return_later():
    core = make(B, C)
    core.receive(ADDR[C], Suspect(B, 0, C), 1.0)
    core.receive(ADDR[B], Left(B, 0), 1.1)
    core.receive(ADDR[C], Dead(B, 0, C), 1.2)
    core.tick(100.0)
    assert [(e.kind, e.member.node_id) for e in core.events()] == [
        (EventKind.SUSPECT, B), (EventKind.LEFT, B)]
    core.receive(ADDR[B], alive(B, 1), 200.0)
    assert [(e.kind, e.member.node_id, e.member.incarnation) for e in core.events()] == [
        (EventKind.JOINED, B, 1)]


def test_graceful_leave_is_gossiped_until_complete_and_stops_probing():
    core = make(B, C)
    core.leave(1.0)
    assert core.pending_broadcasts()[0] == Left(A, 0)
    assert core.view()[A].state == State.LEFT
    assert not core.leave_complete()
    core.receive(ADDR[B], Suspect(A, 0, B), 1.0)  # no refutation once leaving
    assert core.incarnation == 0
    sent = []
    now = 1.0
    while not core.leave_complete():
        now = core.next_deadline()
        core.tick(now)
        sent += core.outbox()
    assert all(not isinstance(s.msgs[0], (Ping, IndirectPing)) for s in sent)
    lefts = sum(isinstance(m, Left) for s in sent for m in s.msgs)
    assert lefts == CFG.retransmit_limit(3)
    assert now - 1.0 < 1.0


def test_load_is_versioned_and_rate_limited():
    core = make(B)
    core.set_local_load(3, 1, 10.0)
    assert core.pending_broadcasts()[0] == LoadUpdate(A, 1, 3, 1)
    core.set_local_load(5, 2, 10.05)
    assert core.pending_broadcasts()[0] == LoadUpdate(A, 1, 3, 1)
    assert core.next_deadline() <= 10.0 + CFG.load_update_interval
    core.tick(10.0 + CFG.load_update_interval)
    assert core.pending_broadcasts()[0] == LoadUpdate(A, 2, 5, 2)
    assert core.view()[A].load == Load(5, 2, 2)
    core.receive(ADDR[B], LoadUpdate(B, 4, 9, 2), 11.0)
    assert core.view()[B].load == Load(9, 2, 4)
    core.receive(ADDR[B], LoadUpdate(B, 3, 0, 0), 11.0)
    assert core.view()[B].load == Load(9, 2, 4)


def test_join_sends_our_state_to_each_seed_over_a_stream():
    core = make()
    core.join([ADDR[B], ADDR[A]], 1.0)
    me = MemberRecord(A, "a", ADDR[A], 0, State.ALIVE, {"CPU": 4.0}, 0, 0, 0)
    assert core.outbox() == [Send(ADDR[B], (PushPull(A, True, (me,)),), stream=True)]


def test_push_pull_merges_state_and_a_remote_death_only_makes_us_suspect():
    core = make(B)
    rec = lambda n, inc, st: MemberRecord(n, n.short, ADDR[n], inc, st, {}, 2, 1, 0)  # noqa: E731
    reply = core.handle_push_pull(ADDR[C], PushPull(C, False, (
        rec(C, 0, State.ALIVE), rec(B, 0, State.DEAD), rec(D, 0, State.DEAD))), 3.0)
    assert {n: (m.state, m.load) for n, m in core.view().items()} == {
        A: (State.ALIVE, Load()), B: (State.SUSPECT, Load(1, 0, 2)),
        C: (State.ALIVE, Load(1, 0, 2))}
    assert [(e.kind, e.member.node_id) for e in core.events()] == [
        (EventKind.JOINED, C), (EventKind.SUSPECT, B)]
    assert reply.sender == A and not reply.join
    assert {(r.node, r.state) for r in reply.members} == {
        (A, State.ALIVE), (B, State.SUSPECT), (C, State.ALIVE)}


def test_the_dead_of_a_healing_partitions_other_side_are_told_not_suspected():
    """D, which we hold dead, sends its table: those it holds dead were cut off from it,
    not failed. They hear it once each, straight, and refute; no timer runs here."""
    core = make(B, C, D)
    core.receive(ADDR[C], Dead(D, 0, C), 1.0)
    core.events()
    core.outbox()
    rec = lambda n, inc, st: MemberRecord(n, n.short, ADDR[n], inc, st, {}, 0, 0, 0)  # noqa: E731
    pp = PushPull(D, False, (rec(D, 0, State.ALIVE), rec(B, 0, State.DEAD),
                             rec(C, 0, State.SUSPECT), rec(A, 0, State.DEAD)))
    core.receive(ADDR[D], pp, 2.0)
    assert core.events() == []
    told = [(s.to, s.msgs) for s in core.outbox() if s.msgs[0].node != A]
    assert told == [(ADDR[B], (Suspect(B, 0, D),)), (ADDR[C], (Suspect(C, 0, D),))]
    assert core.view()[B].state == core.view()[C].state == State.ALIVE
    assert core.incarnation == 1  # and we refute what it said of us, as always
    core.receive(ADDR[D], pp, 3.0)  # told once per incarnation
    assert [s for s in core.outbox() if s.msgs[0].node != A] == []
    joining = dataclasses.replace(pp, join=True)  # a restarted process's join: as usual
    core.receive(ADDR[D], joining, 4.0)
    assert about(core, B) == [(EventKind.SUSPECT, 0)]


def test_push_pull_telling_us_we_are_dead_makes_us_refute():
    core = make(B)
    core.receive(ADDR[B], PushPull(B, False, (
        MemberRecord(A, "a", ADDR[A], 2, State.DEAD, {}, 0, 0, 0),)), 1.0)
    assert core.incarnation == 3


def test_piggybacked_datagrams_stay_under_the_packet_size():
    core = make(B)
    for i in range(200):
        node = NodeId(i.to_bytes(2, "big") * 16)
        core.receive(ADDR[B], Alive(node, 0, f"n{i}", ("10.1.0.1", 7000 + i), {"CPU": 8.0}),
                     1.0)
    core.receive(ADDR[B], Ping(1, A, B), 1.0)
    (send,) = core.outbox()
    assert send.msgs[0] == Ack(1, A)
    assert len(send.msgs) > 5
    assert len(encode_packet(send.msgs)) <= CFG.max_packet_size


def test_each_update_is_piggybacked_retransmit_limit_times_then_dropped():
    cfg = dataclasses.replace(CFG, retransmit_mult=3)
    core = make(B, cfg=cfg)
    core.receive(ADDR[B], Alive(C, 0, "c", ADDR[C], {}), 1.0)
    count = 0
    for i in range(20):
        core.receive(ADDR[B], Ping(i, A, B), 1.0)
        count += sum(m == Alive(C, 0, "c", ADDR[C], {}) for s in core.outbox() for m in s.msgs)
    assert count == cfg.retransmit_limit(3) == 3


def test_a_suspicion_at_a_higher_incarnation_gets_a_fresh_timer():
    """We missed B's refutation of a suspicion at incarnation 0; a new suspicion at 1 tells
    us it refuted. The old timer must not declare B dead at incarnation 1 (a death the
    whole cluster would accept): B gets a full new timeout to refute again."""
    core = make(B, C)
    core.receive(ADDR[C], Suspect(B, 0, C), 0.0)
    core.receive(ADDR[C], Suspect(B, 1, C), 10.0)
    core.tick(CFG.suspicion_max(3))  # the first timer's deadline
    assert about(core, B) == [(EventKind.SUSPECT, 0)]
    assert core.member(B).state == State.SUSPECT
    core.tick(10.0 + CFG.suspicion_max(3))
    assert about(core, B) == [(EventKind.FAILED, 1)]
    assert Dead(B, 1, A) in news(core)


def test_a_newly_suspected_member_is_probed_next_with_the_news_before_the_ping():
    core = make(B, C, D)
    core.receive(ADDR[B], Suspect(C, 0, B), 0.0)
    t, ping = until_ping(core)
    assert ping.target == C
    core.receive(ADDR[C], Ack(ping.seq, C), t)
    targets = []
    for _ in range(3):  # once per suspicion: then a round-robin lap over everyone
        t, ping = until_ping(core)
        core.receive(ADDR[ping.target], Ack(ping.seq, ping.target), t)
        targets.append(ping.target)
    assert sorted(targets) == sorted([B, C, D])


def test_the_probe_of_a_suspect_carries_the_suspicion_first():
    core = make(B)
    core.receive(ADDR[B], Suspect(D, 0, B), 0.0)   # unknown member: nothing to probe
    core.receive(ADDR[C], alive(C), 0.0)
    core.receive(ADDR[B], Suspect(C, 0, B), 0.0)
    core.outbox()
    for _ in range(10):
        core.tick(core.next_deadline())
        sends = [s for s in core.outbox() if any(isinstance(m, Ping) for m in s.msgs)]
        if sends:
            break
    (send,) = sends
    assert send.to == ADDR[C]
    assert send.msgs[:2] == (Suspect(C, 0, A), Ping(send.msgs[1].seq, C, A))


def test_bad_local_load_or_resources_are_our_callers_bug():
    core = make()
    with pytest.raises(LocalUsageError):
        core.set_local_load(-1, 0, 1.0)
    with pytest.raises(LocalUsageError):
        core.set_local_resources({"CPU": float("inf")}, 1.0)
    core.set_local_resources({"CPU": 8.0, "gpu": 1.0}, 1.0)
    assert (core.incarnation, core.view()[A].resources) == (1, {"CPU": 8.0, "gpu": 1.0})
