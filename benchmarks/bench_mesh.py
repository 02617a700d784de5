"""Execution across nodes on this machine: p2pexec join processes against Ray raylets.

Run: `python benchmarks/bench_mesh.py [--nodes 1,2,3] [--repeats 2]`. For each cluster
size, in one run:

* p2pexec: that many `p2pexec join` processes on 127.0.0.1 with 2 CPUs each; a driver
  attached to the first submits everything (work reaches the others by stealing).
* Ray (when installed): `ray.cluster_utils.Cluster` with that many raylets of 2 CPUs,
  tasks submitted with `scheduling_strategy="SPREAD"`.

Figures: makespan of 2,000 tasks of `time.sleep(0.01)` against the ideal (2,000 x 10 ms
/ total CPUs), and throughput of 10,000 no-op tasks (submit all, get all). Recovery, on 3
nodes: 2,000 tasks of 20 ms; one second after they are submitted the last node is killed
(p2pexec: SIGKILL of its join process; Ray: `cluster.remove_node` of its last raylet);
the figure is the time from the kill until every result is back, and the makespan. The machine has
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

P2PEXEC_RECOVERY = """
import json, time
import p2pexec as px

px.init()

@px.remote
def nap(i):
    time.sleep(0.02)
    return i

px.get([nap.remote(0) for _ in range(100)])  # warm
started = time.time()
refs = [nap.remote(i) for i in range(2000)]
print(json.dumps(started), flush=True)
assert px.get(refs, timeout=600) == list(range(2000))
print(json.dumps([started, time.time()]), flush=True)
"""

RAY_RECOVERY = """
import json, time
import ray
from ray.cluster_utils import Cluster

cluster = Cluster()
nodes = [cluster.add_node(num_cpus={cpus}) for _ in range(3)]
ray.init(address=cluster.address, log_to_driver=False)

@ray.remote(scheduling_strategy="SPREAD")
def nap(i):
    time.sleep(0.02)
    return i

ray.get([nap.remote(0) for _ in range(100)])
started = time.time()
refs = [nap.remote(i) for i in range(2000)]
time.sleep(1.0)
killed = time.time()
cluster.remove_node(nodes[-1])
assert ray.get(refs, timeout=600) == list(range(2000))
done = time.time()
print(json.dumps([done - killed, done - started]))
ray.shutdown()
cluster.shutdown()
"""


def p2pexec_recovery() -> tuple[float, float]:
    """(seconds from the kill until every result is back, makespan)."""
    import os
    import time

    with LocalCluster(3, cpus=CPUS, prefix="p2pexec-recovery-") as nodes:
        proc = subprocess.Popen([sys.executable, "-c", P2PEXEC_RECOVERY], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "P2PEXEC_DATA_DIR": str(nodes.data_dirs[0])})
        json.loads(proc.stdout.readline())
        time.sleep(1.0)
        killed = time.time()
        nodes.kill(2)
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(out + err)
        started, done = json.loads(out.strip().splitlines()[-1])
        return done - killed, done - started


def ray_recovery() -> tuple[float, float] | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return None
    return _driver([sys.executable, "-c", textwrap.dedent(RAY_RECOVERY.format(cpus=CPUS))], {})


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
    # the figures are the last JSON line (Ray may print more after it)
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith("["))
    first, second = json.loads(line)
    return first, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1,2,3")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--recovery", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure recovery from a node kill on 3 nodes")
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
    if not args.recovery:
        return
    rows = []
    for system, run in (("p2pexec", p2pexec_recovery), ("ray", ray_recovery)):
        samples = [run() for _ in range(args.repeats)]
        if samples[0] is None:
            rows.append([f"{system} x3", "n/a", "n/a"])
            continue
        rows.append([f"{system} x3", _spread([s[0] for s in samples]),
                     _spread([s[1] for s in samples])])
    print()
    print(render_table(["cluster", "kill -> all results s (range)", "makespan s (range)"],
                       rows))


def _spread(values: list[float]) -> str:
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    main()
