"""`p2pexec demo`: a real workload on the embedded default, checked.

Monte Carlo estimation of pi. Each batch task fans out sampling tasks (nested
parallelism), waits for them, and pushes its counts to a parameter-server actor that
several batches update concurrently. The driver shows progress as batches finish, then
checks the estimate and prints the throughput. With `--nodes N` it runs across N `p2pexec
join` processes on this machine, kills one part-way, and shows what each node ran.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from typing import TextIO

import p2pexec as px


@px.remote
def sample(seed: int, n: int) -> int:
    """Points of n uniform draws in the unit square that fall inside the quarter circle."""
    rng = random.Random(seed)
    inside = 0
    for _ in range(n):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            inside += 1
    return inside


@px.remote
class Estimator:
    """Parameter server: batches push counts, anyone reads the running estimate.

    A push names its batch and a second push of the same batch is ignored: a batch whose
    node died after it pushed runs again elsewhere (tasks run at least once, as in Ray),
    so its side effects must be idempotent."""

    def __init__(self) -> None:
        self.inside = 0
        self.total = 0
        self.updates = 0
        self.pushed: set[int] = set()

    def push(self, batch_index: int, inside: int, total: int) -> int:
        if batch_index not in self.pushed:
            self.pushed.add(batch_index)
            self.inside += inside
            self.total += total
            self.updates += 1
        return self.updates

    def estimate(self) -> tuple[float, int, int]:
        return 4.0 * self.inside / max(self.total, 1), self.total, self.updates


@px.remote
def batch(index: int, chunks: int, per_chunk: int, server: px.ActorHandle) -> int:
    """Fan out sampling tasks, gather them, push the sum to the parameter server."""
    first_seed = index * chunks
    counts = px.get([sample.remote(first_seed + i, per_chunk) for i in range(chunks)])
    px.get(server.push.remote(index, sum(counts), chunks * per_chunk))
    return sum(counts)


def _bar(done: int, total: int, started: float, out: TextIO, interactive: bool) -> None:
    width = 30
    filled = width * done // total
    line = (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} batches "
            f"{time.perf_counter() - started:5.1f} s")
    if interactive:
        out.write("\r" + line)
        if done == total:
            out.write("\n")
    else:
        out.write(line + "\n")
    out.flush()


def run(samples: int = 20_000_000, batches: int = 40, chunks: int = 10,
        num_cpus: float | None = None, out: TextIO = sys.stdout) -> bool:
    """Run the demo on an embedded node; True when pi came out within 0.01."""
    started = time.perf_counter()
    px.init(num_cpus=num_cpus, ignore_reinit_error=True)
    return _workload(samples, batches, chunks, started, out)


def run_mesh(nodes: int, samples: int = 20_000_000, batches: int = 40, chunks: int = 10,
             num_cpus: float | None = None, out: TextIO = sys.stdout) -> bool:
    """Run the demo across `nodes` `p2pexec join` processes on 127.0.0.1 (`num_cpus` each,
    default 1), attached to the first; SIGKILL the last one a third of the way through.
    True when pi came out within 0.01."""
    from p2pexec.testing.processes import LocalCluster

    started = time.perf_counter()
    cpus = 1 if num_cpus is None else num_cpus
    with LocalCluster(nodes, cpus=cpus, prefix="p2pexec-demo-") as cluster:
        out.write(f"p2pexec demo: started {nodes} nodes on 127.0.0.1 "
                  f"({', '.join(cluster.addresses)}), {cpus:g} CPU each; the driver "
                  f"attaches to n0\n")
        px.init(address=str(cluster.data_dirs[0]))
        victim = nodes - 1

        def kill_part_way(done: int) -> None:
            if done >= max(1, batches // 3) and cluster.alive(victim) and victim > 0:
                cluster.kill(victim)
                out.write(f"\nSIGKILLed node n{victim} after {done}/{batches} batches; "
                          f"its tasks run again elsewhere\n")

        try:
            ok = _workload(samples, batches, chunks, started, out, kill_part_way)
            out.write("per node: tasks run / taken from peers / given to peers\n")
            for index in range(nodes):
                if not cluster.alive(index):
                    out.write(f"  n{index}: killed\n")
                    continue
                stats = cluster.request(index, "exec_stats")
                out.write(f"  n{index}: {stats['done']} run / {stats['stolen_in']} taken / "
                          f"{stats['stolen_out']} given\n")
        finally:
            px.shutdown()
    return ok


def _workload(samples: int, batches: int, chunks: int, started: float, out: TextIO,
              on_progress: Callable[[int], None] | None = None) -> bool:
    per_chunk = max(1, samples // (batches * chunks))
    server = Estimator.remote()
    pending = [batch.remote(b, chunks, per_chunk, server) for b in range(batches)]
    interactive = out.isatty()
    out.write(f"p2pexec demo: estimating pi with {batches * chunks * per_chunk:,} samples in "
              f"{batches} batch tasks x {chunks} nested sampling tasks, "
              f"one parameter-server actor\n")
    done = 0
    _bar(done, batches, started, out, interactive)
    while pending:
        ready, pending = px.wait(pending, num_returns=1)
        px.get(ready)
        done += len(ready)
        if interactive or done % max(1, batches // 5) == 0 or not pending:
            _bar(done, batches, started, out, interactive)
        if on_progress is not None:
            on_progress(done)
    estimate, total, updates = px.get(server.estimate.remote())
    elapsed = time.perf_counter() - started
    error = abs(estimate - math.pi)
    ok = error < 0.01 and updates == batches
    verdict = "OK" if ok else "FAILED"
    out.write(f"pi ~= {estimate:.5f} (error {error:.5f}, {updates} parameter-server "
              f"updates) {verdict}\n")
    tasks = batches * (chunks + 1) + updates + 2
    out.write(f"{tasks} tasks and actor calls, {total:,} samples in {elapsed:.2f} s: "
              f"{tasks / elapsed:,.0f} tasks/s, {total / elapsed / 1e6:.2f} M samples/s "
              f"on {px.cluster_resources()['CPU']:g} CPUs\n")
    return ok
