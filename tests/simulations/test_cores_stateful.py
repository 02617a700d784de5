"""Gossip and DHT cores of a few nodes together, under random message orders, drops,
duplicates, crashes and restarts; every core's invariants checked after every step.

The machine is the network and the nodes' drivers at once: messages the cores send wait
in flight until a rule delivers one (any one: order is the machine's choice), drops or
duplicates it; time moves in random steps and wakes the cores that are due. Membership
events feed each node's DHT as `p2pexec.cluster` does. After every step each live
node's `Membership.validate()` and `Dht.validate()` must hold and no input may raise.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pexec.dht.config import DhtConfig
from p2pexec.dht.core import Dht
from p2pexec.dht.messages import Contact
from p2pexec.dht.records import RecordSigner
from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.core import EventKind, Membership
from p2pexec.gossip.messages import PushPull

NODES = 4
GOSSIP = GossipConfig.local()
DHT = dataclasses.replace(DhtConfig(), k=3, alpha=2, query_timeout=0.5, lookup_deadline=2.0,
                          republish_interval=20.0, record_ttl=60.0, refresh_interval=30.0)
KEYS = [bytes([i]) * 32 for i in range(3)]


@dataclasses.dataclass
class Flight:
    """A message in flight: what kind, to whom, from whom, and its payload."""

    kind: str  # "datagram" | "push" | "pull" | "query" | "answer"
    to: int
    source: int
    payload: Any
    life: int
    """The receiver's life it was sent to (answers to a dead process are dropped)."""


class CoresMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.rng = random.Random(7)
        keys = [ed25519.Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32)
                for i in range(NODES)]
        self.signers = [RecordSigner(key) for key in keys]
        self.addresses = [(f"node{i}", 7946) for i in range(NODES)]
        self.by_address = {a: i for i, a in enumerate(self.addresses)}
        self.by_id = {s.node_id: i for i, s in enumerate(self.signers)}
        self.up = [True] * NODES
        self.lives = [0] * NODES
        self.gossip: list[Membership] = []
        self.dht: list[Dht] = []
        self.flights: list[Flight] = []
        for i in range(NODES):
            self.gossip.append(self._new_gossip(i))
            self.dht.append(self._new_dht(i))
        for i in range(1, NODES):
            self.gossip[i].join([self.addresses[0]], self.now)
            self._drain(i)

    def _new_gossip(self, i: int) -> Membership:
        return Membership(self.signers[i].node_id, self.addresses[i], GOSSIP,
                          random.Random(self.rng.getrandbits(32)), name=f"node{i}",
                          resources={"CPU": 2.0})

    def _new_dht(self, i: int) -> Dht:
        contact = Contact(self.signers[i].node_id, self.addresses[i])
        return Dht(contact, DHT, random.Random(self.rng.getrandbits(32)), self.signers[i],
                   now=self.now)

    def _drain(self, i: int) -> None:
        """What a node's drivers do after its cores ran: send, and feed events on."""
        gossip, dht = self.gossip[i], self.dht[i]
        for event in gossip.events():
            other = self.by_id.get(event.member.node_id)
            if event.member.is_self or other is None:
                continue
            if event.kind in (EventKind.JOINED, EventKind.UPDATED, EventKind.ALIVE):
                dht.member_alive(Contact(event.member.node_id, event.member.address),
                                 self.now)
            elif event.kind in (EventKind.FAILED, EventKind.LEFT):
                dht.member_gone(event.member.node_id, self.now)
        for send in gossip.outbox():
            to = self.by_address.get(send.to)
            if to is None:
                continue
            if send.stream:
                self.flights.append(Flight("push", to, i, send.msgs[0], self.lives[to]))
            else:
                self.flights.append(Flight("datagram", to, i, send.msgs, self.lives[to]))
        for out in dht.outbox:
            to = self.by_id[out.contact.node]
            self.flights.append(Flight("query", to, i, (self.lives[i], out.query_id,
                                                        out.message), self.lives[to]))
        dht.outbox.clear()
        dht.finished.clear()

    # ---- the network -------------------------------------------------------------------

    @precondition(lambda self: self.flights)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        flight = self.flights.pop(data.draw(st.integers(0, len(self.flights) - 1)))
        to = flight.to
        if not self.up[to] or flight.life != self.lives[to]:
            return
        source = self.addresses[flight.source]
        if flight.kind == "datagram":
            for msg in flight.payload:
                self.gossip[to].receive(source, msg, self.now)
        elif flight.kind == "push":
            reply = self.gossip[to].handle_push_pull(source, flight.payload, self.now)
            self.flights.append(Flight("pull", flight.source, to, reply,
                                       self.lives[flight.source]))
        elif flight.kind == "pull":
            assert isinstance(flight.payload, PushPull)
            self.gossip[to].receive(source, flight.payload, self.now)
        elif flight.kind == "query":
            asker_life, query_id, message = flight.payload
            sender = Contact(self.signers[flight.source].node_id, source)
            answer = self.dht[to].handle_request(sender, message, self.now)
            self.flights.append(Flight("answer", flight.source, to, (query_id, answer),
                                       asker_life))
        else:
            query_id, answer = flight.payload
            self.dht[to].reply(query_id, answer, self.now)
        self._drain(to)

    @precondition(lambda self: self.flights)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.flights.pop(data.draw(st.integers(0, len(self.flights) - 1)))

    @precondition(lambda self: self.flights)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        flight = self.flights[data.draw(st.integers(0, len(self.flights) - 1))]
        if flight.kind == "datagram":  # streams never duplicate
            self.flights.append(dataclasses.replace(flight))

    @rule(dt=st.sampled_from([0.01, 0.1, 0.5, 2.0, 10.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        for i in range(NODES):
            if not self.up[i]:
                continue
            due = self.gossip[i].next_deadline()
            if due is not None and due <= self.now:
                self.gossip[i].tick(self.now)
            if self.dht[i].next_deadline() <= self.now:
                self.dht[i].tick(self.now)
            self._drain(i)

    # ---- faults and workload -----------------------------------------------------------

    @precondition(lambda self: sum(self.up) > 1)
    @rule(i=st.integers(0, NODES - 1))
    def crash(self, i: int) -> None:
        self.up[i] = False

    @rule(i=st.integers(0, NODES - 1), seed=st.integers(0, NODES - 1))
    def restart(self, i: int, seed: int) -> None:
        """A fresh process with the same key, joining through `seed`."""
        self.up[i] = True
        self.lives[i] += 1
        self.gossip[i] = self._new_gossip(i)
        self.dht[i] = self._new_dht(i)
        self.gossip[i].join([self.addresses[seed]], self.now)
        self._drain(i)

    @precondition(lambda self: any(self.up))
    @rule(i=st.integers(0, NODES - 1))
    def leave(self, i: int) -> None:
        if self.up[i]:
            self.gossip[i].leave(self.now)
            self._drain(i)

    @rule(i=st.integers(0, NODES - 1), key=st.sampled_from(KEYS), lookup=st.booleans())
    def dht_operation(self, i: int, key: bytes, lookup: bool) -> None:
        if not self.up[i]:
            return
        if lookup:
            self.dht[i].find_value(key, self.now)
        else:
            self.dht[i].publish(key, b"value of node %d" % i, self.now)
        self._drain(i)

    @invariant()
    def cores_are_consistent(self) -> None:
        for i in range(NODES):
            if self.up[i]:
                self.gossip[i].validate()
                self.dht[i].validate()


CoresMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=80,
                                          deadline=None)
test_gossip_and_dht_cores_together = CoresMachine.TestCase
