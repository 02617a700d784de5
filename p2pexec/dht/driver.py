"""The one trio driver of the DHT core: the only place the DHT touches I/O or a clock.

Queries go out as RPC calls over the node's secure connections (`net.rpc.RpcNode`),
each in a task of its own, bounded by the core's query timeout; requests from peers are
answered inline (they are quick and never wait). Membership comes from whoever owns
gossip (the cluster service) through `member_alive` / `member_gone`.

Usage::

    dht = DhtDriver(core, rpc)
    await nursery.start(dht.run)
    replicas = await dht.publish(key, value)
    records = await dht.find_value(key)      # DhtLookupError if none is found
"""

from __future__ import annotations

import logging
import math
from typing import Any

import trio

from p2pexec.dht.core import Dht, Finished
from p2pexec.dht.messages import Contact, Record, Stored
from p2pexec.errors import DhtLookupError
from p2pexec.ids import NodeId
from p2pexec.net.rpc import RpcNode
from p2pexec.net.transport import Address, Peer

log = logging.getLogger("p2pexec.dht")

class DhtDriver:
    """Runs a `Dht` core over an `RpcNode` (see module docstring)."""

    def __init__(self, core: Dht, rpc: RpcNode) -> None:
        self.core = core
        self.rpc = rpc
        self._addresses: dict[NodeId, Address] = {}
        """Where members listen (from membership): a request's source port is not it."""
        self._waiting: dict[int, trio.Event] = {}
        self._results: dict[int, Finished] = {}
        """Finished operations someone awaits (the core's own republishes and refreshes
        end unseen)."""
        self._wake = trio.Event()
        self._sleeping_until = -math.inf
        """The deadline the timer loop sleeps until: `_pump` wakes it only for an earlier
        one."""
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep the core's timers until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    self._wake = trio.Event()
                    self._sleeping_until = -math.inf  # awake: nothing to wake
                    self.core.tick(trio.current_time())
                    self._pump()
                    self._sleeping_until = self.core.next_deadline()
                    with trio.move_on_at(self._sleeping_until):
                        await self._wake.wait()
            finally:
                self._nursery = None

    # ---- membership --------------------------------------------------------------------

    def member_alive(self, node: NodeId, address: Address) -> None:
        self._addresses[node] = address
        self.core.member_alive(Contact(node, address), trio.current_time())
        self._pump()

    def member_gone(self, node: NodeId) -> None:
        self._addresses.pop(node, None)
        self.core.member_gone(node, trio.current_time())
        self._pump()

    def address_of(self, node: NodeId) -> Address | None:
        """Where live member `node` listens; None if membership does not know it."""
        return self._addresses.get(node)

    # ---- requests from peers -----------------------------------------------------------

    def handle_request(self, peer: Peer, request: Any) -> Any:
        """Answer a peer's DHT request (an `RpcNode` request handler). A peer that is not
        a member yet is answered but not routed through: its listening address is known
        only from membership."""
        address = self._addresses.get(peer.node_id)
        sender = Contact(peer.node_id, address if address is not None else peer.address)
        answer = self.core.handle_request(sender, request, trio.current_time(),
                                          routable=address is not None)
        if type(answer) is Stored and answer.refused:
            log.warning("DHT: refused %d records from node %s (first: %s)",
                        len(answer.refused), peer.node_id.short, answer.refused[0])
        self._pump()
        return answer

    # ---- operations --------------------------------------------------------------------

    async def find_value(self, key: bytes) -> list[Record]:
        """The live records under `key`; `DhtLookupError` when the lookup finds none."""
        done = await self._wait(self.core.find_value(key, trio.current_time()))
        if done.error is not None:
            raise DhtLookupError(done.error)
        return list(done.result.records)

    async def find_node(self, target: bytes) -> list[Contact]:
        """The k closest live nodes to `target` (not this one)."""
        done = await self._wait(self.core.find_node(target, trio.current_time()))
        return list(done.result.contacts)

    async def publish(self, key: bytes, value: bytes) -> int:
        """Publish `value` under `key` as this node's record (republished until
        withdrawn); how many nodes, this one included, stored it."""
        done = await self._wait(self.core.publish(key, value, trio.current_time()))
        return done.stored

    async def withdraw(self, key: bytes) -> None:
        """Stop publishing under `key` and tombstone the copies."""
        op_id = self.core.withdraw(key, trio.current_time())
        if op_id is not None:
            await self._wait(op_id)

    async def _wait(self, op_id: int) -> Finished:
        event = self._waiting[op_id] = trio.Event()
        self._pump()
        await event.wait()
        return self._results.pop(op_id)

    # ---- the core's output -------------------------------------------------------------

    def _pump(self) -> None:
        """Send what the core queued, hand out finished operations, re-arm the timer."""
        core = self.core
        if core.outbox:
            if self._nursery is None:
                raise trio.ClosedResourceError("the DHT driver is not running")
            for out in core.outbox:
                self._nursery.start_soon(self._call, out.query_id, out.contact, out.message)
            core.outbox.clear()
        for done in core.finished:
            event = self._waiting.pop(done.op_id, None)
            if event is not None:
                self._results[done.op_id] = done
                event.set()
        core.finished.clear()
        if core.next_deadline() < self._sleeping_until:
            self._wake.set()

    async def _call(self, query_id: int, contact: Contact, message: Any) -> None:
        try:
            answer = await self.rpc.call(contact.address, message, node=contact.node,
                                         timeout=self.core.config.query_timeout)
        except Exception as exc:  # timeout, no connection, broken link, remote failure
            log.debug("DHT %s to %s failed: %r", type(message).__name__,
                      contact.node.short, exc)
            self.core.query_failed(query_id, trio.current_time())
        else:
            self.core.reply(query_id, answer, trio.current_time())
        self._pump()
