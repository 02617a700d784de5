"""Objects lent and borrowed between nodes: Ray's borrowing protocol with nodes, not
worker processes, as owners and borrowers. Sans-IO.

A process that receives a ref to an object another node owns (inside a value, or as a
task's result from a peer) makes its node a **borrower**: the node keeps a placeholder
entry for the object, asks the node it got the ref from (the **lender**: the owner named
in the ref, or the peer whose result contained it) with `Borrow`, and completes the
placeholder with the value the lender sends (`Lend`: small values inline, large ones by
fetching from it). When the placeholder is freed here (no local process holds the ref,
no local object contains it) the borrower says so with `Release`.

The lender counts each borrowing node as one holder of the object (a peer holder), so
the object lives while any node borrows it; a borrower that dies lets go of it with
everything else it held. A borrower whose lender dies fails the placeholders still
waiting with `OwnerDiedError` (Ray's rule); values already here stay usable.

Both sides count lends per (borrower, object): the lender each time it holds the object
for B (answering a borrow, or sending B a value that contains a ref to it), the borrower
each time it asks or receives such a value. A release says how many lends it gives back,
and the lender lets go only when none is left. So a release that crosses a new value
containing the same ref (B let go while the lender was sending it again) does not free
the object under the new ref. The invariant, modulo messages in flight: the lender's
count for (B, X) is the borrower's, and it holds X for B exactly while that is not zero.

A borrow from a lender whose last answer here named a large object also starts fetching
it from that lender at once (`Prefetch`), so the borrow's round trip overlaps the
transfer instead of preceding it (~2 ms of a ~17 ms get of 16 MiB). It is only a guess:
the borrow goes as always and counts as always; a copy the prefetch brings completes the
placeholder like a fetched one, and when it brings none the answer decides (a fetch, if
it says the object is large, now or once the prefetch has ended).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from p2pexec import errors
from p2pexec.exec.instructions import (
    Borrow,
    Completed,
    Fetch,
    Instruction,
    Lend,
    Prefetch,
    Release,
    Unlink,
)
from p2pexec.exec.objects import ObjectTable
from p2pexec.exec.serialization import payload_segment, system_error_payload


class Loans:
    """What this node borrowed from peers and lent to them (see the module doc).
    Appends instructions to `out`; `holder_of(node)` is a peer's holder id."""

    def __init__(self, objects: ObjectTable, out: list[Instruction],
                 holder_of: Callable[[bytes], int]) -> None:
        self.objects = objects
        self._out = out
        self._holder_of = holder_of
        self.lenders: dict[bytes, bytes] = {}
        """Objects this node has entries for that it borrowed, by the node it asked."""
        self.received: dict[bytes, dict[bytes, int]] = {}
        """Per borrowed object, per node that lent it here: lends to give back on free."""
        self.lent: dict[tuple[bytes, bytes], int] = {}
        """Per (borrower, object) this node holds for a peer: lends not given back yet."""
        self.large_from: set[bytes] = set()
        """Lenders whose last answer here named a large object: a borrow from one of them
        prefetches (the next object it lends is likely large too)."""
        self.prefetching: dict[bytes, bool] = {}
        """Objects with a prefetch in flight; True once the lender's answer said to fetch
        the object (fetched the usual way if the prefetch brings no copy)."""

    # ---- the borrower ----
    def borrow(self, object_id: bytes, lender: bytes) -> None:
        """A placeholder for `object_id` was made here: ask `lender` for it."""
        self.lenders[object_id] = lender
        self._count(object_id, lender)
        self._out.append(Borrow(lender, (object_id,)))
        if lender in self.large_from and object_id not in self.prefetching:
            self.prefetching[object_id] = False
            self._out.append(Prefetch(object_id, lender))

    def _count(self, object_id: bytes, lender: bytes) -> None:
        per_lender = self.received.setdefault(object_id, {})
        per_lender[lender] = per_lender.get(lender, 0) + 1

    def adopt(self, lender: bytes, contained: list[bytes]) -> None:
        """A value `lender` sent contains these refs, which it holds for this node (one
        lend each). Unknown ones become placeholders (the value pins them), borrowed from
        `lender`; a borrowed one counts the lend, to give back when it is freed. One this
        node has for another reason (it owns it, or holds a copy) gives the lend back now."""
        objects = self.objects
        back = []
        for object_id in contained:
            if not objects.known(object_id):
                objects.placeholder(object_id)
                self._count(object_id, lender)
                self.borrow(object_id, lender)
            elif object_id in self.lenders:
                self._count(object_id, lender)
            else:
                back.append(object_id)
        if back:
            self._out.append(Release(lender, tuple(back)))

    def answered(self, lender: bytes, values: dict[bytes, list], large: list[bytes]
                 ) -> bool:
        """The lender's answer: values to complete placeholders with, large objects to
        fetch from it. True if a placeholder got its value (tasks may be ready)."""
        completed = []
        for object_id, payload in values.items():
            if self._waiting(object_id, lender):
                completed.append(object_id)
                self.objects.complete(object_id, payload, [])
        for object_id in large:
            if not self._waiting(object_id, lender):
                continue
            if object_id in self.prefetching:  # fetched once the prefetch ends, if need be
                self.prefetching[object_id] = True
            else:
                self._out.append(Fetch(object_id, lender))
        if large:
            self.large_from.add(lender)
        elif values:
            self.large_from.discard(lender)
        if completed:
            self._out.append(Completed(tuple(completed)))
        return bool(completed)

    def prefetched(self, object_id: bytes, lender: bytes, payload: list | None) -> bool:
        """A prefetch from `lender` ended. Its copy completes the placeholder (True); a
        copy nobody waits for any more is deleted. Without a copy, a fetch follows if the
        lender's answer already said the object is large; else that answer decides."""
        answered_large = self.prefetching.pop(object_id, False)
        waiting = self._waiting(object_id, lender)
        if payload is None:
            if answered_large and waiting:
                self._out.append(Fetch(object_id, lender))
            return False
        if not waiting:
            self._out.append(Unlink(payload_segment(payload)))
            return False
        self._out.append(Completed((object_id,)))
        self.objects.complete(object_id, payload, [])
        return True

    def _waiting(self, object_id: bytes, lender: bytes) -> bool:
        """Borrowed from `lender` and still without a value (else a stray answer)."""
        entry = self.objects.entries.get(object_id)
        return (self.lenders.get(object_id) == lender and entry is not None
                and entry.payload is None)

    def freed(self, object_id: bytes) -> None:
        """The object table freed `object_id`: if it was borrowed, give every lend back."""
        self.lenders.pop(object_id, None)
        for lender, count in self.received.pop(object_id, {}).items():
            self._out.append(Release(lender, (object_id,), () if count == 1 else (count,)))

    def lender_gone(self, node: bytes) -> bool:
        """`node` died or left: what this node borrowed from it and has no value for
        fails with OwnerDiedError. True if any did."""
        lost = [oid for oid, lender in self.lenders.items() if lender == node]
        error = system_error_payload(errors.OwnerDiedError(
            f"the node that owns this object ({node.hex()[:12]}) died or left before "
            f"its value reached this node"))
        failed = [oid for oid in lost if self._waiting(oid, node)]
        for object_id in lost:
            del self.lenders[object_id]
            if object_id in self.prefetching:  # its prefetch serves no answered borrow
                self.prefetching[object_id] = False
        self.large_from.discard(node)
        for per_lender in self.received.values():
            per_lender.pop(node, None)
        for object_id in failed:
            self.objects.complete(object_id, error, [])
        if failed:
            self._out.append(Completed(tuple(failed)))
        return bool(failed)

    # ---- the lender ----
    def lend(self, borrower: bytes, object_ids: list[bytes]) -> None:
        """`borrower` holds refs to these objects: hold them for it and send their
        values now or as soon as they arrive."""
        holder = self._holder_of(borrower)
        objects = self.objects
        values: dict[bytes, list] = {}
        large: list[bytes] = []
        for object_id in object_ids:
            entry = objects.entries.get(object_id)
            if entry is None:
                values[object_id] = system_error_payload(errors.ObjectLostError(
                    f"object {object_id.hex()} was freed on the node that owns it before "
                    f"a borrowing node asked for it"))
                continue
            entry.holders.add(holder)
            self._lent_once(borrower, object_id)
            if entry.payload is None:
                objects.when_ready(object_id, partial(self._send_when_ready, borrower))
            elif payload_segment(entry.payload) is None:
                values[object_id] = entry.payload
            else:
                large.append(object_id)
        if values or large:
            self._out.append(Lend(borrower, values, tuple(large)))

    def _send_when_ready(self, borrower: bytes, object_id: bytes) -> None:
        payload = self.objects.payload(object_id)  # called as the value arrives
        if payload_segment(payload) is None:
            self._out.append(Lend(borrower, {object_id: payload}, ()))
        else:
            self._out.append(Lend(borrower, {}, (object_id,)))

    def lent_with_result(self, borrower: bytes, contained: list[list[bytes]] | None) -> None:
        """This node sends `borrower` values that contain these refs: it holds the ones
        this node knows for `borrower` until it releases them (`adopt` on its side)."""
        holder = self._holder_of(borrower)
        for inner in contained or ():
            for object_id in inner:
                if self.objects.known(object_id):
                    self.objects.add_holder(object_id, holder)
                    self._lent_once(borrower, object_id)

    def _lent_once(self, borrower: bytes, object_id: bytes) -> None:
        key = (borrower, object_id)
        self.lent[key] = self.lent.get(key, 0) + 1

    def given_back(self, borrower: bytes, object_id: bytes, count: int) -> bool:
        """`borrower` gave back `count` lends of `object_id`: True when none is left (its
        hold may go). A hold that was never a lend (a large result kept for its owner)
        goes at once."""
        key = (borrower, object_id)
        left = self.lent.pop(key, 0) - count
        if left > 0:
            self.lent[key] = left
            return False
        return True

    def borrower_gone(self, borrower: bytes) -> None:
        """`borrower` died or left: what it borrowed is let go with its holds."""
        for key in [key for key in self.lent if key[0] == borrower]:
            del self.lent[key]

    def validate(self) -> None:
        """Every borrowed object still has its entry here (freeing it forgets the loan), a
        prefetch a fetch waits for serves a borrow, and every lend counted here is of an
        object still held for that borrower."""
        for object_id in self.lenders:
            assert self.objects.known(object_id), (
                f"borrowed object {object_id.hex()} was freed without releasing it")
        for object_id, answered_large in self.prefetching.items():
            assert not answered_large or object_id in self.lenders, (
                f"object {object_id.hex()} waits for its prefetch but is not borrowed")
        for (borrower, object_id), count in self.lent.items():
            entry = self.objects.entries.get(object_id)
            assert count > 0 and entry is not None and self._holder_of(borrower) in \
                entry.holders, f"lent object {object_id.hex()} is not held for its borrower"
