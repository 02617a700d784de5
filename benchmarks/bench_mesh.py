"""Execution across nodes on this machine: p2pexec join processes against Ray raylets.

Run: `python benchmarks/bench_mesh.py [--nodes 1,2,3] [--repeats 2]`. For each cluster
size, in one run:

* p2pexec: that many `p2pexec join` processes on 127.0.0.1 with 2 CPUs each; a driver
  attached to the first submits everything (work reaches the others by stealing).
* Ray (when installed): `ray.cluster_utils.Cluster` with that many raylets of 2 CPUs,
  tasks submitted with `scheduling_strategy="SPREAD"`.

Figures: makespan of 2,000 tasks of `time.sleep(0.01)` against the ideal (2,000 x 10 ms
/ total CPUs), and throughput of 10,000 no-op tasks (submit all, get all). The machine has
2 cores, so several nodes share them: the sleep tasks measure distribution, the no-op
tasks measure per-task overhead. Targets (issue 9): makespan within 1.15x of the ideal
on 3 nodes; 3-node no-op throughput >= 0.8x one node's and >= 5x Ray's three raylets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

from _common import median, render_table

from p2pexec.testing.processes import LocalCluster

CPUS = 2
SLEEPS, NOOPS = 2000, 10_000

P2PEXEC_DRIVER = """
import json, time
import p2pexec as px

px.init()

@px.remote
def nap():
    time.sleep(0.01)

@px.remote
def noop():
    return None

px.get([noop.remote() for _ in range(200)])  # warm: workers started, code shipped
started = time.perf_counter()
px.get([nap.remote() for _ in range({sleeps})], timeout=600)
makespan = time.perf_counter() - started
started = time.perf_counter()
px.get([noop.remote() for _ in range({noops})], timeout=600)
rate = {noops} / (time.perf_counter() - started)
print(json.dumps([makespan, rate]))
"""

RAY_DRIVER = """
import json, sys, time
import ray
from ray.cluster_utils import Cluster

cluster = Cluster()
for _ in range(int(sys.argv[1])):
    cluster.add_node(num_cpus={cpus})
ray.init(address=cluster.address, log_to_driver=False)
spread = dict(scheduling_strategy="SPREAD")

@ray.remote(**spread)
def nap():
    time.sleep(0.01)

@ray.remote(**spread)
def noop():
    return None

ray.get([noop.remote() for _ in range(200)])
started = time.perf_counter()
ray.get([nap.remote() for _ in range({sleeps})], timeout=600)
makespan = time.perf_counter() - started
started = time.perf_counter()
ray.get([noop.remote() for _ in range({noops})], timeout=600)
rate = {noops} / (time.perf_counter() - started)
print(json.dumps([makespan, rate]))
ray.shutdown()
cluster.shutdown()
"""


def p2pexec_run(n: int) -> tuple[float, float]:
    with LocalCluster(n, cpus=CPUS, prefix="p2pexec-mesh-") as nodes:
        code = P2PEXEC_DRIVER.format(sleeps=SLEEPS, noops=NOOPS)
        return _driver([sys.executable, "-c", code],
                       {"P2PEXEC_DATA_DIR": str(nodes.data_dirs[0])})


def ray_run(n: int) -> tuple[float, float] | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return None
    code = RAY_DRIVER.format(cpus=CPUS, sleeps=SLEEPS, noops=NOOPS)
    return _driver([sys.executable, "-c", textwrap.dedent(code), str(n)], {})


def _driver(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    import os

    done = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **env})
    if done.returncode != 0:
        raise RuntimeError(done.stdout + done.stderr)
    makespan, rate = json.loads(done.stdout.strip().splitlines()[-1])
    return makespan, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1,2,3")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(n) for n in args.nodes.split(",")]
    rows = []
    for n in sizes:
        ideal = SLEEPS * 0.01 / (CPUS * n)
        for system, run in (("p2pexec", p2pexec_run), ("ray", ray_run)):
            samples = [run(n) for _ in range(args.repeats)]
            if samples[0] is None:
                rows.append([f"{system} x{n}", "n/a", "n/a", "n/a", "n/a"])
                continue
            spans = [s[0] for s in samples]
            rates = [s[1] for s in samples]
            rows.append([f"{system} x{n}", f"{ideal:.2f}", f"{median(spans):.2f}",
                         f"{median(spans) / ideal:.2f} ({min(spans) / ideal:.2f}-"
                         f"{max(spans) / ideal:.2f})",
                         f"{median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"])
    print(render_table(["cluster", "ideal s", "makespan s", "x ideal (range)",
                        "no-op tasks/s (range)"], rows))


if __name__ == "__main__":
    main()
