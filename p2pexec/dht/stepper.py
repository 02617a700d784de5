"""A deterministic discrete-event runner of many `Dht` cores: no trio, no sockets.

It plays the driver's role for N cores at once: each query is delivered after a latency
(with jitter and random loss) to the target core's `handle_request`, and the answer
travels back to the asker's `reply`; a query to a crashed node is simply never answered
(the asker's timeout decides). Membership is simulated the way gossip feeds a node:
each node starts knowing `view` random others, joins with a lookup of its own id, and
learns of a crash `detect_after` seconds later (or never, with None). Every random
choice comes from one seeded `random.Random`, and the trace digest hashes every
delivery, so a run replays exactly. Used by the tests and `simulations/dht_figures.py`.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from p2pexec.dht.config import DhtConfig
from p2pexec.dht.core import Dht, Finished
from p2pexec.dht.messages import Contact
from p2pexec.dht.records import RecordSigner
from p2pexec.net.codec import Codec
from p2pexec.net.config import CodecLimits


@dataclass
class StepNode:
    index: int
    contact: Contact
    core: Dht
    up: bool = True
    finished: dict[int, Finished] = field(default_factory=dict)
    wake: float | None = None
    bytes_sent: int = 0


_WAKE, _REQUEST, _REPLY, _GONE = range(4)


class DhtStepper:
    """N DHT cores on a simulated LAN. Times are seconds from 0."""

    def __init__(self, n: int, config: DhtConfig | None = None, *, seed: int = 0,
                 view: int = 30, latency: float = 0.0005, jitter: float = 0.0005,
                 loss: float = 0.0, detect_after: float | None = 2.0,
                 count_bytes: bool = False) -> None:
        self.config = config or DhtConfig()
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency, self.jitter, self.loss = latency, jitter, loss
        self.detect_after = detect_after
        self.codec = Codec(CodecLimits()) if count_bytes else None
        self.messages = 0
        self._trace = hashlib.sha256()
        self._heap: list[tuple[float, int, int, tuple]] = []
        self._counter = itertools.count()
        self.nodes: list[StepNode] = []
        for index in range(n):
            key = ed25519.Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))
            signer = RecordSigner(key)
            contact = Contact(signer.node_id, (f"node{index}", 7946))
            core = Dht(contact, self.config, random.Random(self.rng.getrandbits(64)), signer)
            self.nodes.append(StepNode(index, contact, core))
        self.by_node = {node.contact.node: node for node in self.nodes}
        for node in self.nodes:
            # The same draws as sampling the list of the others, without building that
            # list for every node (quadratic: 10^8 steps at 10,000 nodes).
            for j in self.rng.sample(range(n - 1), min(view, n - 1)):
                other = self.nodes[j + (j >= node.index)]
                node.core.member_alive(other.contact, 0.0)
            node.core.find_node(node.contact.node.raw, 0.0)
            self._after(node)

    # ---- faults ------------------------------------------------------------------------

    def crash(self, index: int) -> None:
        """Node `index` stops answering; the others learn it after `detect_after`."""
        node = self.nodes[index]
        node.up = False
        if self.detect_after is not None:
            self._schedule(self.now + self.detect_after, _GONE, (node,))

    # ---- operations --------------------------------------------------------------------

    def publish(self, index: int, key: bytes, value: bytes) -> int:
        node = self.nodes[index]
        op_id = node.core.publish(key, value, self.now)
        self._after(node)
        return op_id

    def find_value(self, index: int, key: bytes) -> int:
        node = self.nodes[index]
        op_id = node.core.find_value(key, self.now)
        self._after(node)
        return op_id

    def find_node(self, index: int, target: bytes) -> int:
        node = self.nodes[index]
        op_id = node.core.find_node(target, self.now)
        self._after(node)
        return op_id

    def wait(self, index: int, op_id: int, limit: float = 60.0) -> Finished:
        """Run until node `index` finished `op_id` (at most `limit` simulated seconds)."""
        node = self.nodes[index]
        end = self.now + limit
        while op_id not in node.finished:
            if not self._heap or self._heap[0][0] > end:
                raise TimeoutError(f"operation {op_id} of node {index} did not finish "
                                   f"within {limit} simulated seconds")
            self._step()
        return node.finished.pop(op_id)

    # ---- running -----------------------------------------------------------------------

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            self._step()
        self.now = max(self.now, t)

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def live(self) -> list[StepNode]:
        return [node for node in self.nodes if node.up]

    @property
    def digest(self) -> str:
        """Hash of every delivery so far: equal for equal seeds and parameters."""
        return self._trace.hexdigest()[:16]

    def _step(self) -> None:
        at, _, kind, payload = heapq.heappop(self._heap)
        self.now = at
        if kind == _WAKE:
            node, due = payload
            if node.wake == due and node.up:
                node.wake = None
                node.core.tick(at)
                self._after(node)
        elif kind == _REQUEST:
            sender, target, query_id, message = payload
            if not target.up:
                return
            self._note(at, sender, target, message)
            answer = target.core.handle_request(sender.contact, message, at)
            # Answering moves none of the target's deadlines unless it queued a query of
            # its own (a ping of a full bucket's oldest contact): skip recomputing it then.
            self._after(target, deadline_moved=bool(target.core.outbox))
            self._send(target, _REPLY, (sender, query_id, answer))
        elif kind == _REPLY:
            asker, query_id, answer = payload
            if asker.up:
                asker.core.reply(query_id, answer, at)
                self._after(asker)
        else:
            (gone,) = payload
            for node in self.live():
                node.core.member_gone(gone.contact.node, at)
                self._after(node)

    def _note(self, at: float, sender: StepNode, target: StepNode, message: Any) -> None:
        self.messages += 1
        self._trace.update(f"{at:.9f} {sender.index} {target.index} "
                           f"{type(message).__name__};".encode())

    def _send(self, sender: StepNode, kind: int, payload: tuple) -> None:
        if self.codec is not None:
            sender.bytes_sent += len(self.codec.encode(payload[-1]))
        if self.rng.random() < self.loss:
            return
        delay = self.latency + self.rng.random() * self.jitter
        self._schedule(self.now + delay, kind, payload)

    def _schedule(self, at: float, kind: int, payload: tuple) -> None:
        heapq.heappush(self._heap, (at, next(self._counter), kind, payload))

    def _after(self, node: StepNode, deadline_moved: bool = True) -> None:
        """Drain a core after it ran: its queries go in flight, finished ops are kept,
        and it is woken at its next deadline (left as it was when the caller knows the
        core's timers did not move: `next_deadline` is the costliest call per delivery)."""
        core = node.core
        for out in core.outbox:
            self._send(node, _REQUEST, (node, self.by_node[out.contact.node], out.query_id,
                                        out.message))
        core.outbox.clear()
        for done in core.finished:
            node.finished[done.op_id] = done
        core.finished.clear()
        if not deadline_moved and node.wake is not None:
            return
        due = core.next_deadline()
        if due != node.wake:
            node.wake = due
            self._schedule(max(due, self.now), _WAKE, (node, due))
