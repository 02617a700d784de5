"""The Dht core driven by hand: requests in, answers and queries out, no clock."""

import dataclasses
import hashlib
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from p2pexec.dht.config import DhtConfig
from p2pexec.dht.core import Dht
from p2pexec.dht.messages import (
    Contact,
    DhtPing,
    DhtPong,
    FindNode,
    FindValue,
    Nodes,
    Store,
    Stored,
    Values,
)
from p2pexec.dht.records import RecordSigner
from p2pexec.errors import LocalUsageError, RemoteProtocolError
from p2pexec.net.messages import Hello

SIGNERS = [RecordSigner(ed25519.Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32))
           for i in range(1, 9)]


def contact(i: int) -> Contact:
    return Contact(SIGNERS[i].node_id, (f"node{i}", 7946))


def make(i: int, **config) -> Dht:
    return Dht(contact(i), DhtConfig(**config), random.Random(i), SIGNERS[i])


def mesh(n: int) -> dict:
    """`n` cores that each know all the others."""
    cores = {i: make(i) for i in range(n)}
    for a in cores.values():
        for b in cores.values():
            a.member_alive(b.own, 0.0)
    return cores


def deliver(cores: dict, now: float = 0.0, rounds: int = 20) -> None:
    """Carry every query to its target core and the answer back, until quiet."""
    by_node = {core.own.node: core for core in cores.values()}
    for _ in range(rounds):
        pending = [(core, out) for core in cores.values() for out in core.outbox]
        if not pending:
            return
        for core, _ in pending:
            core.outbox.clear()
        for core, out in pending:
            target = by_node.get(out.contact.node)
            if target is None:
                core.query_failed(out.query_id, now)
            else:
                core.reply(out.query_id, target.handle_request(core.own, out.message, now),
                           now)


def test_publish_stores_on_peers_and_itself_and_any_peer_finds_it():
    cores = mesh(4)
    key = hashlib.sha256(b"object").digest()
    op = cores[0].publish(key, b"here", 0.0)
    deliver(cores)
    (done,) = cores[0].finished
    assert done.op_id == op and done.stored == 4 and done.error is None
    found = cores[3].find_value(key, 1.0)
    (answer,) = cores[3].finished
    assert answer.op_id == found and answer.result.hops == 0  # held locally: no query
    assert [r.value for r in answer.result.records] == [b"here"]
    for core in cores.values():
        core.validate()


def test_a_forged_record_is_refused_and_nothing_is_stored():
    receiver = make(1)
    key = bytes(32)
    genuine = SIGNERS[2].sign(key, 1, b"mine")
    forged = [
        dataclasses.replace(genuine, value=b"not mine"),  # signature no longer matches
        dataclasses.replace(genuine, publisher=SIGNERS[3].node_id),  # claims another node
        SIGNERS[2].sign(b"short", 1, b"x"),
    ]
    answer = receiver.handle_request(contact(2), Store(forged, 60.0), 0.0)
    assert answer.accepted == 0 and len(answer.refused) == 3
    assert receiver.store.count == 0
    assert receiver.handle_request(contact(2), Store([genuine], 60.0), 0.0) == Stored(1, [])


def test_records_of_a_departed_member_are_dropped_and_not_taken_back():
    receiver = make(1)
    record = SIGNERS[2].sign(bytes(32), 1, b"v")
    receiver.handle_request(contact(3), Store([record], 60.0), 0.0)
    receiver.member_gone(contact(2).node, 1.0)
    assert receiver.store.count == 0
    answer = receiver.handle_request(contact(3), Store([record], 60.0), 2.0)  # a late copy
    assert answer.accepted == 0 and "left" in answer.refused[0]
    receiver.member_alive(contact(2), 3.0)  # it came back
    assert receiver.handle_request(contact(3), Store([record], 60.0), 4.0).accepted == 1


def test_a_newcomer_gets_the_records_it_is_now_closest_for():
    holder = make(0)
    newcomer = contact(1)
    key = newcomer.node.raw  # nobody is closer to this key than the newcomer
    holder.handle_request(contact(2), Store([SIGNERS[2].sign(key, 1, b"v")], 60.0), 0.0)
    holder.member_alive(newcomer, 1.0)
    (out,) = holder.outbox
    assert out.contact == newcomer and type(out.message) is Store
    assert [r.value for r in out.message.records] == [b"v"]
    assert 0 < out.message.ttl <= 59.0


def test_a_full_bucket_pings_its_oldest_contact_and_replaces_it_only_if_silent():
    own = make(0, k=1)
    first, second = next((contact(a), contact(b)) for a in range(1, 8) for b in range(a + 1, 8)
                         if own.table.bucket_of(contact(a).node)
                         is own.table.bucket_of(contact(b).node))
    own.member_alive(first, 0.0)
    own.member_alive(second, 1.0)  # bucket full: ping the oldest
    (ping,) = own.outbox
    assert ping.contact == first and type(ping.message) is DhtPing
    own.outbox.clear()
    own.reply(ping.query_id, DhtPong(), 1.1)
    assert own.table.get(first.node) == first and own.table.get(second.node) is None
    own.member_alive(second, 2.0)  # asks again: it is still a replacement
    (ping,) = own.outbox
    own.tick(2.0 + own.config.ping_timeout)  # no answer this time
    assert own.table.get(first.node) is None and own.table.get(second.node) == second


def test_withdraw_replaces_the_record_with_a_tombstone():
    cores = mesh(3)
    key = hashlib.sha256(b"actor name").digest()
    cores[0].publish(key, b"actor", 0.0)
    deliver(cores)
    assert cores[0].withdraw(key, 1.0) is not None
    deliver(cores)
    for core in cores.values():
        assert core.store.get(key, 2.0) == []
        assert core.store.count == 1  # the tombstone stays until it expires
    assert cores[0].withdraw(key, 3.0) is None


def test_bad_requests_and_replies():
    core = make(0)
    with pytest.raises(RemoteProtocolError):
        core.handle_request(contact(1), FindNode(b"short"), 0.0)
    with pytest.raises(RemoteProtocolError):
        core.handle_request(contact(1), Hello("p2pexec", 1, 1, contact(1).node, b""), 0.0)
    core.member_alive(contact(1), 0.0)
    op = core.find_value(bytes(32), 0.0)
    (query,) = core.outbox
    assert type(query.message) is FindValue
    core.reply(query.query_id, Nodes([]), 0.1)  # the wrong answer counts as no answer
    (done,) = core.finished
    assert done.op_id == op and done.error is not None and done.result.failed == 1
    with pytest.raises(LocalUsageError):
        core.publish(bytes(32), b"", 0.0)
    with pytest.raises(LocalUsageError):
        core.publish(b"short", b"x", 0.0)
    with pytest.raises(LocalUsageError):
        core.publish(bytes(32), b"x" * 5000, 0.0)


def test_replies_never_name_the_asker_and_are_cut_to_k():
    core = make(0, k=3, max_contacts_per_reply=3)
    for i in range(1, 8):
        core.member_alive(contact(i), 0.0)
    answer = core.handle_request(contact(1), FindNode(contact(1).node.raw), 0.0)
    assert type(answer) is Nodes and len(answer.contacts) == 3
    assert contact(1) not in answer.contacts
    values = core.handle_request(contact(2), FindValue(bytes(32)), 0.0)
    assert type(values) is Values and values.records == []
