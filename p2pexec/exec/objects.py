"""The ownership table: every object this node owns, its value and who still needs it.

Sans-IO. An object lives while some process holds an ObjectRef to it (`holders`), a task
that may still run names it in its arguments, or another live object contains it
(`pins`). When none is left and its value has arrived, it is freed, and a shared-memory
segment behind it is reported for unlinking.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pexec.exec.serialization import payload_segment, payload_size


@dataclass(slots=True)
class ObjectEntry:
    payload: list | None = None
    """None while the creating task has not finished."""
    holders: set[int] = field(default_factory=set)
    """Processes (driver 0, workers by id) holding at least one ObjectRef to it."""
    pins: int = 0
    """Tasks that may still run with it as an argument, and live objects containing it."""
    contained: list[bytes] = field(default_factory=list)
    on_ready: list[Callable[[bytes], None]] = field(default_factory=list)
    remote: bool = False
    """A copy of an object another node made, being fetched or fetched (see `receive`)."""
    size: int = 0
    """Bytes of its shared-memory segment (0 for other payloads)."""
    spilling: bool = False
    """A copy to the spill dir is under way."""
    spilled: bool = False
    """Its segment lives in the spill dir now, no longer in shared memory."""


class ObjectTable:
    """Values and reference counts of owned objects; reports frees through `unlink`."""

    def __init__(self, unlink: Callable[[str], None],
                 on_free: Callable[[bytes], None] | None = None,
                 on_large: Callable[[bytes, bool], None] | None = None) -> None:
        """`on_large(object_id, held)` hears when a value in shared memory arrives (True)
        and when it is freed (False): what a node publishes as a holder of the object."""
        self.entries: dict[bytes, ObjectEntry] = {}
        self._unlink = unlink
        self._on_free = on_free
        self._on_large = on_large
        self.in_memory: OrderedDict[bytes, None] = OrderedDict()
        """Objects whose segment is in shared memory, least recently used first."""
        self.memory_bytes = 0
        """Their total size: what `spill_candidates` keeps under the node's cap."""
        self.delete_spilled: Callable[[str], None] | None = None
        """Removes a spilled segment's file (set by a scheduler that spills)."""

    def __len__(self) -> int:
        return len(self.entries)

    def expect(self, object_id: bytes, holder: int) -> None:
        """A task was submitted whose result will be `object_id`, held by `holder`."""
        self.entries[object_id] = ObjectEntry(holders={holder})

    def expect_contained(self, object_id: bytes) -> None:
        """An object that a value about to be completed contains (a streaming task's
        item, or its next link): held by nothing but that value."""
        self.entries[object_id] = ObjectEntry()

    def reset(self, object_id: bytes) -> None:
        """The value will be produced again (an actor restarts); keep who holds it."""
        entry = self.entries.get(object_id)
        if entry is None:
            self.entries[object_id] = ObjectEntry()
        elif entry.payload is not None:
            self._release_payload(entry, object_id)
            entry.payload = None

    def payload(self, object_id: bytes) -> list | None:
        entry = self.entries.get(object_id)
        return None if entry is None else entry.payload

    def is_ready(self, object_id: bytes) -> bool:
        entry = self.entries.get(object_id)
        return entry is not None and entry.payload is not None

    def known(self, object_id: bytes) -> bool:
        return object_id in self.entries

    def when_ready(self, object_id: bytes, callback: Callable[[bytes], None]) -> bool:
        """Call `callback(object_id)` once the value arrives. False if it is already here
        (or unknown), in which case nothing is registered."""
        entry = self.entries.get(object_id)
        if entry is None or entry.payload is not None:
            return False
        entry.on_ready.append(callback)
        return True

    def complete(self, object_id: bytes, payload: list, contained: list[bytes]) -> None:
        """The value arrived. Objects inside it stay alive as long as it does."""
        entry = self.entries.get(object_id)
        if entry is None:
            entry = self.entries[object_id] = ObjectEntry()
        elif entry.payload is not None:
            self._release_payload(entry, object_id)  # a retried task produced it again
        entry.payload = payload
        segment = payload_segment(payload)
        if segment is not None:
            entry.size = payload_size(payload)
            entry.spilled = entry.spilling = False
            self.memory_bytes += entry.size
            self.in_memory[object_id] = None
            if self._on_large is not None:
                self._on_large(object_id, True)
        if contained:
            self.pin_all(contained)
            entry.contained = contained
        # Waiters may finish tasks that drop the last other pin on this very object (a
        # failed argument fails its dependent, which unpins it): it stays pinned while they
        # run, so it is freed once, here, and never from under this call.
        callbacks, entry.on_ready = entry.on_ready, []
        entry.pins += 1
        for callback in callbacks:
            callback(object_id)
        entry.pins -= 1
        self._maybe_free(object_id, entry)

    def put(self, object_id: bytes, payload: list, contained: list[bytes], holder: int) -> None:
        self.entries[object_id] = ObjectEntry(holders={holder})
        self.complete(object_id, payload, contained)

    def add_holder(self, object_id: bytes, holder: int) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.holders.add(holder)

    def receive(self, object_id: bytes, holder: int) -> None:
        """`holder` received a ref to an object another node made: keep a placeholder
        that the fetched copy completes (or an error, if it cannot be fetched)."""
        self.entries[object_id] = ObjectEntry(holders={holder}, remote=True)

    def placeholder(self, object_id: bytes) -> None:
        """Another node's object that a value arriving here contains: its entry, pinned
        by that value, waits for a copy like `receive`'s."""
        self.entries[object_id] = ObjectEntry(remote=True)

    def remove_holder(self, object_id: bytes, holder: int) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.holders.discard(holder)
            self._maybe_free(object_id, entry)

    def drop_holder_everywhere(self, holder: int) -> None:
        """A process died: it holds nothing any more."""
        for object_id, entry in list(self.entries.items()):
            if holder in entry.holders:
                entry.holders.discard(holder)
                self._maybe_free(object_id, entry)

    def pin_all(self, object_ids: list[bytes]) -> None:
        for object_id in object_ids:
            entry = self.entries.get(object_id)
            if entry is not None:
                entry.pins += 1

    def unpin_all(self, object_ids: list[bytes]) -> None:
        for object_id in object_ids:
            entry = self.entries.get(object_id)
            if entry is not None:
                entry.pins -= 1
                self._maybe_free(object_id, entry)

    def _maybe_free(self, object_id: bytes, entry: ObjectEntry) -> None:
        """Free it if nothing needs it, and then what only it kept alive: a loop, not
        recursion, since a chain can be long (a streaming task's unread links)."""
        if entry.holders or entry.pins > 0 or entry.payload is None:
            return
        freeing = [(object_id, entry)]
        while freeing:
            object_id, entry = freeing.pop()
            if self.entries.get(object_id) is not entry:
                continue  # (contained twice by the same value: freed already)
            del self.entries[object_id]
            if self._on_large is not None and payload_segment(entry.payload) is not None:
                self._on_large(object_id, False)
            self._release_payload(entry, object_id)
            for inner_id in entry.contained:
                inner = self.entries.get(inner_id)
                if inner is not None:
                    inner.pins -= 1
                    if not (inner.holders or inner.pins > 0 or inner.payload is None):
                        freeing.append((inner_id, inner))
            if self._on_free is not None:
                self._on_free(object_id)

    def _release_payload(self, entry: ObjectEntry, object_id: bytes) -> None:
        segment = payload_segment(entry.payload)
        if segment is None:
            return
        if entry.spilled:
            assert self.delete_spilled is not None
            self.delete_spilled(segment)
        else:
            self._unlink(segment)
            self._forget_memory(entry, object_id)

    def _forget_memory(self, entry: ObjectEntry, object_id: bytes) -> None:
        """The entry's segment left shared memory (freed, replaced or spilled)."""
        if object_id in self.in_memory:
            del self.in_memory[object_id]
            self.memory_bytes -= entry.size

    # ---- spilling ----
    def touch(self, object_id: bytes) -> None:
        """The object was used: it is the last one to spill."""
        if object_id in self.in_memory:
            self.in_memory.move_to_end(object_id)

    def spill_candidates(self, cap: int) -> list[tuple[bytes, str]]:
        """(id, segment) of the least recently used objects to copy to disk so that
        shared memory falls under `cap` bytes: never one a task that may still run needs
        (pinned), never one already on its way."""
        excess = self.memory_bytes - cap - sum(
            self.entries[oid].size for oid in self.in_memory if self.entries[oid].spilling)
        chosen = []
        for object_id in self.in_memory:
            if excess <= 0:
                break
            entry = self.entries[object_id]
            if entry.spilling or entry.pins > 0:
                continue
            entry.spilling = True
            chosen.append((object_id, payload_segment(entry.payload)))
            excess -= entry.size
        return chosen

    def spilled(self, object_id: bytes, segment: str, ok: bool) -> str | None:
        """The copy of `segment` to the spill dir ended. Returns what to remove: the shared
        memory segment (the copy took), or None; `delete_spilled` gets a copy nobody needs
        (the object was freed or replaced meanwhile)."""
        entry = self.entries.get(object_id)
        current = entry is not None and payload_segment(entry.payload) == segment
        if not current:
            if ok:
                assert self.delete_spilled is not None
                self.delete_spilled(segment)
            return None
        entry.spilling = False
        if not ok:
            return None
        entry.spilled = True
        self._forget_memory(entry, object_id)
        return segment

    def validate(self) -> None:
        """Pins are never negative and nothing a live object contains has been freed."""
        for object_id, entry in self.entries.items():
            assert entry.pins >= 0, f"object {object_id.hex()} has {entry.pins} pins"
            for inner in entry.contained:
                assert inner in self.entries, (
                    f"object {inner.hex()} was freed while {object_id.hex()} contains it")
            in_memory = payload_segment(entry.payload or [None]) is not None and (
                not entry.spilled)
            assert in_memory == (object_id in self.in_memory), (
                f"object {object_id.hex()}: shared-memory bookkeeping is off")
        assert self.memory_bytes == sum(self.entries[oid].size for oid in self.in_memory)

    def clear(self) -> None:
        """Shutdown: release every segment (the spill dir goes as a whole)."""
        for object_id, entry in self.entries.items():
            if entry.payload is not None:
                self._release_payload(entry, object_id)
        self.entries.clear()
        self.in_memory.clear()
        self.memory_bytes = 0
