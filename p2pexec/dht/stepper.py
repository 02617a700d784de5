"""A deterministic discrete-event runner of many `Dht` cores: no trio, no sockets.

It plays the driver's role for N cores at once: each query is delivered after a latency
(with jitter and random loss) to the target core's `handle_request`, and the answer
travels back to the asker's `reply`; a query to a crashed node is simply never answered
(the asker's timeout decides). Membership is simulated the way gossip feeds a node:
each node starts knowing `view` random others, joins with a lookup of its own id, and
learns of a crash `detect_after` seconds later (or never, with None). Every random
choice comes from one seeded `random.Random`, and the trace digest hashes every
delivery (`p2pexec.stepping.EventLoop`), so a run replays exactly. Used by the tests,
`simulations/dht_figures.py` and the cluster stepper of `p2pexec.testing`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from p2pexec.dht.config import DhtConfig
from p2pexec.dht.core import Dht, Finished
from p2pexec.dht.messages import Contact
from p2pexec.dht.records import RecordSigner
from p2pexec.ids import NodeId
from p2pexec.net.codec import Codec
from p2pexec.net.config import CodecLimits
from p2pexec.stepping import EventLoop, OnLoop


@dataclass
class StepNode:
    index: int
    contact: Contact
    core: Dht
    up: bool = True
    finished: dict[int, Finished] = field(default_factory=dict)
    wake: float | None = None
    bytes_sent: int = 0


class DhtStepper(OnLoop):
    """N DHT cores on a simulated LAN. Times are seconds from 0.

    With `loop`, the cores share another stepper's event loop; with `view=0` they start
    knowing no one, and whoever drives membership calls `member_alive` and `member_gone`
    (as gossip does in a node)."""

    def __init__(self, n: int, config: DhtConfig | None = None, *, seed: int = 0,
                 view: int = 30, latency: float = 0.0005, jitter: float = 0.0005,
                 loss: float = 0.0, detect_after: float | None = 2.0,
                 count_bytes: bool = False, loop: EventLoop | None = None) -> None:
        self.config = config or DhtConfig()
        self.loop = loop or EventLoop(seed, latency=latency, jitter=jitter, loss=loss)
        self.rng = self.loop.rng
        self.detect_after = detect_after
        self.codec = Codec(CodecLimits()) if count_bytes else None
        self.messages = 0
        self.nodes: list[StepNode] = []
        self.by_node: dict[NodeId, StepNode] = {}
        self._signers: list[RecordSigner] = []
        for _ in range(n):
            self.add_node()
        if view:
            self.know_random(view)

    def know_random(self, view: int) -> None:
        """Each node learns `view` random others, then looks up its own id (a Kademlia
        join): a partial view, as a node fed by gossip of a partial membership has."""
        n = len(self.nodes)
        for node in self.nodes:
            # The same draws as sampling the list of the others, without building that
            # list for every node (quadratic: 10^8 steps at 10,000 nodes).
            for j in self.rng.sample(range(n - 1), min(view, n - 1)):
                other = self.nodes[j + (j >= node.index)]
                node.core.member_alive(other.contact, self.now)
            node.core.find_node(node.contact.node.raw, self.now)
            self._after(node)

    def know_neighbours(self, view: int) -> None:
        """Each node learns the nodes next to it in id order (about its k closest: the
        close buckets a converged DHT has) and `view` random others, with no lookups: a
        converged start in O(n log n), where a Kademlia join of every node would send
        some 40 queries each."""
        n = len(self.nodes)
        k = self.config.k
        order = sorted(range(n), key=lambda i: self.nodes[i].contact.node.raw)
        for position, index in enumerate(order):
            node = self.nodes[index]
            near = order[max(0, position - k):position] + order[position + 1:position + k + 1]
            far = [j + (j >= index) for j in self.rng.sample(range(n - 1), min(view, n - 1))]
            for other in dict.fromkeys(near + far):
                node.core.member_alive(self.nodes[other].contact, self.now)
            self._after(node)

    def add_node(self) -> StepNode:
        """A new node with its own key, knowing no one yet."""
        index = len(self.nodes)
        key = ed25519.Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))
        signer = RecordSigner(key)
        self._signers.append(signer)
        contact = Contact(signer.node_id, (f"node{index}", 7946))
        node = StepNode(index, contact, self._new_core(index))
        self.nodes.append(node)
        self.by_node[contact.node] = node
        return node

    def _new_core(self, index: int) -> Dht:
        signer = self._signers[index]
        contact = Contact(signer.node_id, (f"node{index}", 7946))
        return Dht(contact, self.config, random.Random(self.rng.getrandbits(64)), signer,
                   now=self.now)

    # ---- membership and faults ---------------------------------------------------------

    def restart(self, index: int) -> None:
        """Node `index` comes back as a fresh process with the same key: an empty table
        and store, and answering again. It learns members through `member_alive`."""
        node = self.nodes[index]
        node.core = self._new_core(index)
        node.up = True
        node.wake = None
        node.finished.clear()
        self._after(node)

    def member_alive(self, index: int, other: int) -> None:
        """Node `index` learns that node `other` is a live member."""
        node = self.nodes[index]
        node.core.member_alive(self.nodes[other].contact, self.now)
        self._after(node)

    def member_gone(self, index: int, other: int) -> None:
        """Node `index` learns that node `other` died or left."""
        node = self.nodes[index]
        node.core.member_gone(self.nodes[other].contact.node, self.now)
        self._after(node)

    def crash(self, index: int) -> None:
        """Node `index` stops answering; the others learn it after `detect_after`."""
        node = self.nodes[index]
        node.up = False
        if self.detect_after is not None:
            self.loop.call_at(self.now + self.detect_after, self._gone, node)

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
        loop = self.loop
        while op_id not in node.finished:
            due = loop.next_time()
            if due is None or due > end:
                raise TimeoutError(f"operation {op_id} of node {index} did not finish "
                                   f"within {limit} simulated seconds")
            loop.step()
        return node.finished.pop(op_id)

    # ---- running -----------------------------------------------------------------------

    def live(self) -> list[StepNode]:
        return [node for node in self.nodes if node.up]

    # ---- deliveries --------------------------------------------------------------------

    def _wake(self, node: StepNode, due: float) -> None:
        if node.wake == due and node.up:
            node.wake = None
            node.core.tick(self.now)
            self._after(node)

    def _request(self, sender: StepNode, asker: Dht, target: StepNode, query_id: int,
                 message: Any) -> None:
        if not target.up or not self.loop.reachable(sender.index, target.index):
            return
        self.messages += 1
        self.loop.note(sender.index, target.index, message)
        answer = target.core.handle_request(sender.contact, message, self.now)
        # Answering moves none of the target's deadlines unless it queued a query of its
        # own (a ping of a full bucket's oldest contact): skip recomputing it then.
        self._after(target, deadline_moved=bool(target.core.outbox))
        self._send(target, self._reply, sender, asker, query_id, answer)

    def _reply(self, node: StepNode, asker: Dht, query_id: int, answer: Any) -> None:
        # only to the process that asked: a node restarted since has other queries
        if node.up and node.core is asker:
            asker.reply(query_id, answer, self.now)
            self._after(node)

    def _gone(self, gone: StepNode) -> None:
        for node in self.live():
            node.core.member_gone(gone.contact.node, self.now)
            self._after(node)

    def _send(self, sender: StepNode, deliver: Any, *payload: Any) -> None:
        if self.codec is not None:
            sender.bytes_sent += len(self.codec.encode(payload[-1]))
        if self.loop.lost():
            return
        self.loop.call_later(deliver, *payload)

    def _after(self, node: StepNode, deadline_moved: bool = True) -> None:
        """Drain a core after it ran: its queries go in flight, finished ops are kept,
        and it is woken at its next deadline (left as it was when the caller knows the
        core's timers did not move: `next_deadline` is the costliest call per delivery)."""
        core = node.core
        for out in core.outbox:
            self._send(node, self._request, node, core, self.by_node[out.contact.node],
                       out.query_id, out.message)
        core.outbox.clear()
        for done in core.finished:
            node.finished[done.op_id] = done
        core.finished.clear()
        if not deadline_moved and node.wake is not None:
            return
        due = core.next_deadline()
        if due != node.wake:
            node.wake = due
            self.loop.call_at(due, self._wake, node, due)
