"""The driver over the production TCP+TLS transport on loopback: sealed datagrams carry
probes and full piggyback packets, push-pull runs over authenticated connections."""

from __future__ import annotations

import dataclasses
import random

import trio

from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.core import EventKind, Membership
from p2pexec.gossip.driver import GossipDriver
from p2pexec.gossip.messages import State
from p2pexec.net.tcp import TcpTransport

# real time: shrink every timer (suspicion 0.3-1.8 s) so the test takes a few seconds
FAST = dataclasses.replace(GossipConfig.local(), probe_interval=0.1, probe_timeout=0.05,
                           gossip_interval=0.02, push_pull_interval=1.0,
                           reconnect_interval=1.0, load_update_interval=0.02)


async def until(cond, limit: float = 20.0) -> None:
    with trio.fail_after(limit):
        while not cond():
            await trio.sleep(0.05)


async def test_three_nodes_over_tcp_converge_share_load_and_detect_a_crash(tmp_path):
    token = "gossip-test-token"
    async with trio.open_nursery() as nursery:
        transports, drivers, scopes = [], [], []
        for i in range(3):
            tr = TcpTransport.create(tmp_path / f"n{i}", token)
            scope = trio.CancelScope()
            holder: list[GossipDriver] = []

            async def node(tr=tr, scope=scope, holder=holder, i=i,
                           *, task_status=trio.TASK_STATUS_IGNORED):
                with scope:
                    async with trio.open_nursery() as inner:
                        # the node routes connections; here every one is gossip
                        await inner.start(tr.serve, lambda c: holder[0].handle_stream(c))
                        many = {f"r{k}": 1.0 for k in range(40)}  # ~1 KB Alive messages
                        core = Membership(tr.local.node_id, tr.local.address, FAST,
                                          random.Random(i), resources={"CPU": 2.0, **many})
                        holder.append(GossipDriver(core, tr))
                        await inner.start(holder[0].run)
                        task_status.started()

            await nursery.start(node)
            transports.append(tr)
            drivers.append(holder[0])
            scopes.append(scope)
        events = drivers[0].subscribe()
        for d in drivers[1:]:
            d.join([transports[0].local.address])
        ids = [t.local.node_id for t in transports]
        await until(lambda: all(sorted(d.view()) == sorted(ids) and
                                {m.state for m in d.view().values()} == {State.ALIVE}
                                for d in drivers))
        assert drivers[1].member(ids[2]).resources["r39"] == 1.0

        drivers[2].set_local_load(queue_length=6, running_tasks=2)
        await until(lambda: drivers[0].member(ids[2]).load.queue_length == 6)

        scopes[2].cancel()
        await transports[2].aclose()  # gone without a leave: a crash as far as peers know
        await until(lambda: all(d.member(ids[2]).state == State.DEAD for d in drivers[:2]))
        kinds = []
        with trio.move_on_after(10):  # the table may say DEAD a moment before the event
            async for ev in events:     # reaches subscribers
                if ev.member.node_id == ids[2]:
                    kinds.append(ev.kind)
                    if ev.kind == EventKind.FAILED:
                        break
        assert kinds == [EventKind.JOINED, EventKind.SUSPECT, EventKind.FAILED]
        nursery.cancel_scope.cancel()
    for tr in transports[:2]:
        await tr.aclose()
