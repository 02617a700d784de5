"""Kademlia as a sans-IO state machine: lookups, stores, replication, hand-over.

`Dht` holds every rule and no I/O, like the membership core: the driver (or a test, or
the stepper) passes the time, hands it requests, replies and membership changes, and
drains `outbox` (queries to send, each with an id its reply or failure is reported
under), `finished` (operations that ended) and `next_deadline()`.

Operations, each started with an id and ended by one `Finished` in `finished`:
- `find_node(target)`: the k closest live nodes to a target;
- `find_value(key)`: the records under a key (our own store first, then a lookup);
- `publish(key, value)`: sign a record, store it on the k closest nodes (ourselves
  included when we are among them), and republish it every republish_interval until
  `withdraw(key)` replaces it with a signed tombstone.

Liveness comes from gossip: a contact leaves the routing table when membership says it
died or left, or when it fails the ping of a full bucket, never because one lookup query
timed out (the paper drops unresponsive contacts; with a failure detector beside it,
a slow answer under load is no reason to forget a live node).

Replication beyond the publisher's own republish:
- a node joining (gossip) receives the records it is now among the k closest for, from
  the node that was closest to each key (the paper's join rule, one sender per key);
- a node leaving or dying: for each key it was among the k closest for, the node now
  closest sends the key's records to the node that enters the k closest. Records the
  dead node published are dropped everywhere (its objects and actors died with it).
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from typing import Any

from p2pexec.dht.config import DhtConfig
from p2pexec.dht.lookup import Lookup, LookupResult, Want
from p2pexec.dht.messages import (
    KEY_SIZE,
    Contact,
    DhtPing,
    DhtPong,
    FindNode,
    FindValue,
    Nodes,
    Record,
    Store,
    Stored,
    Values,
)
from p2pexec.dht.records import RecordSigner, RecordStore
from p2pexec.dht.routing import RoutingTable, distance
from p2pexec.errors import LocalUsageError, RemoteProtocolError
from p2pexec.ids import NodeId

HANDOVER_BATCH = 256
"""Records per Store message of a hand-over."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Send `message` to `contact`; report its answer as `reply(query_id, ...)` or its
    failure (timeout, broken link) as `query_failed(query_id)`."""

    query_id: int
    contact: Contact
    message: Any


@dataclass(frozen=True, slots=True)
class Finished:
    """Operation `op_id` ended. `stored`: replicas a publish reached (ourselves
    included); `error`: why it failed, if it did (a value lookup that found nothing
    says so here)."""

    op_id: int
    result: LookupResult
    stored: int = 0
    error: str | None = None


@dataclass(slots=True)
class _Query:
    contact: Contact
    message: Any
    deadline: float
    op_id: int | None
    """The operation it serves (None: a ping or a hand-over store)."""


@dataclass(slots=True)
class _Operation:
    lookup: Lookup
    publish: Record | None = None
    """The record to store once the lookup found the k closest."""
    stores_out: int = 0
    stored: int = 0


class Dht:
    """One node's share of the DHT (see module docstring)."""

    def __init__(self, own: Contact, config: DhtConfig, rng: random.Random,
                 signer: RecordSigner | None = None, now: float = 0.0) -> None:
        if signer is not None and signer.node_id != own.node:
            raise LocalUsageError("the record signer's key is not this node's key")
        self.own = own
        self.config = config
        self.rng = rng
        self.signer = signer
        self.table = RoutingTable(own.node, config.k, now)
        self.store = RecordStore(config)
        self.outbox: list[Outgoing] = []
        self.finished: list[Finished] = []
        self.published: dict[bytes, Record] = {}
        """Our own live records, by key: republished every republish_interval."""
        self._seq = 0
        self._gone: dict[NodeId, float] = {}
        """Members gossip reported dead or left, until when their records are refused (a
        hand-over in flight must not bring them back)."""
        self._queries: dict[int, _Query] = {}
        self._ops: dict[int, _Operation] = {}
        self._ids = itertools.count(1)
        self._next_republish = now + config.republish_interval
        self._next_refresh = now + config.refresh_interval
        self._next_sweep = now + min(60.0, config.record_ttl / 10)

    # ---- membership (from gossip) ------------------------------------------------------

    def member_alive(self, contact: Contact, now: float) -> None:
        """Gossip says `contact` is a live member: route through it, and hand it the
        records it is now among the k closest for."""
        if contact.node == self.own.node:
            return
        self._gone.pop(contact.node, None)
        new = contact.node not in self.table
        self._seen(contact, now)
        if new and contact.node in self.table:
            self._hand_over_to(contact, now)

    def member_gone(self, node: NodeId, now: float) -> None:
        """Gossip says `node` died or left: forget it and its records, and top up the
        replicas of keys it held."""
        if node == self.own.node:
            return
        self._gone[node] = now + self.config.record_ttl
        before = {key: self._closest_with_self(key) for key in self.store.by_key}
        self.table.failed(node)
        self.store.drop_publisher(node)
        for key, group in before.items():
            if key not in self.store.by_key or not any(c.node == node for c in group):
                continue
            after = self._closest_with_self(key)
            if after and after[0].node == self.own.node:
                newcomers = [c for c in after if c not in group and c.node != self.own.node]
                for contact in newcomers:
                    self._send_records(contact, [key], now)

    # ---- requests from peers -----------------------------------------------------------

    def handle_request(self, sender: Contact, request: Any, now: float,
                       routable: bool = True) -> Any:
        """The answer to a peer's request (`sender` is the authenticated peer; not
        `routable` when its listening address is unknown, so it is not added to the
        routing table). `RemoteProtocolError` for a request the DHT does not take."""
        kind = type(request)
        if kind is FindNode:
            self._check_key(request.target)
            answer: Any = Nodes(self._reply_contacts(request.target, sender.node))
        elif kind is FindValue:
            self._check_key(request.key)
            answer = Values(self.store.get(request.key, now),
                            self._reply_contacts(request.key, sender.node))
        elif kind is Store:
            answer = self._accept_store(request, now)
        elif kind is DhtPing:
            answer = DhtPong()
        else:
            raise RemoteProtocolError(f"the DHT takes no {kind.__name__} request")
        if routable:
            self._seen(sender, now)
        return answer

    def _accept_store(self, request: Store, now: float) -> Stored:
        accepted = 0
        refused = []
        for record in request.records:
            reason = ("its publisher left the cluster" if record.publisher in self._gone
                      else self.store.put(record, request.ttl, now))
            if reason is None:
                accepted += 1
            else:
                refused.append(reason)
        return Stored(accepted, refused)

    # ---- operations --------------------------------------------------------------------

    def find_node(self, target: bytes, now: float) -> int:
        """Start a lookup of the k nodes closest to `target`; returns its op id."""
        return self._start(target, Want.NODES, now)

    def find_value(self, key: bytes, now: float) -> int:
        """Start a lookup of the records under `key` (answered at once from our own
        store when it holds any); returns its op id."""
        held = self.store.get(key, now)
        if held:
            op_id = next(self._ids)
            self.finished.append(Finished(op_id, LookupResult(
                key, Want.VALUE, (), tuple(held), 0, 0, 0, False)))
            return op_id
        return self._start(key, Want.VALUE, now)

    def publish(self, key: bytes, value: bytes, now: float) -> int:
        """Sign `value` under `key` as ours and store it on the k closest nodes; it is
        republished until withdrawn. Returns the op id of this first store."""
        if self.signer is None:
            raise LocalUsageError("this DHT node has no key to sign records with")
        if not value:
            raise LocalUsageError("a record value must not be empty (withdraw() removes)")
        if len(key) != KEY_SIZE:
            raise LocalUsageError(f"a DHT key is {KEY_SIZE} bytes, got {len(key)}")
        if len(value) > self.config.max_record_value:
            raise LocalUsageError(f"a record value holds at most "
                                  f"{self.config.max_record_value} bytes, got {len(value)}")
        self._seq += 1
        record = self.signer.sign(key, self._seq, value)
        self.published[key] = record
        return self._start(key, Want.NODES, now, publish=record)

    def withdraw(self, key: bytes, now: float) -> int | None:
        """Stop publishing under `key` and replace the stored copies with a tombstone;
        the op id of that store, or None if we published nothing there."""
        if key not in self.published:
            return None
        del self.published[key]
        self._seq += 1
        assert self.signer is not None  # we published, so we sign
        return self._start(key, Want.NODES, now, publish=self.signer.sign(key, self._seq, b""))

    def _start(self, target: bytes, want: Want, now: float,
               publish: Record | None = None) -> int:
        op_id = next(self._ids)
        lookup = Lookup(target, want, self.own.node, self.config.k, self.config.alpha,
                        now + self.config.lookup_deadline)
        lookup.add(self.table.closest(target, self.config.k), 1)
        self.table.used(target, now)
        self._ops[op_id] = _Operation(lookup, publish)
        self._advance(op_id, now)
        return op_id

    # ---- replies -----------------------------------------------------------------------

    def reply(self, query_id: int, answer: Any, now: float) -> None:
        """The answer to query `query_id` arrived. A wrongly shaped answer counts as a
        failure of that peer."""
        query = self._queries.pop(query_id, None)
        if query is None:
            return  # late: it had already timed out
        expected = {FindNode: Nodes, FindValue: Values, Store: Stored, DhtPing: DhtPong}
        if type(answer) is not expected[type(query.message)]:
            self._failed(query, now)
            return
        self._seen(query.contact, now)
        if type(answer) is DhtPong:
            self.table.ping_answered(query.contact.node)
            return
        op = self._ops.get(query.op_id) if query.op_id is not None else None
        if op is None:
            return
        if type(answer) is Stored:
            op.stores_out -= 1
            op.stored += answer.accepted > 0
        else:
            contacts = answer.contacts[:self.config.max_contacts_per_reply]
            records = answer.records if type(answer) is Values else []
            op.lookup.answered(query.contact.node, contacts, records)
        self._advance(query.op_id, now)

    def query_failed(self, query_id: int, now: float) -> None:
        """Query `query_id` could not be answered (no connection, broken link)."""
        query = self._queries.pop(query_id, None)
        if query is not None:
            self._failed(query, now)

    def _failed(self, query: _Query, now: float) -> None:
        """A query went unanswered. Only a failed ping evicts the contact: gossip is
        what declares nodes dead, and a lookup timeout under load is not a death."""
        node = query.contact.node
        if type(query.message) is DhtPing and self.table.bucket_of(node).pinging == node:
            self.table.failed(node)  # (if it spoke meanwhile, that answered the ping)
        op = self._ops.get(query.op_id) if query.op_id is not None else None
        if op is None:
            return
        if type(query.message) is Store:
            op.stores_out -= 1
        else:
            op.lookup.failed(node)
        self._advance(query.op_id, now)

    def _advance(self, op_id: int, now: float) -> None:
        """Send what the operation needs next, or finish it."""
        op = self._ops[op_id]
        lookup = op.lookup
        if not lookup.done:
            message = FindValue(lookup.target) if lookup.want is Want.VALUE else FindNode(
                lookup.target)
            for contact in lookup.want_queries():
                self._query(contact, message, now, op_id)
            return
        result = lookup.result()
        if op.publish is not None:
            targets = self._store_targets(result)
            op.publish, record = None, op.publish
            for contact in targets:
                if contact.node == self.own.node:
                    op.stored += self.store.put(record, self.config.record_ttl, now) is None
                else:
                    op.stores_out += 1
                    self._query(contact, Store([record], self.config.record_ttl), now, op_id)
        if op.stores_out:
            return
        del self._ops[op_id]
        error = None
        if lookup.want is Want.VALUE and not result.records:
            key = lookup.target.hex()[:16]
            if result.timed_out:
                error = f"no record under key {key}... found before the lookup deadline"
            elif result.failed and not result.contacts:
                error = (f"no record under key {key}...: none of the {result.failed} nodes "
                         f"asked answered")
            else:
                error = (f"no record under key {key}... on the {len(result.contacts)} "
                         f"closest nodes")
        self.finished.append(Finished(op_id, result, op.stored, error))

    def _store_targets(self, result: LookupResult) -> list[Contact]:
        """The k closest to the key among those that answered and ourselves."""
        everyone = [*result.contacts, self.own]
        everyone.sort(key=lambda c: distance(c.node.raw, result.target))
        return everyone[:self.config.k]

    # ---- time --------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Time moved: time out queries and lookups, expire records, republish, refresh."""
        for query_id in [q for q, query in self._queries.items() if query.deadline <= now]:
            self.query_failed(query_id, now)
        for op_id, op in list(self._ops.items()):
            if not op.lookup.done and op.lookup.deadline <= now:
                op.lookup.expire()
                self._advance(op_id, now)
        if now >= self._next_sweep:
            self._next_sweep = now + min(60.0, self.config.record_ttl / 10)
            self.store.expire(now)
            for node in [n for n, until in self._gone.items() if until <= now]:
                del self._gone[node]
        if now >= self._next_republish:
            self._next_republish = now + self.config.republish_interval
            for key, record in list(self.published.items()):
                self._start(key, Want.NODES, now, publish=record)
        if now >= self._next_refresh:
            self._next_refresh = now + self.config.refresh_interval
            for target in self.table.to_refresh(now, self.config.refresh_interval, self.rng):
                self._start(target, Want.NODES, now)

    def next_deadline(self) -> float:
        """When `tick` has something to do next."""
        deadlines = [self._next_sweep, self._next_republish, self._next_refresh]
        deadlines += [query.deadline for query in self._queries.values()]
        deadlines += [op.lookup.deadline for op in self._ops.values() if not op.lookup.done]
        return min(deadlines)

    # ---- helpers -----------------------------------------------------------------------

    def _query(self, contact: Contact, message: Any, now: float, op_id: int | None) -> None:
        timeout = self.config.ping_timeout if type(message) is DhtPing else (
            self.config.query_timeout)
        query_id = next(self._ids)
        self._queries[query_id] = _Query(contact, message, now + timeout, op_id)
        self.outbox.append(Outgoing(query_id, contact, message))

    def _seen(self, contact: Contact, now: float) -> None:
        oldest = self.table.seen(contact, now)
        if oldest is not None:
            self._query(oldest, DhtPing(), now, None)

    def _reply_contacts(self, target: bytes, asker: NodeId) -> list[Contact]:
        """Our closest contacts to `target`, ourselves included, never the asker."""
        contacts = self.table.closest(target, self.config.k, exclude=asker)
        self._insert_self(contacts, target)
        return contacts[:self.config.max_contacts_per_reply]

    def _closest_with_self(self, key: bytes) -> list[Contact]:
        contacts = self.table.closest(key, self.config.k)
        self._insert_self(contacts, key)
        return contacts[:self.config.k]

    def _insert_self(self, contacts: list[Contact], target: bytes) -> None:
        """Put ourselves into `contacts` (closest to `target` first, as `closest` returns
        them) at our place by distance: the table never holds our own id, so no tie."""
        key = int.from_bytes(target, "big")
        at = bisect.bisect(contacts, distance(self.own.node.raw, target),
                           key=lambda c: int.from_bytes(c.node.raw, "big") ^ key)
        contacts.insert(at, self.own)

    def _hand_over_to(self, newcomer: Contact, now: float) -> None:
        """Send `newcomer` the records of every key it is now among the k closest for,
        where we are the closest other node (so each key is sent by one node)."""
        keys = []
        for key in self.store.by_key:
            group = self._closest_with_self(key)
            others = [c for c in group if c.node != newcomer.node]
            if others and others[0].node == self.own.node and any(
                    c.node == newcomer.node for c in group):
                keys.append(key)
        self._send_records(newcomer, keys, now)

    def _send_records(self, contact: Contact, keys: list[bytes], now: float) -> None:
        entries = [entry for key in keys for entry in self.store.entries(key)
                   if entry.expires > now]
        for start in range(0, len(entries), HANDOVER_BATCH):
            batch = entries[start:start + HANDOVER_BATCH]
            ttl = min(entry.expires for entry in batch) - now
            self._query(contact, Store([entry.record for entry in batch], ttl), now, None)

    @staticmethod
    def _check_key(key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise RemoteProtocolError(f"a DHT key is {KEY_SIZE} bytes, got {len(key)}")

    def validate(self) -> None:
        """Invariants of the whole core (tests call it after every step)."""
        self.table.validate()
        self.store.validate()
        for op in self._ops.values():
            assert op.stores_out >= 0
        for query in self._queries.values():
            assert query.contact.node != self.own.node, "a node never queries itself"
