"""Signed records: what check_record refuses, and the store's rules under random orders.

The state machine puts real signed records (a few Ed25519 keys made once), moves the
clock, expires, drops publishers and compares the store with a plain model after every
step: newer seq replaces, older is ignored, the same seq again extends the expiry,
tombstones hide a record but stay until they expire, and the caps refuse with a reason.
"""

import dataclasses
import functools
import hashlib

from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pexec.dht.config import DhtConfig
from p2pexec.dht.messages import Record, signed_bytes
from p2pexec.dht.records import RecordSigner, RecordStore, check_record
from p2pexec.ids import NodeId

SIGNERS = [RecordSigner(ed25519.Ed25519PrivateKey.generate()) for _ in range(4)]
KEYS = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
CONFIG = DhtConfig(record_ttl=10.0, republish_interval=5.0, max_record_value=16,
                   max_records_per_key=3, max_records=6)


@functools.cache
def signed(signer: int, key: int, seq: int, value: bytes) -> Record:
    return SIGNERS[signer].sign(KEYS[key], seq, value)


def test_signer_makes_records_that_check():
    record = SIGNERS[0].sign(KEYS[0], 5, b"hello")
    assert record.publisher == NodeId.from_public_key(SIGNERS[0].public_key)
    assert (record.key, record.seq, record.value) == (KEYS[0], 5, b"hello")
    assert check_record(record, CONFIG) is None
    assert check_record(SIGNERS[1].sign(KEYS[0], 0, b""), CONFIG) is None  # a tombstone


def _resigned(record: Record, private: ed25519.Ed25519PrivateKey, **changes) -> Record:
    """`record` with `changes`, signed properly (so only the change itself is wrong)."""
    record = dataclasses.replace(record, **changes)
    return dataclasses.replace(record, signature=private.sign(
        signed_bytes(record.key, record.seq, record.value)))


KEY_A = ed25519.Ed25519PrivateKey.generate()
SIGNER_A = RecordSigner(KEY_A)
OTHER = ed25519.Ed25519PrivateKey.generate()
GOOD = SIGNER_A.sign(KEYS[0], 3, b"value")

BAD_RECORDS = {
    "public key of another node": (
        _resigned(GOOD, OTHER, public_key=RecordSigner(OTHER).public_key),
        "its public key is not its publisher's"),
    "publisher id of another node": (
        dataclasses.replace(GOOD, publisher=SIGNERS[1].node_id),
        "its public key is not its publisher's"),
    "public key too short": (
        dataclasses.replace(GOOD, public_key=GOOD.public_key[:31]),
        "its public key is not its publisher's"),
    "public key too short, publisher its hash": (
        dataclasses.replace(GOOD, public_key=GOOD.public_key[:31],
                            publisher=NodeId.from_public_key(GOOD.public_key[:31])),
        "its public key is not its publisher's"),
    "tampered value": (dataclasses.replace(GOOD, value=b"valuf"), "bad signature"),
    "tampered seq": (dataclasses.replace(GOOD, seq=4), "bad signature"),
    "tampered key": (dataclasses.replace(GOOD, key=KEYS[1]), "bad signature"),
    "signature with a flipped bit": (
        dataclasses.replace(GOOD, signature=bytes([GOOD.signature[0] ^ 1])
                            + GOOD.signature[1:]), "bad signature"),
    "truncated signature": (dataclasses.replace(GOOD, signature=GOOD.signature[:63]),
                            "bad signature"),
    "empty signature": (dataclasses.replace(GOOD, signature=b""), "bad signature"),
    "signature by another key": (
        dataclasses.replace(GOOD, signature=OTHER.sign(signed_bytes(GOOD.key, 3, b"value"))),
        "bad signature"),
    "oversized value": (_resigned(GOOD, KEY_A, value=b"x" * 17), "value of 17 bytes, over 16"),
    "key of 31 bytes": (_resigned(GOOD, KEY_A, key=KEYS[0][:31]), "key of 31 bytes"),
    "key of 33 bytes": (_resigned(GOOD, KEY_A, key=KEYS[0] + b"\0"), "key of 33 bytes"),
    "seq past 2**63": (_resigned(GOOD, KEY_A, seq=1 << 63), "out of range"),
}


def test_every_bad_record_is_refused_with_its_reason_and_nothing_is_stored():
    assert check_record(GOOD, CONFIG) is None
    store = RecordStore(CONFIG)
    for name, (record, reason) in BAD_RECORDS.items():
        got = check_record(record, CONFIG)
        assert got is not None and reason in got, (name, got)
        assert store.put(record, 5.0, now=0.0) == got, name
        store.validate()
        assert store.count == 0 and store.by_key == {}, name
        assert store.get(record.key, 0.0) == [] and store.entries(record.key) == [], name
    # the good one is accepted, and a bad copy of it afterwards changes nothing
    assert store.put(GOOD, 5.0, now=0.0) is None
    for name, (record, _) in BAD_RECORDS.items():
        assert store.put(record, 10.0, now=1.0) is not None, name
    assert store.get(KEYS[0], 1.0) == [GOOD]
    assert [e.expires for e in store.entries(KEYS[0])] == [5.0]
    store.validate()


def test_value_at_the_size_limit_is_accepted():
    record = SIGNER_A.sign(KEYS[0], 0, b"x" * 16)
    assert check_record(record, CONFIG) is None


def test_time_to_live_must_be_positive_and_is_capped_by_record_ttl():
    store = RecordStore(CONFIG)
    for ttl in (0.0, -1.0, float("nan")):
        reason = store.put(GOOD, ttl, now=0.0)
        assert reason is not None and "time to live" in reason
    assert store.count == 0
    assert store.put(GOOD, 1e9, now=2.0) is None
    assert [e.expires for e in store.entries(GOOD.key)] == [12.0]


def test_newer_replaces_older_is_ignored_tombstone_hides_until_it_expires():
    store = RecordStore(CONFIG)
    assert store.put(signed(0, 0, 2, b"two"), 5.0, now=0.0) is None
    assert store.put(signed(0, 0, 1, b"one"), 9.0, now=1.0) is None  # ignored, not refused
    assert store.get(KEYS[0], 1.0) == [signed(0, 0, 2, b"two")]
    assert [e.expires for e in store.entries(KEYS[0])] == [5.0]
    assert store.put(signed(0, 0, 2, b"two"), 9.0, now=1.0) is None  # republish
    assert [e.expires for e in store.entries(KEYS[0])] == [10.0]
    assert store.put(signed(0, 0, 3, b""), 4.0, now=2.0) is None  # withdrawn
    assert store.get(KEYS[0], 2.0) == []
    assert [e.record.seq for e in store.entries(KEYS[0])] == [3]
    assert store.put(signed(0, 0, 2, b"two"), 9.0, now=3.0) is None  # cannot come back
    assert store.get(KEYS[0], 3.0) == []
    assert store.expire(5.9) == 0 and store.count == 1
    assert store.expire(6.0) == 1 and store.count == 0 and store.by_key == {}
    store.validate()


def test_caps_refuse_new_publishers_but_not_updates_of_held_records():
    store = RecordStore(CONFIG)
    for signer in range(3):
        assert store.put(signed(signer, 0, 0, b"a"), 5.0, now=0.0) is None
    reason = store.put(signed(3, 0, 0, b"a"), 5.0, now=0.0)
    assert reason == "key already has 3 publishers"
    assert store.put(signed(0, 0, 1, b"b"), 5.0, now=0.0) is None  # update still fine
    for signer in range(3):
        assert store.put(signed(signer, 1, 0, b"a"), 5.0, now=0.0) is None
    assert store.count == 6
    assert store.put(signed(0, 2, 0, b"a"), 5.0, now=0.0) == "store full (6 records)"
    assert KEYS[2] not in store.by_key
    assert store.drop_publisher(SIGNERS[1].node_id) == 2
    assert store.put(signed(0, 2, 0, b"a"), 5.0, now=0.0) is None
    assert store.count == 5
    store.validate()


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = RecordStore(CONFIG)
        self.model: dict[bytes, dict[NodeId, tuple[Record, float]]] = {}
        self.now = 0.0

    def count(self) -> int:
        return sum(len(held) for held in self.model.values())

    @rule(signer=st.integers(0, 3), key=st.integers(0, 2), seq=st.integers(0, 4),
          value=st.sampled_from([b"", b"a", b"bb", b"c" * 16]),
          ttl=st.sampled_from([0.0, 1.0, 3.0, 7.0, 10.0, 25.0]))
    def put(self, signer, key, seq, value, ttl):
        record = signed(signer, key, seq, value)
        before = {k: dict(v) for k, v in self.model.items()}
        got = self.store.put(record, ttl, self.now)
        held = self.model.get(record.key, {})
        old = held.get(record.publisher)
        expires = self.now + min(ttl, CONFIG.record_ttl)
        if ttl <= 0:
            expected_refusal = True
        elif old is not None:
            expected_refusal = False
            if seq > old[0].seq:
                held[record.publisher] = (record, expires)
            elif seq == old[0].seq:
                held[record.publisher] = (old[0], max(old[1], expires))
        elif len(held) >= CONFIG.max_records_per_key or self.count() >= CONFIG.max_records:
            expected_refusal = True
        else:
            expected_refusal = False
            self.model.setdefault(record.key, {})[record.publisher] = (record, expires)
        if expected_refusal:
            assert isinstance(got, str) and got, got
            assert self.model == before
        else:
            assert got is None

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0, 7.0]))
    def advance_and_expire(self, dt):
        self.now += dt
        gone = 0
        for key in list(self.model):
            held = self.model[key]
            for publisher in [p for p, (_, expires) in held.items() if expires <= self.now]:
                del held[publisher]
                gone += 1
            if not held:
                del self.model[key]
        assert self.store.expire(self.now) == gone

    @rule(dt=st.sampled_from([0.5, 2.0]))
    def advance_without_expiring(self, dt):
        self.now += dt

    @rule(signer=st.integers(0, 3))
    def drop_publisher(self, signer):
        publisher = SIGNERS[signer].node_id
        gone = 0
        for key in list(self.model):
            if self.model[key].pop(publisher, None) is not None:
                gone += 1
                if not self.model[key]:
                    del self.model[key]
        assert self.store.drop_publisher(publisher) == gone

    @precondition(lambda self: self.model)
    @rule()
    def republish_everything(self):
        """Every held record again with the same seq: nothing changes but the expiries."""
        for held in self.model.values():
            for publisher, (record, expires) in list(held.items()):
                assert self.store.put(record, CONFIG.record_ttl, self.now) is None
                held[publisher] = (record, max(expires, self.now + CONFIG.record_ttl))

    @invariant()
    def matches_the_model(self):
        self.store.validate()
        assert self.store.count == self.count()
        assert set(self.store.by_key) == set(self.model)
        for key in KEYS:
            held = self.model.get(key, {})
            entries = self.store.entries(key)
            assert len(entries) == len(held)
            assert {e.record.publisher: (e.record, e.expires) for e in entries} == held
            live = [record for _, (record, expires) in sorted(held.items())
                    if expires > self.now and record.value]
            assert self.store.get(key, self.now) == live


StoreMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=50,
                                          deadline=None)
test_record_store_state_machine = StoreMachine.TestCase
