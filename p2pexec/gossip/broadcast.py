"""The piggyback queue: pending updates, each sent a limited number of times.

memberlist's TransmitLimitedQueue: updates about the same subject replace each other (only
the newest news about a node is worth sending), the least-sent go first (newest first among
equals), and an update is dropped after `retransmit_limit(n)` sends.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from p2pexec.gossip.messages import MemberUpdate


@dataclass(slots=True)
class _Entry:
    msg: MemberUpdate
    size: int
    order: int
    transmits: int = 0


class BroadcastQueue:
    """Updates waiting to be piggybacked, keyed by subject."""

    def __init__(self, max_size: int | None = None) -> None:
        """`max_size`: the most bytes of updates one packet can carry. A bigger update would
        never be taken and would stay queued (and wake the driver) forever."""
        self.max_size = max_size
        self._entries: dict[Hashable, _Entry] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def enqueue(self, key: Hashable, msg: MemberUpdate, size: int) -> bool:
        """Queue `msg` (encoded size `size`), replacing any pending update with the same key.
        False when it is over `max_size`: then it is not queued (and the older update with
        that key, which it supersedes, is dropped too)."""
        if self.max_size is not None and size > self.max_size:
            self._entries.pop(key, None)
            return False
        self._counter += 1
        self._entries[key] = _Entry(msg, size, self._counter)
        return True

    def discard(self, key: Hashable) -> None:
        """Forget the pending update with this key, if any."""
        self._entries.pop(key, None)

    def take(self, budget: int, per_message_overhead: int, limit: int) -> list[MemberUpdate]:
        """Updates fitting in `budget` bytes, least-sent first; counts one send for each and
        drops those sent `limit` times."""
        if budget <= 0 or not self._entries:
            return []
        ranked = sorted(self._entries.items(), key=lambda kv: (kv[1].transmits, -kv[1].order))
        out: list[MemberUpdate] = []
        for key, entry in ranked:
            cost = entry.size + per_message_overhead
            if cost > budget:
                continue
            budget -= cost
            out.append(entry.msg)
            entry.transmits += 1
            if entry.transmits >= limit:
                del self._entries[key]
        return out

    def pending(self) -> list[MemberUpdate]:
        """Every queued update, newest first (for inspection and tests)."""
        return [e.msg for e in sorted(self._entries.values(), key=lambda e: -e.order)]
