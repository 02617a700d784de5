"""Identifiers: node ids bound to public keys, and random ids for tasks, objects and actors."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class NodeId:
    """SHA-256 of a node's public key: where a node sits in the DHT is bound to its key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError(f"a node id is 32 bytes, got {len(self.raw)}")

    @classmethod
    def from_public_key(cls, public_key_bytes: bytes) -> NodeId:
        return cls(hashlib.sha256(public_key_bytes).digest())

    @classmethod
    def from_hex(cls, text: str) -> NodeId:
        return cls(bytes.fromhex(text))

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def short(self) -> str:
        """Human form, like Syncthing's device ids: base32 groups of the first 80 bits."""
        text = base64.b32encode(self.raw[:10]).decode("ascii")
        return "-".join(text[i:i + 4] for i in range(0, len(text), 4))

    def __hash__(self) -> int:
        # node ids key every membership and routing table: hash the bytes (their hash is
        # cached) rather than the generated hash of a fresh (raw,) tuple at every lookup
        return hash(self.raw)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is NodeId:
            return self.raw == other.raw  # type: ignore[attr-defined]
        return NotImplemented

    def __str__(self) -> str:
        return self.short

    def __repr__(self) -> str:
        return f"NodeId({self.short})"


def new_id_bytes(size: int = 16) -> bytes:
    """Random bytes for task, object and actor ids (collisions are negligible at 128 bits)."""
    return os.urandom(size)
