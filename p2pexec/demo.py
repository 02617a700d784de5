"""`p2pexec demo`: a real workload on the embedded default, checked.

Monte Carlo estimation of pi. Each batch task fans out sampling tasks (nested
parallelism), waits for them, and pushes its counts to a parameter-server actor that
several batches update concurrently. The driver shows progress as batches finish, then
checks the estimate and prints the throughput.
"""

from __future__ import annotations

import math
import random
import sys
import time
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
    """Parameter server: batches push counts, anyone reads the running estimate."""

    def __init__(self) -> None:
        self.inside = 0
        self.total = 0
        self.updates = 0

    def push(self, inside: int, total: int) -> int:
        self.inside += inside
        self.total += total
        self.updates += 1
        return self.updates

    def estimate(self) -> tuple[float, int, int]:
        return 4.0 * self.inside / max(self.total, 1), self.total, self.updates


@px.remote
def batch(first_seed: int, chunks: int, per_chunk: int, server: px.ActorHandle) -> int:
    """Fan out sampling tasks, gather them, push the sum to the parameter server."""
    counts = px.get([sample.remote(first_seed + i, per_chunk) for i in range(chunks)])
    px.get(server.push.remote(sum(counts), chunks * per_chunk))
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
    """Run the demo; True when pi came out within 0.01."""
    started = time.perf_counter()
    px.init(num_cpus=num_cpus, ignore_reinit_error=True)
    per_chunk = max(1, samples // (batches * chunks))
    server = Estimator.remote()
    pending = [batch.remote(b * chunks, chunks, per_chunk, server) for b in range(batches)]
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
