"""How many simulated messages SimNetwork delivers per real second, on MockClock.

Run: python tests/testing/bench_simnet.py   (prints a table; not collected by pytest)

Each scenario runs `nodes` nodes for `sim_seconds` of simulated time on
MockClock(autojump_threshold=0). Every node sends one message every `interval` simulated
seconds to a random peer, the way gossip probes do: as datagrams, or over a connection
opened to each of a few fixed peers.
"""

from __future__ import annotations

import random
import sys
import time

import trio
import trio.testing

from p2pexec.net.transport import Connection
from p2pexec.testing import LinkSpec, SimNetwork, SimTransport


def run(nodes: int, kind: str, interval: float, sim_seconds: float) -> tuple[int, float]:
    """Delivered messages and the real seconds it took."""
    net = SimNetwork(seed=1, default_link=LinkSpec(latency=0.001, jitter=0.0005, loss=0.01))
    transports = [net.add_node() for _ in range(nodes)]

    async def listen(node: SimTransport) -> None:
        while True:
            await node.receive_datagram()

    async def drain(conn: Connection) -> None:
        while True:
            await conn.receive()

    async def talk(i: int, node: SimTransport) -> None:
        rng = random.Random(i)
        conns = []
        if kind == "stream":
            for step in (1, 2, 3):
                conns.append(await node.connect(transports[(i + step) % nodes].local.address))
        await trio.sleep(rng.random() * interval)
        while True:
            if conns:
                await rng.choice(conns).send(b"x" * 100)
            else:
                peer = transports[rng.randrange(nodes)].local.address
                await node.send_datagram(peer, b"x" * 100)
            await trio.sleep(interval)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for node in transports:
                nursery.start_soon(listen, node)
                await nursery.start(node.serve, drain)
            for i, node in enumerate(transports):
                nursery.start_soon(talk, i, node)
            await trio.sleep(sim_seconds)
            nursery.cancel_scope.cancel()

    started = time.perf_counter()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    elapsed = time.perf_counter() - started
    total = net.total_stats()
    return total.datagrams_delivered + total.stream_messages_delivered, elapsed


def main() -> None:
    scenarios = [
        (50, "datagram", 0.2, 20.0),
        (200, "datagram", 0.2, 10.0),
        (1000, "datagram", 1.0, 10.0),
        (5000, "datagram", 1.0, 2.0),
        (200, "stream", 0.2, 10.0),
        (1000, "stream", 1.0, 10.0),
    ]
    print(f"{'nodes':>6} {'kind':>9} {'interval s':>10} {'sim s':>6} {'delivered':>10} "
          f"{'real s':>7} {'msgs/real s':>12}")
    for nodes, kind, interval, sim_seconds in scenarios:
        delivered, elapsed = run(nodes, kind, interval, sim_seconds)
        print(f"{nodes:>6} {kind:>9} {interval:>10} {sim_seconds:>6} {delivered:>10} "
              f"{elapsed:>7.2f} {delivered / elapsed:>12,.0f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
