"""ObjectRef, the ids behind it, and the per-process reference counts that free objects.

Every process that holds at least one `ObjectRef` to an object counts once at the
object's owner. A process tells the owner when its local count for an id goes 1 -> 0
(release) and, for refs it received inside a value or arguments, when it goes 0 -> 1
(acquire). Refs a process made itself (`.remote()` results, `put`) are counted by the
owner when it sees the submit or put, so the hot path sends no extra message.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (asyncio and futures load only where refs are awaited: workers
    import concurrent.futures  # start faster without them)

_INDEX = struct.Struct(">I")


class IdGenerator:
    """Task ids: 12 random bytes per process plus a counter. Object ids: task id + index."""

    def __init__(self, prefix: bytes | None = None) -> None:
        self._prefix = prefix if prefix is not None else os.urandom(12)
        self._counter = itertools.count(1)

    def task_id(self) -> bytes:
        return self._prefix + _INDEX.pack(next(self._counter) & 0xFFFFFFFF)


TASK_ID_SIZE = 16
OBJECT_ID_SIZE = TASK_ID_SIZE + _INDEX.size
"""An object id: its task's id and the index of the value (0: `put`)."""


def return_id(task_id: bytes, index: int) -> bytes:
    """The id of a task's `index`-th return value (0 is used by `put`)."""
    return task_id + _INDEX.pack(index)


def stream_link(task_id: bytes, index: int) -> bytes:
    """The `index`-th link of a streaming task: says whether item `index` exists (its
    value pins the item and the next link); link 0 is the task's declared return."""
    return return_id(task_id, 2 * index + 1)


def stream_item(task_id: bytes, index: int) -> bytes:
    """The `index`-th value a streaming task yielded."""
    return return_id(task_id, 2 * index + 2)


def task_of(object_id: bytes) -> bytes:
    return object_id[:TASK_ID_SIZE]


class RefCounter:
    """Counts live ObjectRefs per id in this process and reports transitions.

    With `report`, each transition is reported at once as {object_id: +1 | -1}, called
    under no lock from whichever thread dropped the ref (ObjectRef.__del__ runs wherever
    the last reference dies). Without it, transitions wait for `take_pending`.
    """

    def __init__(self, report: Callable[[dict[bytes, int]], None] | None) -> None:
        self._counts: dict[bytes, int] = {}
        self._pending: dict[bytes, int] = {}
        self._owners: dict[bytes, bytes] = {}
        """Owners of the refs this process received from elsewhere (and still holds): what
        its node needs to borrow them from the node that owns them."""
        self._report = report
        self._batch = report is None
        self._lock = threading.Lock()

    def incref(self, object_id: bytes, announce: bool, owner: bytes = b"") -> None:
        with self._lock:
            count = self._counts.get(object_id, 0)
            self._counts[object_id] = count + 1
            if count or not announce:
                return
            if owner:
                self._owners[object_id] = owner
            self._add_pending(object_id, 1)
        if not self._batch:
            self.flush()

    def decref(self, object_id: bytes) -> None:
        with self._lock:
            count = self._counts.get(object_id, 0) - 1
            if count > 0:
                self._counts[object_id] = count
                return
            self._counts.pop(object_id, None)
            if self._owners:
                self._owners.pop(object_id, None)
            self._add_pending(object_id, -1)
        if not self._batch:
            self.flush()

    def _add_pending(self, object_id: bytes, delta: int) -> None:
        total = self._pending.get(object_id, 0) + delta
        if total:
            self._pending[object_id] = total
        else:
            del self._pending[object_id]

    def take_pending(self) -> dict[bytes, int]:
        """The transitions not yet reported, net of those that cancel out."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def owners_of(self, taken: dict[bytes, int]) -> dict[bytes, bytes]:
        """The owners of the received refs among `taken` (sent along with them)."""
        if not self._owners:
            return {}
        with self._lock:
            owners = self._owners
            return {oid: owners[oid] for oid in taken if oid in owners}

    def flush(self) -> None:
        pending = self.take_pending()
        if pending and self._report is not None:
            self._report(pending)



class _Collector(threading.local):
    ids: list[bytes] | None = None


collector = _Collector()
"""While a value is pickled, the ids of the ObjectRefs inside it are noted here."""

counter: RefCounter | None = None
"""This process's counter, installed by the runtime (driver or worker) that owns it."""


def install_counter(new: RefCounter | None) -> None:
    global counter
    counter = new


future_of: Callable[[ObjectRef], concurrent.futures.Future] | None = None
"""Makes `ObjectRef.future()`: installed by the API, which knows how to get a value."""


class ObjectRef:
    """A future for a value owned by the node that created it; pass it to tasks or `get` it.

    `owner` is the raw id of that node: what a peer needs to find the object's metadata."""

    __slots__ = ("__weakref__", "id", "owner")

    def __init__(self, object_id: bytes, owner: bytes = b"", *, announce: bool = False
                 ) -> None:
        self.id = object_id
        self.owner = owner
        if counter is not None:
            counter.incref(object_id, announce, owner)

    def __del__(self) -> None:
        current = counter
        if current is not None:
            try:
                current.decref(self.id)
            except Exception:  # interpreter shutdown: the owner is going away too
                return

    def __reduce__(self):
        ids = collector.ids
        if ids is not None:
            ids.append(self.id)
        return (_received_ref, (self.id, self.owner))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def hex(self) -> str:
        return self.id.hex()

    def future(self) -> concurrent.futures.Future:
        """A `concurrent.futures.Future` of the value (or the task's error), as Ray's."""
        if future_of is None:
            raise RuntimeError("p2pexec's API is not loaded: import p2pexec first")
        return future_of(self)

    def __await__(self) -> Generator[Any, None, Any]:
        """`await ref` in asyncio code gets the value without blocking the event loop."""
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()

    def __repr__(self) -> str:
        return f"ObjectRef({self.id.hex()})"


class DynamicObjectRefGenerator:
    """What a `num_returns="dynamic"` task's ref resolves to: the refs of the values its
    generator yielded, in order (Ray's). If the generator raised part way, the values
    before stay and one last ref raises the error."""

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = refs

    def __iter__(self) -> Iterator[ObjectRef]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"


def _received_ref(object_id: bytes, owner: bytes = b"") -> ObjectRef:
    return ObjectRef(object_id, owner, announce=True)


def owners_of(taken: dict[bytes, int]) -> dict[bytes, bytes]:
    """The owners of the received refs among `taken`, by this process's counter."""
    current = counter
    return {} if current is None else current.owners_of(taken)
