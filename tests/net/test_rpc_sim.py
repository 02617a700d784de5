"""The same RPC layer over SimNetwork on a MockClock: exact latencies, timeouts, crashes."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

from p2pexec.net.codec import message
from p2pexec.net.rpc import RpcNode
from p2pexec.net.transport import Peer
from p2pexec.testing.simnet import LinkSpec, NodeCrashedError, SimNetwork

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


@message(930)
@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


@message(931)
@dataclass(frozen=True, slots=True)
class Waited:
    seconds: float


async def wait(peer: Peer, body: Wait) -> Waited:
    await trio.sleep(body.seconds)
    return Waited(body.seconds)


async def serve_until_crash(node: RpcNode, *,
                            task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
                            ) -> None:
    """Serve; a crash of the simulated node (its serve raises) ends this quietly."""
    try:
        await node.serve(task_status=task_status)
    except BaseExceptionGroup as group:
        rest = group.subgroup(lambda e: not isinstance(e, (NodeCrashedError,
                                                           BaseExceptionGroup)))
        if rest is not None:
            raise


async def test_rpc_over_simnetwork(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(seed=1, default_link=LinkSpec(latency=0.01))
    a, b = net.add_node(), net.add_node()
    server, client = RpcNode(b, wait), RpcNode(a)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_until_crash, server)
        await nursery.start(client.serve)
        assert await client.call(b.local.address, Wait(0)) == Waited(0)  # connects first
        start = trio.current_time()
        assert await client.call(b.local.address, Wait(0.5)) == Waited(0.5)
        assert trio.current_time() - start == pytest.approx(0.52)  # two one-way latencies

        start = trio.current_time()
        results: list[Any] = await client.call_many(b.local.address,
                                                    [Wait(0.1 * i) for i in range(1, 6)])
        assert results == [Waited(0.1 * i) for i in range(1, 6)]
        assert trio.current_time() - start == pytest.approx(0.52)  # concurrent handlers

        start = trio.current_time()
        with pytest.raises(TimeoutError):
            await client.call(b.local.address, Wait(100), timeout=1.0)
        assert trio.current_time() - start == pytest.approx(1.0)

        async def crash_soon() -> None:
            await trio.sleep(0.2)
            net.crash(b.local.address)

        nursery.start_soon(crash_soon)
        with pytest.raises(trio.BrokenResourceError):
            await client.call(b.local.address, Wait(100))

        restarted = RpcNode(net.restart(b.local.address), wait)
        await nursery.start(restarted.serve)
        assert await client.call(b.local.address, Wait(0), node=b.local.node_id) == Waited(0)
        await client.aclose()
        await restarted.aclose()
        nursery.cancel_scope.cancel()
