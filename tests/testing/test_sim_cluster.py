"""Twenty complete nodes (membership and execution) in one trio process on SimNetwork with
MockClock: they find each other from seeds, and tasks submitted on each run and return."""

from __future__ import annotations

import trio

from p2pexec.testing.cluster import SimCluster
from p2pexec.testing.simnet import LinkSpec, SimNetwork


def triple(x):
    return 3 * x


def fails(x):
    raise ValueError(f"bad {x}")


async def test_twenty_whole_nodes_agree_and_run_tasks_on_simulated_time(autojump_clock):
    net = SimNetwork(seed=7, default_link=LinkSpec(latency=0.001, jitter=0.0005))
    cluster = SimCluster(net, 20, cpus=2, duration=0.5, seed=7)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        assert await cluster.wait_converged(60), [s.alive_members() for s in cluster.nodes]
        started = trio.current_time()
        submitted = [[(sim, sim.submit(triple, 10 * i + k)) for k in range(6)]
                     for i, sim in enumerate(cluster.nodes)]
        failing = cluster.nodes[3].submit(fails, 1)
        results = [[await sim.result(oid) for sim, oid in row] for row in submitted]
        elapsed = trio.current_time() - started
        assert results == [[3 * (10 * i + k) for k in range(6)] for i in range(20)]
        try:
            await cluster.nodes[3].result(failing)
        except ValueError as exc:
            assert "bad 1" in str(exc)
        else:
            raise AssertionError("the failing task returned")
        # six 0.5 s tasks on two inline workers per node: three rounds of simulated time
        assert elapsed >= 1.5 - 1e-9 and elapsed < 2.5, elapsed  # (float clock sums)
        await trio.sleep(0.01)  # the last releases reach the nodes' loops
        for sim in cluster.nodes:
            info = sim.node.nodes()[0]
            assert info["workers"] == 2 and info["state"] == "alive"
            assert len(sim.node.exec.core.objects) == 0  # every result read and freed
        nursery.cancel_scope.cancel()
