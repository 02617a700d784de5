"""Single-machine runtime benchmark: p2pexec side by side with Ray, Dask and a process pool.

Run: `python benchmarks/bench_core.py [--systems p2pexec,ray,dask,ppe,echo] [--quick]
[--json out.json]`. Every system runs in its own fresh subprocess (they never share a
process or leave state for the next), with 2 workers / num_cpus=2 and a time budget, on
the same workloads:

* init: time until two workers are ready (see the table's footnotes for each system);
* tiny tasks `noop(x) -> x`: sync (submit, get, one at a time; also the round-trip p50 and
  p99) and async (10,000 submitted, then gathered);
* nested: 200 parent tasks, each submitting 10 children and getting them;
* chain: 1,000 tasks, each taking the previous task's ref as its argument;
* actor calls on a counter actor, sync (call + get one at a time) and async (N, then get);
* put/get of a 1 MiB and a 100 MiB numpy array; a 10 MiB numpy array as a task argument.

The "trio echo" column is the raw reference (`echo_reference.py`): the same framing
through two worker processes with nothing else, the practical limit of one hop.
It prints one table, then the issue's targets computed from this same run, PASS/MISS.
Systems that are not installed show "n/a". Warm-up precedes every timed section; cheap
sections report the median of 3 repeats, heavy ones a single run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from _common import format_value, median, percentile, render_table

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20


# ---- workloads (plain functions, shipped to every system as they are) -----------------

def noop(x: Any) -> Any:
    """The tiny task: returns its argument."""
    return x


def nbytes(array: Any) -> int:
    """The big-argument task: touches the array's size only."""
    return int(array.nbytes)


def rendezvous(directory: str, wait_s: float) -> tuple[int, bool]:
    """Meet one other task in another process: (pid, whether both ran at the same time)."""
    import os
    import time

    open(os.path.join(directory, str(os.getpid())), "w").close()
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        if len(os.listdir(directory)) >= 2:
            return os.getpid(), True
        time.sleep(0.0005)
    return os.getpid(), False


CHILD: Any = None
"""The remote noop that nested parents submit; a module global, set by the system under
test before its parent function is first shipped (cloudpickle ships it with the parent)."""


def px_parent(i: int, children: int) -> int:
    """Nested parent for p2pexec: submit `children` noop tasks, wait for them, sum."""
    import p2pexec as px

    return sum(px.get([CHILD.remote(i + j) for j in range(children)]))


def ray_parent(i: int, children: int) -> int:
    """Nested parent for Ray: a blocked ray.get lends its CPU to the children."""
    import ray

    return sum(ray.get([CHILD.remote(i + j) for j in range(children)]))


def dask_parent(i: int, children: int) -> int:
    """Nested parent for Dask: worker_client() secedes from the thread pool while waiting."""
    from distributed import worker_client

    with worker_client() as client:
        return sum(client.gather([client.submit(noop, i + j, pure=False)
                                  for j in range(children)]))


class Counter:
    """The actor: a counter whose increments must arrive in order."""

    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


# ---- parameters -----------------------------------------------------------------------

@dataclass(frozen=True)
class Params:
    repeats: int = 3
    sync_n: int = 2000
    sync_max_s: float = 4.0
    """A sync repeat stops after this long even short of sync_n (slow systems)."""
    async_n: int = 10_000
    slow_repeat_s: float = 10.0
    """A section whose first repeat took longer than this is not repeated."""
    warm_sync: int = 100
    warm_async: int = 1000
    nested_parents: int = 200
    nested_children: int = 10
    chain_n: int = 1000
    actor_sync_n: int = 2000
    actor_async_n: int = 10_000
    put_small_reps: int = 20
    put_big_reps: int = 3
    arg_reps: int = 10
    arg_mib: int = 10
    echo_sync_n: int = 3000
    echo_pipelined_n: int = 50_000
    budget_s: float = 300.0
    """Per system; sections left when it runs out are shown as "skip"."""

    @classmethod
    def quick(cls) -> Params:
        return cls(repeats=1, sync_n=200, sync_max_s=1.0, async_n=1000, warm_sync=20,
                   warm_async=100, nested_parents=20, chain_n=100, actor_sync_n=200,
                   actor_async_n=1000, put_small_reps=3, put_big_reps=1, arg_reps=2,
                   echo_sync_n=500, echo_pipelined_n=5000, budget_s=45.0)


# ---- systems under test ---------------------------------------------------------------

class Unsupported(Exception):
    """The system lacks this feature (ProcessPool has no actors, say): its row shows n/a."""


class System(ABC):
    """What a benchmark needs from a system. Every system can start, run functions, get
    results and stop; the optional features raise `Unsupported` unless a system has them."""

    name = ""

    @abstractmethod
    def start(self) -> None:
        """Start the system with two workers."""

    def ready(self) -> None:
        """Block until the system itself says two workers are ready (when it can say so)."""
        raise Unsupported(f"{self.name} has no readiness signal")

    @abstractmethod
    def remote(self, function: Callable) -> Callable[..., Any]:
        """A submitter: calling it starts `function` remotely and returns a handle."""

    @abstractmethod
    def get(self, handle: Any, timeout: float) -> Any:
        """The value behind one handle."""

    @abstractmethod
    def get_all(self, handles: list, timeout: float) -> list:
        """The values behind many handles, in order."""

    def chain_link(self, function: Callable) -> Callable[..., Any]:
        """A submitter whose handle arguments are resolved to values before the task runs."""
        raise Unsupported(f"{self.name} cannot pass results between tasks")

    def nested(self) -> Callable[[int, int], Any]:
        """A submitter of parent(i, children): run that many noop tasks, sum their results."""
        raise Unsupported(f"{self.name} has no nested tasks")

    def actor(self) -> Any:
        raise Unsupported(f"{self.name} has no actors")

    def call(self, actor: Any) -> Any:
        raise Unsupported(f"{self.name} has no actors")

    def get_calls(self, handles: list, timeout: float) -> list:
        return self.get_all(handles, timeout)

    def put(self, value: Any) -> Any:
        raise Unsupported(f"{self.name} has no object store")

    def get_object(self, handle: Any, timeout: float) -> Any:
        return self.get(handle, timeout)

    @abstractmethod
    def stop(self) -> None:
        """Shut the system down and end its workers."""


class P2pexec(System):
    name = "p2pexec"

    def start(self) -> None:
        import p2pexec as px

        self.px = px
        px.init(num_cpus=2)

    def ready(self) -> None:
        while self.px.nodes()[0]["workers"] < 2:
            time.sleep(0.002)

    def remote(self, function: Callable) -> Callable[..., Any]:
        return self.px.remote(function).remote

    def get(self, handle: Any, timeout: float) -> Any:
        return self.px.get(handle, timeout=timeout)

    def get_all(self, handles: list, timeout: float) -> list:
        return self.px.get(handles, timeout=timeout)

    chain_link = remote

    def nested(self) -> Callable[[int, int], Any]:
        global CHILD
        CHILD = self.px.remote(noop)
        return self.px.remote(px_parent).remote

    def actor(self) -> Any:
        actor = self.px.remote(Counter).remote()
        return actor

    def call(self, actor: Any) -> Any:
        return actor.incr.remote()

    def put(self, value: Any) -> Any:
        return self.px.put(value)

    def stop(self) -> None:
        self.px.shutdown()


class Attached(P2pexec):
    """p2pexec through a driver attached to a `p2pexec join` node (started here, with two
    CPUs, on a private data dir and a loopback port), instead of an embedded node."""

    name = "attached"

    def start(self) -> None:
        import p2pexec as px
        from p2pexec.config import control_socket_path
        from p2pexec.net.security import new_token

        self.px = px
        self.data_dir = tempfile.mkdtemp(prefix="p2pexec-bench-")
        env = {**os.environ, "P2PEXEC_TOKEN": new_token()}
        self.node = subprocess.Popen(
            [sys.executable, "-m", "p2pexec.cli", "join", "--host", "127.0.0.1", "--port",
             "0", "--no-mdns", "--gossip", "local", "--cpus", "2", "--name", "bench",
             "--data-dir", self.data_dir], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not control_socket_path(self.data_dir).exists():
            if time.monotonic() > deadline or self.node.poll() is not None:
                raise RuntimeError("the p2pexec join node did not start")
            time.sleep(0.01)
        px.init(address=self.data_dir)

    def stop(self) -> None:
        self.px.shutdown()
        self.node.terminate()
        self.node.wait(timeout=30)
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Ray(System):
    name = "ray"

    def start(self) -> None:
        import ray

        self.ray = ray
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    def remote(self, function: Callable) -> Callable[..., Any]:
        return self.ray.remote(function).remote

    def get(self, handle: Any, timeout: float) -> Any:
        return self.ray.get(handle, timeout=timeout)

    get_all = get
    chain_link = remote

    def nested(self) -> Callable[[int, int], Any]:
        global CHILD
        CHILD = self.ray.remote(noop)
        return self.ray.remote(ray_parent).remote

    def actor(self) -> Any:
        return self.ray.remote(Counter).remote()

    def call(self, actor: Any) -> Any:
        return actor.incr.remote()

    def put(self, value: Any) -> Any:
        return self.ray.put(value)

    def stop(self) -> None:
        self.ray.shutdown()


class Dask(System):
    name = "dask"

    def start(self) -> None:
        import distributed

        self.distributed = distributed
        self.client = distributed.Client(n_workers=2, threads_per_worker=1, processes=True,
                                         dashboard_address=None)

    def ready(self) -> None:
        self.client.wait_for_workers(2)

    def remote(self, function: Callable) -> Callable[..., Any]:
        submit = self.client.submit
        return lambda *args: submit(function, *args, pure=False)

    def get(self, handle: Any, timeout: float) -> Any:
        return handle.result(timeout=timeout)

    def get_all(self, handles: list, timeout: float) -> list:
        self.distributed.wait(handles, timeout=timeout)
        return self.client.gather(handles)

    chain_link = remote

    def nested(self) -> Callable[[int, int], Any]:
        return self.remote(dask_parent)

    def actor(self) -> Any:
        return self.client.submit(Counter, actor=True).result()

    def call(self, actor: Any) -> Any:
        return actor.incr()

    def get_calls(self, handles: list, timeout: float) -> list:
        return [handle.result(timeout=timeout) for handle in handles]

    def put(self, value: Any) -> Any:
        return self.client.scatter(value, hash=False)

    def stop(self) -> None:
        self.client.close()
        self.client.cluster.close()


class ProcessPool(System):
    name = "ppe"

    def start(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=2)

    def remote(self, function: Callable) -> Callable[..., Any]:
        submit = self.pool.submit
        return lambda *args: submit(function, *args)

    def get(self, handle: Any, timeout: float) -> Any:
        return handle.result(timeout=timeout)

    def get_all(self, handles: list, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        return [handle.result(timeout=max(0.0, deadline - time.monotonic()))
                for handle in handles]

    def stop(self) -> None:
        self.pool.shutdown()


SYSTEMS: dict[str, type[System]] = {cls.name: cls for cls in (P2pexec, Attached, Ray, Dask,
                                                              ProcessPool)}
MODULES = {"p2pexec": "p2pexec", "attached": "p2pexec", "ray": "ray", "dask": "distributed",
           "ppe": "concurrent.futures", "echo": "trio"}
ORDER = ["p2pexec", "attached", "ray", "dask", "ppe", "echo"]
LABELS = {"p2pexec": "p2pexec", "attached": "px attached", "ray": "Ray", "dask": "Dask",
          "ppe": "ProcessPool", "echo": "trio echo"}


# ---- the benchmarks (run inside one system's subprocess) ------------------------------

class Recorder:
    """Results of one system, flushed to a file after every section so a kill keeps them."""

    def __init__(self, path: str, budget_s: float) -> None:
        self.path = path
        self.values: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.deadline = time.monotonic() + budget_s

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def section(self, keys: list[str], run: Callable[[], dict[str, Any]]) -> None:
        """Run one section; n/a when unsupported, ERR with the reason when it fails."""
        if self.remaining() <= 0:
            self.values.update(dict.fromkeys(keys, "skip"))
        else:
            try:
                self.values.update(run())
            except Unsupported:
                self.values.update(dict.fromkeys(keys))
            except Exception as exc:
                self.values.update(dict.fromkeys(keys, "ERR"))
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self.errors[keys[0]] = f"{type(exc).__name__}: {first_line}"[:300]
        self.flush()

    def flush(self) -> None:
        with open(self.path, "w") as file:
            json.dump({"values": self.values, "errors": self.errors}, file)


def repeated(params: Params, measure: Callable[[], float]) -> float:
    """Median of `params.repeats` runs; one run if the first was slow."""
    results = []
    for _ in range(params.repeats):
        start = time.perf_counter()
        results.append(measure())
        if time.perf_counter() - start > params.slow_repeat_s:
            break
    return median(results)


def bench_init(system: System, params: Params, rec: Recorder) -> None:
    """Both init rows from one start: the system's own readiness signal, then the moment
    two tasks are seen running at the same time in two worker processes."""
    start = time.perf_counter()
    system.start()
    try:
        system.ready()
        rec.values["init_ready"] = time.perf_counter() - start
    except Unsupported:
        rec.values["init_ready"] = None
    meet = system.remote(rendezvous)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with tempfile.TemporaryDirectory() as directory:
            got = system.get_all([meet(directory, 1.0), meet(directory, 1.0)], 120)
        if got[0][1] and got[1][1] and got[0][0] != got[1][0]:
            rec.values["init_concurrent"] = time.perf_counter() - start
            break
    else:
        rec.values["init_concurrent"] = "ERR"
        rec.errors["init_concurrent"] = "two tasks never ran at the same time within 120 s"
    if rec.values["init_ready"] is None:
        rec.values["init_ready"] = rec.values["init_concurrent"]
        rec.values["init_ready_by"] = "concurrent tasks"
    rec.flush()


def bench_tiny(system: System, params: Params, rec: Recorder) -> None:
    submit = system.remote(noop)
    timeout = max(rec.remaining(), 30)

    def sync() -> dict[str, Any]:
        for i in range(params.warm_sync):
            system.get(submit(i), timeout)
        latencies: list[float] = []

        def one_repeat() -> float:
            stop = time.perf_counter() + params.sync_max_s
            count = 0
            for i in range(params.sync_n):
                t0 = time.perf_counter()
                if system.get(submit(i), timeout) != i:
                    raise AssertionError("noop returned a wrong value")
                t1 = time.perf_counter()
                latencies.append(t1 - t0)
                count += 1
                if t1 > stop:
                    break
            return count / sum(latencies[-count:])

        rate = repeated(params, one_repeat)
        return {"sync_rate": rate, "rtt_p50": percentile(latencies, 0.5) * 1e3,
                "rtt_p99": percentile(latencies, 0.99) * 1e3}

    def many() -> dict[str, Any]:
        expected = list(range(params.async_n))
        system.get_all([submit(i) for i in range(params.warm_async)], timeout)

        def one_repeat() -> float:
            start = time.perf_counter()
            got = system.get_all([submit(i) for i in expected], timeout)
            elapsed = time.perf_counter() - start
            if got != expected:
                raise AssertionError("async noop results differ from their arguments")
            return params.async_n / elapsed

        return {"async_rate": repeated(params, one_repeat)}

    rec.section(["sync_rate", "rtt_p50", "rtt_p99"], sync)
    rec.section(["async_rate"], many)


def bench_graphs(system: System, params: Params, rec: Recorder) -> None:
    timeout = max(rec.remaining(), 30)

    def nested() -> dict[str, Any]:
        parents, children = params.nested_parents, params.nested_children
        parent = system.nested()
        system.get_all([parent(i, children) for i in range(4)], timeout)
        start = time.perf_counter()
        got = system.get_all([parent(i, children) for i in range(parents)], timeout)
        elapsed = time.perf_counter() - start
        if got != [children * i + children * (children - 1) // 2 for i in range(parents)]:
            raise AssertionError("nested results are wrong")
        return {"nested_rate": parents * (children + 1) / elapsed}

    def chain() -> dict[str, Any]:
        link = system.chain_link(noop)
        system.get(link(link(0)), timeout)
        start = time.perf_counter()
        ref = link(0)
        for _ in range(params.chain_n - 1):
            ref = link(ref)
        got = system.get(ref, timeout)
        elapsed = time.perf_counter() - start
        if got != 0:
            raise AssertionError(f"chain ended with {got!r}, not 0")
        return {"chain_rate": params.chain_n / elapsed}

    rec.section(["nested_rate"], nested)
    rec.section(["chain_rate"], chain)


def bench_actor(system: System, params: Params, rec: Recorder) -> None:
    """A counter actor: every call must be counted exactly once; sync calls in order.
    Whether async calls ran in submission order is recorded (Dask does not promise it)."""
    timeout = max(rec.remaining(), 30)
    state: dict[str, Any] = {}

    def sync() -> dict[str, Any]:
        actor = state["actor"] = system.actor()
        for _ in range(params.warm_sync):
            system.get(system.call(actor), timeout)
        calls = params.warm_sync
        start = time.perf_counter()
        stop = start + params.sync_max_s
        for _ in range(params.actor_sync_n):
            calls += 1
            if system.get(system.call(actor), timeout) != calls:
                raise AssertionError("sync actor calls ran out of order")
            if time.perf_counter() > stop:
                break
        state["calls"] = calls
        return {"actor_sync_rate": (calls - params.warm_sync) / (time.perf_counter() - start)}

    def many() -> dict[str, Any]:
        if "calls" not in state:
            if rec.values.get("actor_sync_rate") is None:
                raise Unsupported("no actors in this system")
            raise RuntimeError("no actor: the sync section failed")
        actor, calls, n = state["actor"], state["calls"], params.actor_async_n
        start = time.perf_counter()
        got = system.get_calls([system.call(actor) for _ in range(n)], timeout)
        rate = n / (time.perf_counter() - start)
        expected = list(range(calls + 1, calls + n + 1))
        if sorted(got) != expected:
            raise AssertionError("async actor calls were lost or repeated")
        return {"actor_async_rate": rate, "actor_async_in_order": got == expected}

    rec.section(["actor_sync_rate"], sync)
    rec.section(["actor_async_rate"], many)


def bench_objects(system: System, params: Params, rec: Recorder) -> None:
    import numpy

    timeout = max(rec.remaining(), 30)

    def put_get(mib: int, reps: int) -> dict[str, Any]:
        array = numpy.arange(mib * MIB // 8, dtype=numpy.float64)
        system.get_object(system.put(array), timeout)
        puts, gets = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            ref = system.put(array)
            t1 = time.perf_counter()
            value = system.get_object(ref, timeout)
            t2 = time.perf_counter()
            puts.append(t1 - t0)
            gets.append(t2 - t1)
            if not numpy.array_equal(value, array):
                raise AssertionError("get returned a different array")
            del ref, value
        return {f"put_{mib}": median(puts) * 1e3, f"get_{mib}": median(gets) * 1e3}

    def argument() -> dict[str, Any]:
        array = numpy.ones(params.arg_mib * MIB // 8)
        submit = system.remote(nbytes)
        system.get(submit(array), timeout)
        durations = []
        for _ in range(params.arg_reps):
            t0 = time.perf_counter()
            got = system.get(submit(array), timeout)
            durations.append(time.perf_counter() - t0)
            if got != array.nbytes:
                raise AssertionError(f"task saw {got} bytes, not {array.nbytes}")
        seconds = median(durations)
        return {"arg_ms": seconds * 1e3, "arg_rate": params.arg_mib / seconds}

    rec.section(["put_1", "get_1"], lambda: put_get(1, params.put_small_reps))
    rec.section(["put_100", "get_100"], lambda: put_get(100, params.put_big_reps))
    rec.section(["arg_ms", "arg_rate"], argument)


def run_child(name: str, params: Params, out: str) -> None:
    """Everything for one system, in this fresh process."""
    rec = Recorder(out, params.budget_s)
    if name == "echo":
        import trio
        from echo_reference import measure

        rec.section(["init_ready", "sync_rate", "rtt_p50", "rtt_p99", "async_rate",
                     "arg_ms", "arg_rate"], lambda: trio.run(
            measure, params.echo_sync_n, params.echo_pipelined_n, params.arg_reps,
            params.repeats, params.arg_mib))
        return
    system = SYSTEMS[name]()
    try:
        bench_init(system, params, rec)
        for bench in (bench_tiny, bench_graphs, bench_actor, bench_objects):
            bench(system, params, rec)
    finally:
        system.stop()


# ---- the driver: one subprocess per system, one table ---------------------------------

def installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(MODULES[name]) is not None


def run_system(name: str, params: Params, quick: bool) -> dict[str, Any]:
    """Run one system's child; its results, or a note on why there are none."""
    if not installed(name):
        return {"values": {}, "errors": {}, "status": "not installed"}
    with tempfile.TemporaryDirectory(prefix="bench_core_") as directory:
        out = os.path.join(directory, "out.json")
        log = os.path.join(directory, "log.txt")
        command = [sys.executable, os.path.abspath(__file__), "--child", name, "--out", out]
        if quick:
            command.append("--quick")
        started = time.monotonic()
        with open(log, "w") as log_file:
            child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=HERE)
            try:
                status = "ok" if child.wait(timeout=params.budget_s + 90) == 0 else (
                    f"exit {child.returncode}")
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                status = "killed after its budget"
        elapsed = time.monotonic() - started
        result = {"values": {}, "errors": {}}
        if os.path.exists(out):
            with open(out) as file:
                result = json.load(file)
        if status != "ok":
            with open(log) as file:
                result["log_tail"] = file.read()[-2000:]
    result["status"] = status
    result["seconds"] = elapsed
    print(f"  {LABELS[name]}: {status} in {elapsed:.0f} s", file=sys.stderr, flush=True)
    return result


def metric_rows(params: Params) -> list[tuple[str, str, str]]:
    """(key, label, unit) of every table row, with this run's counts in the labels."""
    p = params
    return [
        ("init_ready", "init -> 2 ready workers [a]", "s"),
        ("init_concurrent", "init -> 2 tasks running at once [b]", "s"),
        ("sync_rate", "tiny tasks, sync (one at a time)", "tasks/s"),
        ("async_rate", f"tiny tasks, async ({p.async_n:,} then get) [c]", "tasks/s"),
        ("rtt_p50", "round trip p50", "ms"),
        ("rtt_p99", "round trip p99", "ms"),
        ("nested_rate", f"nested {p.nested_parents} x {p.nested_children} [d]", "tasks/s"),
        ("chain_rate", f"chain of {p.chain_n:,} dependent tasks", "tasks/s"),
        ("actor_sync_rate", "actor calls, sync", "calls/s"),
        ("actor_async_rate", f"actor calls, async ({p.actor_async_n:,} then get)",
         "calls/s"),
        ("put_1", "put 1 MiB numpy", "ms"),
        ("get_1", "get 1 MiB numpy (same process)", "ms"),
        ("put_100", "put 100 MiB numpy", "ms"),
        ("get_100", "get 100 MiB numpy (same process)", "ms"),
        ("arg_ms", f"{p.arg_mib} MiB numpy argument to a task", "ms/call"),
        ("arg_rate", f"{p.arg_mib} MiB numpy argument to a task", "MiB/s"),
    ]


@dataclass(frozen=True)
class Target:
    label: str
    key: str
    other: str
    bound: float
    at_least: bool
    """True: mine / other >= bound; False: mine / other <= bound."""
    mine: str = "p2pexec"


TARGETS = [
    Target("async tiny tasks >= 10x Ray", "async_rate", "ray", 10, True),
    Target("async tiny tasks >= 2x ProcessPool", "async_rate", "ppe", 2, True),
    Target("sync round trip p50 <= 1.5x ProcessPool", "rtt_p50", "ppe", 1.5, False),
    Target("sync round trip p50 <= 0.2x Ray", "rtt_p50", "ray", 0.2, False),
    Target("actor calls sync >= 4x Ray", "actor_sync_rate", "ray", 4, True),
    Target("actor calls async >= 4x Ray", "actor_async_rate", "ray", 4, True),
    Target("nested >= 3x Ray", "nested_rate", "ray", 3, True),
    Target("chain >= 3x Ray", "chain_rate", "ray", 3, True),
    Target("10 MiB argument MiB/s >= 1x Ray", "arg_rate", "ray", 1, True),
    Target("attached: async tiny tasks >= 1x embedded", "async_rate", "p2pexec", 1, True,
           "attached"),
    Target("attached: sync round trip p50 <= 1.3x embedded", "rtt_p50", "p2pexec", 1.3,
           False, "attached"),
]


def number(results: dict[str, Any], system: str, key: str) -> float | None:
    value = results.get(system, {}).get("values", {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def target_lines(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target's ratio and verdict from this run's numbers."""
    verdicts = []
    for t in TARGETS:
        mine, theirs = number(results, t.mine, t.key), number(results, t.other, t.key)
        if mine is None or theirs is None or theirs == 0:
            verdicts.append({"target": t.label, "ratio": None, "verdict": "n/a"})
            continue
        ratio = mine / theirs
        ok = ratio >= t.bound if t.at_least else ratio <= t.bound
        verdicts.append({"target": t.label, "ratio": ratio, "verdict": "PASS" if ok else "MISS"})
    init = number(results, "p2pexec", "init_ready")
    verdicts.append({"target": "px.init() to two ready workers < 1 s", "ratio": init,
                     "verdict": "n/a" if init is None else "PASS" if init < 1 else "MISS"})
    return verdicts


def report(results: dict[str, Any], params: Params, names: list[str],
           load: tuple[list[float], list[float]]) -> str:
    header = ["benchmark", "unit", *(LABELS[n] for n in names)]
    rows = []
    for key, label, unit in metric_rows(params):
        cells = []
        for name in names:
            values = results[name].get("values", {})
            value = values.get(key)
            if results[name]["status"] == "not installed":
                value = "n/a"
            elif name == "echo" and key not in values:
                value = "-"
            elif key not in values and results[name]["status"] != "ok":
                value = "ERR"
            cells.append(format_value(value, unit))
        rows.append([label, unit, *cells])
    lines = [render_table(header, rows), ""]
    echo = results.get("echo", {}).get("values", {})
    lines += [
        "[a] p2pexec: px.init() until px.nodes()[0]['workers'] >= 2 (workers that said Hello);"
        " Dask: Client(...) then",
        "    client.wait_for_workers(2); Ray and ProcessPool have no such signal: their row"
        " repeats [b]; trio echo:",
        "    spawn two worker processes until both said Hello.",
        "[b] from init until two rendezvous tasks, submitted right after init, were seen"
        " running at the same time in",
        "    two distinct worker processes (includes the submit/get of that pair).",
        "[c] trio echo: pipelined with 100 frames per send_all (the coalesced limit); with one"
        " frame per send_all it did",
        f"    {format_value(echo.get('async_one_frame_per_send'), 'frames/s')} frames/s.",
        f"[d] tasks/s counts parents and children: "
        f"{params.nested_parents * (params.nested_children + 1):,} tasks. Dask parents use"
        " worker_client() (secede/rejoin).",
        "Sync and async tiny tasks: median of"
        f" {params.repeats} repeats (1 when a repeat took > {params.slow_repeat_s:.0f} s);"
        " latencies pooled over repeats.",
        "All systems: 2 worker processes / num_cpus=2, each system in its own fresh"
        " subprocess; n/a = not supported or",
        "not installed, ERR = failed (see JSON), skip = per-system time budget ran out.",
        f"Load average before / after: {' '.join(f'{x:.2f}' for x in load[0])} /"
        f" {' '.join(f'{x:.2f}' for x in load[1])} on {os.cpu_count()} CPUs, shared with"
        " other agents' work: noisy.",
        "",
        "Targets (p2pexec against the others, this run):",
    ]
    for verdict in target_lines(results):
        ratio = verdict["ratio"]
        shown = "" if ratio is None else f"{ratio:.2f}x" if "< 1 s" not in verdict[
            "target"] else f"{ratio:.2f} s"
        lines.append(f"  {verdict['verdict']:<5} {verdict['target']:<45} {shown}")
    for name in names:
        status = results[name]["status"]
        if status not in ("ok", "not installed") or results[name].get("errors"):
            lines.append(f"{LABELS[name]}: {status}")
            lines += [f"  {key}: {error}" for key, error in results[name].get("errors",
                                                                                {}).items()]
            if results[name].get("log_tail"):
                lines.append("  log tail: " + results[name]["log_tail"].strip()[-600:])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default=",".join(ORDER),
                        help=f"comma-separated subset of {','.join(ORDER)}")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    params = Params.quick() if args.quick else Params()
    if args.child:
        run_child(args.child, params, args.out)
        return
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {ORDER}")
    names = [n for n in ORDER if n in names]
    print(f"bench_core: {', '.join(names)} ({'quick' if args.quick else 'full'} run)",
          file=sys.stderr, flush=True)
    load_before = list(os.getloadavg())
    results = {name: run_system(name, params, args.quick) for name in names}
    load_after = list(os.getloadavg())
    print(report(results, params, names, (load_before, load_after)))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"params": asdict(params), "quick": args.quick,
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "load": [load_before, load_after], "results": results,
                       "targets": target_lines(results)}, file, indent=1)


if __name__ == "__main__":
    main()
