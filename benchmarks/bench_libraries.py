"""The util libraries and async actors beside their originals: `Pool.map` against the
standard library's `multiprocessing.Pool` (and Ray's `ray.util.multiprocessing.Pool`),
`ActorPool.map` against Ray's `ActorPool`, each with 2 workers on this machine; calls of
an async actor against Ray's.

Run: `python benchmarks/bench_libraries.py [--repeats 3] [--items 100000]`. Each system
runs in its own subprocess; each figure is the median of `--repeats` timed runs after a
warm-up, with the spread (min-max). Ray columns show "n/a" unless Ray is installed
(`pip install '.[bench]'`). Targets (issue 11): `Pool.map` over 100,000 tiny items at
least as fast as the standard library's pool with the same chunksize; `ActorPool.map`
at least Ray's; async actor calls at least 4x Ray's; cancel of 10,000 queued tasks in
under a second.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import median, render_table

CHUNKSIZES = (None, 100)
ACTOR_ITEMS = 2000
ASYNC_CALLS = 5000
SLEEPING_CALLS = 1000
CANCELLED = 10_000


def tiny(x):
    return x + 1


def time_it(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def time_cancel(px, repeats: int) -> list[float]:
    """Seconds to cancel 10,000 tasks queued behind two that hold every CPU (the
    cancels only: results are then checked outside the timing)."""
    import os
    import tempfile

    @px.remote
    def hold_until(gate):
        while not os.path.exists(gate):
            time.sleep(0.005)

    @px.remote
    def never(x):
        return x

    times = []
    for _ in range(repeats + 1):  # the first run warms up
        gate = os.path.join(tempfile.mkdtemp(), "gate")
        holders = [hold_until.remote(gate) for _ in range(2)]
        refs = [never.remote(i) for i in range(CANCELLED)]
        started = time.perf_counter()
        for ref in refs:
            px.cancel(ref)
        times.append(time.perf_counter() - started)
        open(gate, "w").close()
        px.get(holders)
        for ref in refs[:: CANCELLED // 10]:
            try:
                px.get(ref)
            except Exception as exc:  # TaskCancelledError (Ray's or ours)
                assert "ancel" in type(exc).__name__, exc
            else:
                raise AssertionError("a cancelled task ran")
    return times[1:]


def run_system(system: str, items: int, repeats: int) -> dict[str, list[float]]:
    values = list(range(items))
    out: dict[str, list[float]] = {}
    if system == "stdlib":
        import multiprocessing
        with multiprocessing.Pool(2) as pool:
            for chunksize in CHUNKSIZES:
                out[f"map {chunksize}"] = time_it(
                    lambda c=chunksize: pool.map(tiny, values, chunksize=c), repeats)
        return out
    if system == "p2pexec":
        import p2pexec as px
        from p2pexec.util import ActorPool
        from p2pexec.util.multiprocessing import Pool
        px.init(num_cpus=2)
    else:
        import ray as px
        from ray.util import ActorPool
        from ray.util.multiprocessing import Pool
        px.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with Pool(2) as pool:
        for chunksize in CHUNKSIZES:
            out[f"map {chunksize}"] = time_it(
                lambda c=chunksize: pool.map(tiny, values, chunksize=c), repeats)
    out["cancel"] = time_cancel(px, repeats)  # before the actors below take both CPUs

    @px.remote(num_cpus=1)
    class Adder:
        def add(self, x):
            return x + 1

    actors = ActorPool([Adder.remote(), Adder.remote()])
    out["ActorPool.map"] = time_it(
        lambda: list(actors.map(lambda a, v: a.add.remote(v), range(ACTOR_ITEMS))), repeats)

    @px.remote
    class Echo:
        async def echo(self, x):
            return x

        async def nap(self, seconds):
            import asyncio
            await asyncio.sleep(seconds)

    echo = Echo.remote()
    out["async calls"] = time_it(
        lambda: px.get([echo.echo.remote(i) for i in range(ASYNC_CALLS)]), repeats)
    out["async naps"] = time_it(
        lambda: px.get([echo.nap.remote(0.01) for _ in range(SLEEPING_CALLS)]), repeats)
    px.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--system", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.system:
        print(json.dumps(run_system(args.system, args.items, args.repeats)))
        return
    results: dict[str, dict[str, list[float]] | None] = {}
    for system in ("p2pexec", "stdlib", "ray"):
        proc = subprocess.run([sys.executable, __file__, "--system", system, "--items",
                               str(args.items), "--repeats", str(args.repeats)],
                              capture_output=True, text=True, timeout=1800)
        results[system] = json.loads(proc.stdout.splitlines()[-1]) if proc.returncode == 0 \
            else None
        if proc.returncode != 0:  # Ray may be missing (the bench extra): say which
            print(f"{system} failed (exit {proc.returncode}): {proc.stderr[-2000:]}",
                  file=sys.stderr)
    rows_names = [f"Pool.map {args.items:,} items, chunksize {c or 'default'}"
                  for c in CHUNKSIZES] + [f"ActorPool.map {ACTOR_ITEMS:,} calls",
                                          f"async actor: {ASYNC_CALLS:,} calls, then get",
                                          f"async actor: {SLEEPING_CALLS:,} 10 ms naps",
                                          f"cancel {CANCELLED:,} queued tasks"]
    keys = [f"map {c}" for c in CHUNKSIZES] + ["ActorPool.map", "async calls", "async naps",
                                               "cancel"]

    def cell(system: str, key: str) -> str:
        times = (results.get(system) or {}).get(key)
        if not times:
            return "n/a"
        return f"{median(times):.3f} s ({min(times):.3f}-{max(times):.3f})"
    rows = [[name, *(cell(s, key) for s in ("p2pexec", "stdlib", "ray"))]
            for name, key in zip(rows_names, keys, strict=True)]
    print(render_table(["workload (median, min-max)", "p2pexec", "multiprocessing", "ray"],
                       rows))


if __name__ == "__main__":
    main()
