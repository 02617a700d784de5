"""Object transfer between two nodes on this machine: p2pexec, a raw TCP copy, and Ray.

Run: `python benchmarks/bench_transfer.py [--sizes 16,128] [--repeats 3]`. For each size
(MiB) and repeat, in one run:

* p2pexec: two `p2pexec join` processes on 127.0.0.1. A driver on node A puts a random
  uint8 array; a driver on node B gets it through a pickled ref: B asks A over TLS and
  receives the segment on a bulk channel (AES-256-GCM frames on a second TCP connection,
  `net.bulk`). Timed from `get` to the array in hand. Also the receiving node's peak
  RSS growth (VmHWM), which must stay within the chunk window: the bytes go straight to
  shared memory.
* raw TCP: the same number of bytes over one loopback TCP connection between two
  processes (`sendall` of the buffer, `recv_into` a preallocated one): the ceiling.
* Ray (when installed): `ray.cluster_utils.Cluster` with two raylets; a task pinned to
  the first makes the array, a task pinned to the second takes it as its argument.
  Timed: the second task (its transfer plus one task round trip).

Targets (issue 8): p2pexec >= 40% of the raw TCP rate and >= Ray's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from _common import render_table

from p2pexec.testing.processes import LocalCluster

MIB = 1 << 20
HERE = Path(__file__).resolve().parent


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


# ---- raw TCP -------------------------------------------------------------------------

SENDER = """
import socket, sys
size, port = int(sys.argv[1]), int(sys.argv[2])
data = bytes(size)
with socket.create_connection(("127.0.0.1", port)) as sock:
    sock.sendall(data)
"""


def raw_tcp(size: int) -> float:
    """Seconds to copy `size` bytes over loopback TCP into a preallocated buffer."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        sender = subprocess.Popen([sys.executable, "-c", SENDER, str(size),
                                   str(server.getsockname()[1])])
        conn, _ = server.accept()
        buffer = memoryview(bytearray(size))
        started = time.perf_counter()
        got = 0
        with conn:
            while got < size:
                n = conn.recv_into(buffer[got:])
                if not n:
                    raise RuntimeError("sender stopped early")
                got += n
        elapsed = time.perf_counter() - started
        sender.wait(timeout=60)
    return elapsed


# ---- p2pexec -------------------------------------------------------------------------

PRODUCER = """
import json, pickle, sys, time
import numpy as np
import p2pexec as px
px.init()
for size in map(int, sys.argv[1:]):
    array = np.random.default_rng(size).integers(0, 255, size, dtype=np.uint8)
    ref = px.put(array)
    print(json.dumps(pickle.dumps(ref).hex()), flush=True)
    sys.stdin.readline()  # the reader is done: drop it
    del ref, array
"""

READER = """
import json, pickle, sys, time
import numpy  # imported before timing: unpickling the array would import it
import p2pexec as px
px.init()
ref = pickle.loads(bytes.fromhex(sys.argv[1]))
started = time.perf_counter()
array = px.get(ref, timeout=300)
elapsed = time.perf_counter() - started
print(json.dumps([elapsed, int(array.nbytes)]))
"""


def p2pexec_runs(sizes: list[int], repeats: int) -> dict[int, list[tuple[float, int]]]:
    """Per size: (seconds, receiving node's peak RSS growth in KiB) of each repeat."""
    mesh = LocalCluster(2, cpus=1, prefix="p2pexec-transfer-")
    try:
        mesh.start()
        mesh.wait_members(1, 2)
        (a_dir, b_dir), b_proc = mesh.data_dirs, mesh.procs[1]
        env_a = {**os.environ, "P2PEXEC_DATA_DIR": str(a_dir)}
        env_b = {**os.environ, "P2PEXEC_DATA_DIR": str(b_dir)}
        plan = [size for size in sizes for _ in range(repeats)]
        producer = subprocess.Popen([sys.executable, "-c", PRODUCER, *map(str, plan)],
                                    env=env_a, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
        results: dict[int, list[tuple[float, int]]] = {size: [] for size in sizes}
        for size in plan:
            ref = json.loads(producer.stdout.readline())
            time.sleep(0.5)  # the holder record is published
            before = peak_rss_kib(b_proc.pid)
            out = subprocess.run([sys.executable, "-c", READER, ref], env=env_b,
                                 capture_output=True, text=True, timeout=300, check=True)
            elapsed, nbytes = json.loads(out.stdout.strip().splitlines()[-1])
            assert nbytes == size
            results[size].append((elapsed, peak_rss_kib(b_proc.pid) - before))
            producer.stdin.write("\n")
            producer.stdin.flush()
        producer.stdin.close()
        producer.wait(timeout=60)
        return results
    finally:
        mesh.stop()


# ---- Ray -----------------------------------------------------------------------------

RAY = """
import json, sys, time
import numpy as np
import ray
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                        "resources": {"a": 1}})
cluster.add_node(num_cpus=1, resources={"b": 1})
ray.init(address=cluster.address, log_to_driver=False)

@ray.remote(resources={"a": 1})
def make(size):
    return np.random.default_rng(size).integers(0, 255, size, dtype=np.uint8)

@ray.remote(resources={"b": 1})
def take(array):
    return int(array.nbytes)

ray.get(take.remote(ray.get(make.remote(1000), timeout=120)), timeout=120)  # warm up
out = {}
for size in map(int, sys.argv[1:]):
    ref = make.remote(size)
    ray.wait([ref], timeout=120, fetch_local=False)
    started = time.perf_counter()
    assert ray.get(take.remote(ref), timeout=300) == size
    out.setdefault(str(size), []).append(time.perf_counter() - started)
    del ref
print(json.dumps(out))
ray.shutdown()
cluster.shutdown()
"""


def ray_runs(sizes: list[int], repeats: int) -> dict[int, list[float]] | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return None
    plan = [size for size in sizes for _ in range(repeats)]
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(RAY), *map(str, plan)],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        print("Ray failed:", done.stderr[-2000:], file=sys.stderr)
        return None
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {int(size): times for size, times in out.items()}


# ---- report --------------------------------------------------------------------------

def rate(size: int, seconds: list[float]) -> tuple[float, float, float]:
    """(median, min, max) MiB/s."""
    rates = [size / MIB / s for s in seconds]
    return statistics.median(rates), min(rates), max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,128", help="MiB, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(float(s) * MIB) for s in args.sizes.split(",")]
    raw = {size: [raw_tcp(size) for _ in range(args.repeats)] for size in sizes}
    px_results = p2pexec_runs(sizes, args.repeats)
    ray_results = ray_runs(sizes, args.repeats)
    rows, verdicts = [], []
    for size in sizes:
        raw_rate = rate(size, raw[size])
        px_rate = rate(size, [s for s, _ in px_results[size]])
        peak = max(kib for _, kib in px_results[size]) / 1024
        cells = [f"{size // MIB} MiB", f"{raw_rate[0]:,.0f} ({raw_rate[1]:,.0f}-"
                 f"{raw_rate[2]:,.0f})", f"{px_rate[0]:,.0f} ({px_rate[1]:,.0f}-"
                 f"{px_rate[2]:,.0f})"]
        if ray_results is not None:
            ray_rate = rate(size, ray_results[size])
            cells.append(f"{ray_rate[0]:,.0f} ({ray_rate[1]:,.0f}-{ray_rate[2]:,.0f})")
        else:
            ray_rate = None
            cells.append("n/a")
        cells.append(f"{peak:.1f}")
        rows.append(cells)
        share = px_rate[0] / raw_rate[0]
        verdicts.append(f"  {'PASS' if share >= 0.4 else 'MISS'}  {size // MIB} MiB: p2pexec "
                        f">= 40% of raw TCP          {share:.0%}")
        if ray_rate is not None:
            ratio = px_rate[0] / ray_rate[0]
            verdicts.append(f"  {'PASS' if ratio >= 1 else 'MISS'}  {size // MIB} MiB: "
                            f"p2pexec >= Ray                    {ratio:.2f}x")
    print(render_table(["object", "raw TCP MiB/s", "p2pexec MiB/s", "Ray MiB/s",
                        "receiver node peak RSS growth, MiB"], rows))
    print(f"median (min-max) of {args.repeats} repeats; p2pexec: get of a ref to an object "
          f"put on the other node (TLS request + sealed bulk channel into shared memory); "
          f"Ray: a "
          f"task on the second raylet taking the first raylet's object as its argument.")
    print("\nTargets:")
    print("\n".join(verdicts))
    print(f"Load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
