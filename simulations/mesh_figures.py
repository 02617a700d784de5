"""Figures of execution across the mesh: makespan against the ideal, steal requests and
messages per task, by cluster size.

    python simulations/mesh_figures.py                 # n = 10, 50, 200 (~2 min)
    python simulations/mesh_figures.py --sizes 10 50   # chosen sizes
    python simulations/mesh_figures.py --crash 3       # also unplug 3 nodes mid-run

Engine: `p2pexec.testing.SimCluster`, whole production nodes (gossip, DHT, scheduler,
mesh driver) on `SimNetwork` under trio's MockClock; workers are in-process tasks that
take a simulated duration (50-500 ms, uniform, fixed by each task's id). Links: 0.5 ms
one way, 0.2 ms jitter. Each node has 2 CPUs. `--tasks-per-node` tasks per node are all
submitted at node 0, as one driver would, after the loads have been gossiped once.

Columns: makespan (first submit to last result at the owner, simulated seconds), the
ideal (total work / total CPUs + the longest task), their ratio, steal requests served
per task, stream messages per task (every node-to-node message on a connection during
the run: steal requests, grants, result batches; gossip's datagrams are not counted,
they run with or without work), and the real seconds the simulation took. With `--crash
k`, k nodes other than the owner are unplugged at 5, 10, 15... simulated seconds; the
ideal then counts only the survivors' CPUs, and the run checks every result reached
the owner exactly once.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time

import trio
import trio.testing

from p2pexec.exec.refs import task_of
from p2pexec.testing.cluster import SimCluster
from p2pexec.testing.simnet import LinkSpec, SimNetwork
from simulations.engines import task_seconds, triple

CPUS = 2


@dataclasses.dataclass(frozen=True)
class BurstRow:
    n: int
    tasks: int
    crashed: int
    makespan: float
    ideal: float
    steal_requests_per_task: float
    messages_per_task: float
    wall_s: float
    counts: list[dict[str, int]]

    @property
    def ratio(self) -> float:
        return self.makespan / self.ideal


async def burst(n: int, tasks: int, crash: int = 0, seed: int = 11) -> BurstRow:
    """Submit `tasks` tasks at node 0 of `n` and wait for every result; unplug `crash`
    other nodes mid-run. Raises if any result is wrong, missing or completed twice."""
    started_wall = time.monotonic()
    net = SimNetwork(seed=seed, default_link=LinkSpec(latency=0.0005, jitter=0.0002))
    cluster = SimCluster(net, n, cpus=CPUS, duration=lambda work: task_seconds(work.task_id),
                         seed=seed)
    owner = cluster.nodes[0]
    completions = owner.count_completions()
    victims = random.Random(seed).sample(range(1, n), crash)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        if not await cluster.wait_converged(120):
            raise RuntimeError(f"{n} nodes did not converge")
        await trio.sleep(2)  # first load samples gossiped
        sent_before = net.total_stats().stream_messages_sent
        start = trio.current_time()
        ids = [owner.submit(triple, i) for i in range(tasks)]

        async def unplug() -> None:
            for k, index in enumerate(victims):
                await trio.sleep_until(start + 5 * (k + 1))
                cluster.crash(index)

        nursery.start_soon(unplug)
        with trio.fail_after(3600):  # simulated seconds: no future may hang
            results = [await owner.result(oid) for oid in ids]
        makespan = trio.current_time() - start
        messages = net.total_stats().stream_messages_sent - sent_before
        nursery.cancel_scope.cancel()
    if results != [3 * i for i in range(tasks)]:
        raise AssertionError("wrong results")
    if set(completions) != set(ids) or set(completions.values()) != {1}:
        raise AssertionError("a result reached its owner twice, or never")
    durations = [task_seconds(task_of(oid)) for oid in ids]
    ideal = sum(durations) / (CPUS * (n - crash)) + max(durations)
    counts = [dict(sim.node.exec.core.counts) for sim in cluster.nodes]
    requests = sum(c["steal_requests"] for c in counts)
    return BurstRow(n, tasks, crash, makespan, ideal, requests / tasks, messages / tasks,
                    time.monotonic() - started_wall, counts)


def run(n: int, tasks: int, crash: int = 0, seed: int = 11) -> BurstRow:
    return trio.run(burst, n, tasks, crash, seed,
                    clock=trio.testing.MockClock(autojump_threshold=0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--tasks-per-node", type=int, default=50)
    parser.add_argument("--crash", type=int, default=0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    sys.setrecursionlimit(10_000)
    header = ("n", "tasks", "crashed", "makespan s", "ideal s", "x ideal",
              "steal req/task", "msgs/task", "wall s")
    print("  ".join(header))
    for n in args.sizes:
        row = run(n, n * args.tasks_per_node, args.crash, args.seed)
        print("  ".join([str(row.n), str(row.tasks), str(row.crashed), f"{row.makespan:.2f}",
                         f"{row.ideal:.2f}", f"{row.ratio:.3f}",
                         f"{row.steal_requests_per_task:.2f}",
                         f"{row.messages_per_task:.2f}", f"{row.wall_s:.1f}"]), flush=True)


if __name__ == "__main__":
    main()
