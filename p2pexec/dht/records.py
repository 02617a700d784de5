"""Signed records and the store a node keeps of them (sans-IO: time is passed in).

A key holds at most one record per publisher. A record enters the store only if its
signature checks against the key it names and that key hashes to its publisher: so
records about a node come from that node, whoever forwards them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p2pexec.dht.config import DhtConfig
from p2pexec.dht.messages import KEY_SIZE, Record, signed_bytes
from p2pexec.ids import NodeId


class RecordSigner:
    """Makes this node's records (the node's own Ed25519 key)."""

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw,
                                                                PublicFormat.Raw)
        self.node_id = NodeId.from_public_key(self.public_key)

    def sign(self, key: bytes, seq: int, value: bytes) -> Record:
        return Record(key, self.node_id, self.public_key, seq, value,
                      self._key.sign(signed_bytes(key, seq, value)))


def check_record(record: Record, config: DhtConfig) -> str | None:
    """Why `record` must be refused, or None when it is well formed and signed by the
    publisher it names."""
    if len(record.key) != KEY_SIZE:
        return f"key of {len(record.key)} bytes, not {KEY_SIZE}"
    if len(record.value) > config.max_record_value:
        return f"value of {len(record.value)} bytes, over {config.max_record_value}"
    if not 0 <= record.seq < 1 << 63:
        return f"sequence number {record.seq} out of range"
    if len(record.public_key) != 32 or hashlib.sha256(record.public_key).digest() != (
            record.publisher.raw):
        return "its public key is not its publisher's"
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(record.public_key).verify(
            record.signature, signed_bytes(record.key, record.seq, record.value))
    except (InvalidSignature, ValueError):
        return f"bad signature (claims publisher {record.publisher.short})"
    return None


@dataclass(slots=True)
class StoredRecord:
    record: Record
    expires: float


class RecordStore:
    """The records a node keeps for the cluster, by key and publisher."""

    def __init__(self, config: DhtConfig) -> None:
        self.config = config
        self.by_key: dict[bytes, dict[NodeId, StoredRecord]] = {}
        self.count = 0

    def put(self, record: Record, ttl: float, now: float) -> str | None:
        """Keep `record` for `ttl` seconds (at most record_ttl); the reason if refused.
        An older or equal sequence number than the one held is ignored, not refused:
        copies arrive out of order."""
        reason = check_record(record, self.config)
        if reason is not None:
            return reason
        if not ttl > 0:
            return f"time to live {ttl!r} is not positive"
        expires = now + min(ttl, self.config.record_ttl)
        held = self.by_key.get(record.key)
        old = held.get(record.publisher) if held is not None else None
        if old is not None:
            if record.seq > old.record.seq:
                old.record, old.expires = record, expires
            elif record.seq == old.record.seq:
                old.expires = max(old.expires, expires)  # a republish
            return None
        if held is not None and len(held) >= self.config.max_records_per_key:
            return f"key already has {len(held)} publishers"
        if self.count >= self.config.max_records:
            return f"store full ({self.count} records)"
        self.by_key.setdefault(record.key, {})[record.publisher] = StoredRecord(record, expires)
        self.count += 1
        return None

    def get(self, key: bytes, now: float) -> list[Record]:
        """Live, not withdrawn records under `key`, by publisher id."""
        held = self.by_key.get(key)
        if not held:
            return []
        return [entry.record for publisher, entry in sorted(held.items())
                if entry.expires > now and not entry.record.withdrawn]

    def entries(self, key: bytes) -> list[StoredRecord]:
        """Everything held under `key`, withdrawn ones too (what a hand-over sends)."""
        return list(self.by_key.get(key, {}).values())

    def expire(self, now: float) -> int:
        """Drop records past their time; how many went."""
        gone = 0
        for key in list(self.by_key):
            held = self.by_key[key]
            for publisher in [p for p, entry in held.items() if entry.expires <= now]:
                del held[publisher]
                gone += 1
            if not held:
                del self.by_key[key]
        self.count -= gone
        return gone

    def drop_publisher(self, publisher: NodeId) -> int:
        """Forget every record `publisher` published (it died or left); how many."""
        gone = 0
        for key in list(self.by_key):
            held = self.by_key[key]
            if held.pop(publisher, None) is not None:
                gone += 1
                if not held:
                    del self.by_key[key]
        self.count -= gone
        return gone

    def validate(self) -> None:
        """Invariants (tests call it after every step)."""
        assert self.count == sum(len(held) for held in self.by_key.values())
        assert self.count <= self.config.max_records
        for key, held in self.by_key.items():
            assert held, "an empty key is dropped"
            assert len(held) <= self.config.max_records_per_key
            for publisher, entry in held.items():
                assert entry.record.key == key and entry.record.publisher == publisher
