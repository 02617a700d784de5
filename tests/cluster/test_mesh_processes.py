"""Real `p2pexec join` processes on 127.0.0.1 share one driver's work by stealing, and
the driver gets every result when one of them is SIGKILLed mid-run."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable

from join_helpers import Launcher, status_cli, wait_for
from test_attach import driver, run_driver, stats
from test_object_transfer import three_nodes

TWO_THOUSAND = """
    import json, os, sys, time
    import p2pexec as px

    px.init()

    @px.remote
    def square(i):
        time.sleep(0.01)
        return i * i, os.getppid()  # the parent of a worker is its node

    refs = [square.remote(i) for i in range(2000)]
    print(json.dumps("submitted"), flush=True)
    results = px.get(refs, timeout=240)
    assert [value for value, _ in results] == [i * i for i in range(2000)]
    ran = {}
    for _, node in results:
        ran[node] = ran.get(node, 0) + 1
    print(json.dumps(ran), flush=True)
"""


def test_a_driver_on_one_node_gets_all_2000_results_after_another_is_killed(
        launcher: Launcher):
    a, b, c = three_nodes(launcher)
    proc = driver(TWO_THOUSAND, a.data_dir)
    assert json.loads(proc.stdout.readline()) == "submitted"
    # C has taken and finished work when it dies
    assert wait_for(lambda: stats(c)["done"] >= 50, 60, 0.05), stats(c)
    os.kill(c.proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    ran = {int(node): count for node, count in json.loads(out.strip().splitlines()[-1]).items()}
    assert sum(ran.values()) == 2000
    # every node ran a share (C's results that reached A before it died count)
    assert set(ran) == {a.proc.pid, b.proc.pid, c.proc.pid}, ran
    assert stats(b)["stolen_in"] > 0 and stats(a)["stolen_out"] > 0
    # `p2pexec status` on A shows every live member's figures, asked of it
    shown = {m["name"]: m["exec"] for m in status_cli(a.data_dir) if m["state"] == "alive"}
    assert set(shown) == {"a", "b"}, shown
    assert shown["b"]["stolen_in"] == stats(b)["stolen_in"] and shown["b"]["done"] > 0
    assert shown["a"]["stolen_out"] >= shown["b"]["stolen_in"]


NESTED = """
    import json, os, time
    import p2pexec as px

    px.init()

    @px.remote
    def leaf(i):
        time.sleep(0.01)
        return i

    @px.remote
    def branch(k):
        time.sleep(0.05)  # long enough to be worth stealing
        children = [leaf.remote(10 * k + j) for j in range(10)]
        return sum(px.get(children)), os.getppid(), px.get_runtime_context().get_node_id()

    results = px.get([branch.remote(k) for k in range(40)], timeout=120)
    assert [total for total, _, _ in results] == [sum(range(10 * k, 10 * k + 10))
                                                  for k in range(40)]
    members = {node["id"] for node in px.nodes()}
    by_process = {pid: {node for _, p, node in results if p == pid} for _, pid, _ in results}
    assert all(len(ids) == 1 and ids <= members for ids in by_process.values()), by_process
    here = px.get_runtime_context()
    assert here.worker_mode == "driver" and here.get_node_id() == px.nodes()[0]["id"]
    print(json.dumps(sorted(by_process)), flush=True)
"""


def test_tasks_stolen_by_another_node_own_the_tasks_they_submit(launcher: Launcher):
    """(and each reports the node it ran on in its runtime context)"""
    a, b, c = three_nodes(launcher)
    nodes = run_driver(NESTED, a.data_dir, timeout=180)
    assert len(nodes) >= 2, nodes  # branches ran on more than the driver's node
    # the children of a stolen branch were submitted on, and owned by, its node
    assert stats(b)["done"] + stats(c)["done"] > stats(b)["stolen_in"] + stats(c)["stolen_in"]


LARGE_REFS = """
    import json, time
    import numpy as np
    import p2pexec as px

    px.init()

    @px.remote
    def scale(array, k):
        time.sleep(0.005)
        return array[: 2**16] * k  # 512 KiB of float64: a large result, in shared memory

    inputs = [px.put(np.full(2**17, float(i))) for i in range(4)]  # 1 MiB each
    refs = [scale.remote(inputs[i % 4], i) for i in range(1000)]
    totals = [float(px.get(ref, timeout=120)[0]) for ref in refs]
    assert totals == [float((i % 4) * i) for i in range(1000)]
    del refs, inputs
    print(json.dumps("done"), flush=True)
    time.sleep(60)  # attached while the test looks at the stores
"""


def test_large_refs_passed_across_nodes_leave_every_store_empty(launcher: Launcher):
    a, b, c = three_nodes(launcher)
    proc = driver(LARGE_REFS, a.data_dir)
    try:
        assert json.loads(proc.stdout.readline()) == "done", proc.stderr.read()
        moved = sum(stats(node)["stolen_in"] for node in (b, c))
        assert moved > 0  # some of the 1,000 ran on other nodes, fetching their input

        def empty() -> bool:
            return all(stats(node)["objects"] == 0 and stats(node)["store_bytes"] == 0
                       for node in (a, b, c))

        assert wait_for(empty, 30), [stats(node) for node in (a, b, c)]
    finally:
        proc.kill()
        proc.wait(timeout=30)


PARAMETER_SERVER = """
    import json, os, time
    import p2pexec as px

    px.init()

    @px.remote
    class ParameterServer:
        def __init__(self):
            self.weights = [0.0] * 4
            self.updates = 0

        def push(self, gradient):
            self.weights = [w + g for w, g in zip(self.weights, gradient)]
            self.updates += 1
            return self.updates

        def pull(self):
            return list(self.weights)

    @px.remote
    def worker(server, k, steps):
        for _ in range(steps):
            weights = px.get(server.pull.remote())
            time.sleep(0.05)  # the "gradient" takes a while (long enough, on a busy
                              # machine, for every node to steal a share)
            px.get(server.push.remote([1.0] * len(weights)))
        return os.getppid()

    server = ParameterServer.remote()
    nodes = px.get([worker.remote(server, k, 8) for k in range(12)], timeout=120)
    weights = px.get(server.pull.remote())
    assert weights == [96.0] * 4, weights
    print(json.dumps(sorted(set(nodes))), flush=True)
"""


def test_a_parameter_server_actor_serves_workers_on_every_node(launcher: Launcher):
    a, b, c = three_nodes(launcher)
    nodes = run_driver(PARAMETER_SERVER, a.data_dir, timeout=180)
    # workers ran on all three, calling the actor on A
    assert nodes == sorted(n.proc.pid for n in (a, b, c)), nodes


NAMED_CREATE = """
    import json, os
    import p2pexec as px

    px.init()

    @px.remote
    class Counter:
        def __init__(self, start):
            self.value = start

        def incr(self, by):
            self.value += by
            return self.value, os.getppid()  # the parent of an actor's worker is its node

    counter = Counter.options(name="shared", lifetime="detached", max_restarts=1).remote(5)
    print(json.dumps(px.get(counter.incr.remote(1), timeout=60)), flush=True)
"""

NAMED_USE = """
    import json
    import p2pexec as px

    px.init()
    counter = px.get_actor("shared")
    print(json.dumps(px.get(counter.incr.remote(10), timeout=60)), flush=True)
"""

NAMED_CLASH = """
    import json
    import p2pexec as px

    px.init()

    @px.remote
    class Other:
        pass

    try:
        Other.options(name="shared").remote()
        print(json.dumps("created"), flush=True)
    except px.LocalUsageError as exc:
        print(json.dumps(str(exc)), flush=True)
"""

NAMED_RESTART = """
    import json, time
    import p2pexec as px

    px.init()
    counter = px.get_actor("shared")
    px.kill(counter, no_restart=False)  # its process dies; it restarts, fresh, on its node
    for _ in range(100):
        try:
            print(json.dumps(px.get(counter.incr.remote(1), timeout=60)), flush=True)
            break
        except px.ActorDiedError:  # a call that reached the dying process
            time.sleep(0.1)
"""

NAMED_KILL = """
    import json
    import p2pexec as px

    px.init()
    counter = px.get_actor("shared")
    px.kill(counter)
    try:
        px.get(counter.incr.remote(1), timeout=60)
        print(json.dumps("still alive"), flush=True)
    except px.ActorDiedError as exc:
        print(json.dumps(str(exc)), flush=True)
"""


def test_a_named_actor_is_found_refused_and_killed_from_other_nodes(launcher: Launcher):
    a, b, c = three_nodes(launcher)
    assert run_driver(NAMED_CREATE, a.data_dir) == [6, a.proc.pid]
    assert run_driver(NAMED_USE, b.data_dir) == [16, a.proc.pid]  # ran on A's actor
    clash = run_driver(NAMED_CLASH, c.data_dir)
    assert "already exists" in clash and "px.get_actor('shared')" in clash, clash
    assert run_driver(NAMED_RESTART, c.data_dir) == [6, a.proc.pid]  # 5 again, then + 1
    died = run_driver(NAMED_KILL, b.data_dir)  # for good, whatever max_restarts says
    assert "killed with px.kill" in died or "no node of the cluster" in died, died
    assert wait_for(lambda: "shared" not in stats(a)["actors"], 30), stats(a)


NO_RETRIES = """
    import json, os, time
    import p2pexec as px

    px.init()

    @px.remote(max_retries=0)
    def work(i):
        time.sleep(0.05)
        return i

    refs = [work.remote(i) for i in range(600)]
    print(json.dumps("submitted"), flush=True)
    assert px.get(refs, timeout=180) == list(range(600))
    print(json.dumps("all back"), flush=True)
"""


def leave_mid_run(launcher: Launcher, script: str, started: Callable[[dict], bool],
                  *args: str) -> None:
    """Three nodes; a driver on A runs `script` (which prints "submitted", then "all
    back"); once B's stats satisfy `started`, B gets SIGTERM. The driver must still
    get everything, and B must leave cleanly, after its drain."""
    a, b, _c = three_nodes(launcher)
    proc = driver(script, a.data_dir, *args)
    try:
        assert json.loads(proc.stdout.readline()) == "submitted"
        assert wait_for(lambda: started(stats(b)), 60, 0.02), stats(b)
        b.proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0 and json.loads(out.splitlines()[-1]) == "all back", err
        assert b.proc.wait(timeout=30) == 0
        assert "leaving: waiting up to" in b.log(), b.log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_node_leaving_gracefully_hands_back_its_work_and_no_task_fails(launcher: Launcher):
    """With max_retries=0 any task charged for B's departure would fail with
    NodeDiedError: B hands back what it had not started, finishes what it ran, and the
    leave charges nothing."""
    leave_mid_run(launcher, NO_RETRIES, lambda b: b["stolen_in"] >= 20)


LARGE_RESULTS = """
    import json, os, sys, time
    import numpy as np
    import p2pexec as px

    px.init()
    log = sys.argv[1]

    @px.remote(max_retries=0)
    def block(i):
        with open(log, "a") as f:  # one line per run: a task that runs twice shows
            f.write(f"{i}\\n")
        time.sleep(0.1)
        return np.full(2**21, i, dtype=np.float64)  # 16 MiB: kept where it ran

    refs = [block.remote(i) for i in range(60)]
    print(json.dumps("submitted"), flush=True)
    for i in range(60):
        value = px.get(refs[i], timeout=180)
        assert float(value[0]) == i and value.size == 2**21
        refs[i] = value = None  # freed as it goes: 60 x 16 MiB need not fit at once
    print(json.dumps("all back"), flush=True)
"""


def test_a_node_leaving_gracefully_hands_its_large_results_over_first(launcher: Launcher,
                                                                      tmp_path):
    """B's 16 MiB results stay in its shared memory until their owner fetches them:
    before it leaves, B waits for A to have every one, so no task runs twice (each run
    is logged) and none fails (max_retries=0)."""
    runs = tmp_path / "runs"
    leave_mid_run(launcher, LARGE_RESULTS, lambda b: b["done"] >= 4, str(runs))
    ran = runs.read_text().split()
    assert sorted(map(int, ran)) == list(range(60))  # each exactly once


ONE_CPU_ACTORS = """
    import json, os
    import p2pexec as px

    px.init()

    @px.remote(num_cpus=1)
    class Simulator:
        def __init__(self):
            self.steps = 0

        def step(self):
            self.steps += 1
            return os.getppid(), self.steps

    actors = [Simulator.remote() for _ in range(3)]
    first = px.get([a.step.remote() for a in actors], timeout=60)
    second = px.get([a.step.remote() for a in actors], timeout=60)
    print(json.dumps({"first": first, "second": second}))
"""


ASYNC_ACTORS = """
    import asyncio, json, os
    import p2pexec as px

    px.init()

    @px.remote
    def square(i):
        return i * i

    @px.remote(num_cpus=1)
    class Meeting:
        def __init__(self):
            self.inside = 0
            self.everyone = asyncio.Event()

        async def meet(self, n, ref_list):
            self.inside += 1
            if self.inside >= n:
                self.everyone.set()
            await self.everyone.wait()  # one call at a time would never get past this
            return os.getppid(), await ref_list[0]

    actors = [Meeting.remote() for _ in range(3)]
    refs = [a.meet.remote(10, [square.remote(i)]) for a in actors for i in range(10)]
    print(json.dumps(px.get(refs, timeout=60)))
"""


def test_actors_that_hold_a_cpu_go_where_one_is_free_and_keep_their_state(
        launcher: Launcher):
    """Three nodes of one CPU: three one-CPU actors made on A cannot all start there;
    the two A cannot hold go to the peers with a free CPU (instead of waiting for ever),
    and live there as long as their handles do (a later call finds the same state).
    Async actors placed so run their calls at once on every node, awaiting refs."""
    a, b, c = three_nodes(launcher)
    answer = run_driver(ONE_CPU_ACTORS, a.data_dir, timeout=120)
    nodes = sorted(pid for pid, _steps in answer["first"])
    assert nodes == sorted(n.proc.pid for n in (a, b, c)), answer
    assert [steps for _pid, steps in answer["second"]] == [2, 2, 2], answer
    assert [pid for pid, _ in answer["second"]] == [pid for pid, _ in answer["first"]]
    met = run_driver(ASYNC_ACTORS, a.data_dir, timeout=120)
    assert [value for _pid, value in met] == [i * i for i in range(10)] * 3
    assert sorted({pid for pid, _ in met}) == sorted(n.proc.pid for n in (a, b, c)), met


CANCEL_ACROSS = """
    import json, os, sys, time
    import p2pexec as px

    px.init()
    directory = sys.argv[1]

    @px.remote
    def linger(i):
        partial = os.path.join(directory, f".{i}")  # a cancel may land mid-write
        with open(partial, "w") as marker:
            marker.write(str(os.getppid()))  # the parent of a worker is its node
        os.replace(partial, os.path.join(directory, str(i)))
        time.sleep(300)

    @px.remote
    def nap(i):
        time.sleep(0.2)
        return i

    def nodes():
        return {open(os.path.join(directory, name)).read()
                for name in os.listdir(directory) if not name.startswith(".")}

    refs = [linger.remote(i) for i in range(6)]
    deadline = time.monotonic() + 60
    while len(nodes()) < 3 and time.monotonic() < deadline:  # running everywhere
        time.sleep(0.05)
    started = len([name for name in os.listdir(directory) if not name.startswith(".")])
    for ref in refs:
        px.cancel(ref)
    cancelled = 0
    for ref in refs:
        try:
            px.get(ref, timeout=30)
        except px.TaskCancelledError:
            cancelled += 1
    # every node's CPUs are free again: a second round runs at once, not in 300 s
    naps = px.get([nap.remote(i) for i in range(12)], timeout=60)
    print(json.dumps({"nodes": len(nodes()), "cancelled": cancelled, "naps": naps,
                      "started": started}))
"""


def test_tasks_running_on_other_nodes_are_cancelled_there(launcher: Launcher, tmp_path):
    """px.cancel of tasks stolen by peers: the owner fails them at once and tells the
    thieves, whose workers are interrupted, so the whole cluster serves again."""
    a, b, c = three_nodes(launcher)
    markers = tmp_path / "markers"
    markers.mkdir()
    answer = run_driver(CANCEL_ACROSS, a.data_dir, str(markers), timeout=120)
    started = answer.pop("started")
    assert answer == {"nodes": 3, "cancelled": 6, "naps": list(range(12))}, answer
    assert started >= 3, started
    assert stats(b)["stolen_in"] > 0 and stats(c)["stolen_in"] > 0


STRATEGIES = """
    import json
    import p2pexec as px
    from p2pexec.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

    px.init()
    ids = [node["id"] for node in px.nodes() if node["state"] == "alive"]
    nowhere = "ab" * 32

    @px.remote
    def where():
        return px.get_runtime_context().get_node_id()

    @px.remote
    class Home:
        def where(self):
            return px.get_runtime_context().get_node_id()

    # first: it waits for the membership to settle before it fails
    unknown = where.options(scheduling_strategy=Affinity(nowhere, soft=False)).remote()
    spread = [where.options(scheduling_strategy="SPREAD").remote() for _ in range(30)]
    bound = [where.options(scheduling_strategy=Affinity(ids[1], soft=False)).remote()
             for _ in range(10)]
    anywhere = where.options(scheduling_strategy=Affinity(nowhere, soft=True)).remote()
    home = Home.options(scheduling_strategy=Affinity(ids[1], soft=False)).remote()
    answer = {"ids": ids, "spread": px.get(spread, timeout=60),
              "bound": px.get(bound, timeout=60), "anywhere": px.get(anywhere, timeout=60),
              "actor": px.get(home.where.remote(), timeout=60)}
    try:
        px.get(unknown, timeout=60)
    except px.TaskUnschedulableError as exc:
        answer["error"] = str(exc)
    print(json.dumps(answer), flush=True)
"""


def test_spread_and_node_affinity_place_work_on_the_nodes_they_name(launcher: Launcher):
    """From a driver on A: 30 SPREAD tasks run 10 on each node; tasks and an actor with
    hard affinity to B run on B; soft affinity to an unknown node runs anyway, and hard
    affinity to it fails saying so."""
    a, _b, _c = three_nodes(launcher)
    answer = run_driver(STRATEGIES, a.data_dir, timeout=120)
    ids = answer["ids"]
    assert len(ids) == 3, answer
    assert sorted(answer["spread"]) == sorted(ids * 10), answer
    assert answer["bound"] == [ids[1]] * 10 and answer["actor"] == ids[1], answer
    assert answer["anywhere"] in ids
    assert f"node {'ab' * 32} is not a live member" in answer["error"], answer


GENERATORS_ACROSS = """
    import json, os, time
    import p2pexec as px
    from p2pexec.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

    px.init()

    @px.remote
    def numbers(n):
        for i in range(n):
            yield i

    @px.remote(num_returns="dynamic")
    def batch(n):
        time.sleep(0.05)  # long enough to be worth stealing
        for i in range(n):
            yield os.getppid(), i

    @px.remote
    def consume(n):
        time.sleep(0.05)
        return os.getppid(), sum(px.get(ref) for ref in numbers.remote(n))

    @px.remote
    class Source:
        def chunks(self, n, fail_at=None):
            for i in range(n):
                if i == fail_at:
                    raise ValueError(f"no chunk {i}")
                size = 300_000 if i % 2 else 10  # large ones stay there until fetched
                yield px.get_runtime_context().get_node_id(), bytes([i]) * size

    @px.remote
    def located(n):
        for i in range(n):
            yield px.get_runtime_context().get_node_id(), i

    sums = px.get([consume.remote(k) for k in range(30)], timeout=120)
    batches = [list(px.get(ref)) for ref in [batch.remote(5) for _ in range(30)]]
    values = [px.get(refs, timeout=60) for refs in batches]
    here = px.get_runtime_context().get_node_id()
    peers = [node["id"] for node in px.nodes() if node["state"] == "alive" and node["id"] != here]
    source = Source.options(scheduling_strategy=Affinity(peers[0], soft=False)).remote()
    chunks = [px.get(ref, timeout=60) for ref in source.chunks.remote(6)]
    failed = []
    try:
        for ref in source.chunks.remote(6, fail_at=3):
            failed.append(px.get(ref, timeout=60)[1][:1].hex())
    except ValueError as exc:
        failed.append(f"ValueError: {'no chunk 3' in str(exc)}")
    placed = located.options(scheduling_strategy=Affinity(peers[1], soft=False)).remote(4)
    print(json.dumps({"sums": sums, "values": values, "peers": peers,
                      "chunks": [(node, len(data), data[:1].hex()) for node, data in chunks],
                      "failed": failed, "placed": [px.get(ref, timeout=60) for ref in placed]}))
"""


def test_generators_run_on_every_node(launcher: Launcher):
    """Tasks stolen by peers consume streams they start there; dynamic generators
    stolen by peers hand back refs to values that stay on the thief until read; an
    actor's method and a task placed on peers stream to the driver (large values
    fetched, an error part way keeping the values before it)."""
    a, _b, _c = three_nodes(launcher)
    answer = run_driver(GENERATORS_ACROSS, a.data_dir, timeout=180)
    assert [total for _node, total in answer["sums"]] == [k * (k - 1) // 2 for k in range(30)]
    assert [[i for _node, i in batch] for batch in answer["values"]] == [list(range(5))] * 30
    nodes = {node for node, _ in answer["sums"]} | {
        node for batch in answer["values"] for node, _ in batch}
    assert len(nodes) >= 2, nodes  # some ran on peers
    peers = answer["peers"]
    assert answer["chunks"] == [[peers[0], 300_000 if i % 2 else 10, f"{i:02x}"]
                                for i in range(6)], answer["chunks"]
    assert answer["failed"] == ["00", "01", "02", "ValueError: True"], answer["failed"]
    assert answer["placed"] == [[peers[1], i] for i in range(4)], answer["placed"]


PROJECT_ACROSS = """
    import json, os, sys, time
    import p2pexec as px

    px.init(runtime_env={"working_dir": sys.argv[1], "env_vars": {"SURVEY": "on"}})

    @px.remote
    def survey(i):
        import surveying  # only in the project's directory, which no node has
        time.sleep(0.05)  # long enough to be worth stealing
        return surveying.area(i), os.environ["SURVEY"], os.getppid(), os.getcwd()

    results = px.get([survey.remote(i) for i in range(60)], timeout=120)
    assert [(area, flag) for area, flag, _, _ in results] == [(i * i, "on") for i in range(60)]
    print(json.dumps({"nodes": sorted({pid for _, _, pid, _ in results}),
                      "dirs": sorted({cwd for _, _, _, cwd in results})}))
"""


def test_a_working_dir_reaches_the_nodes_that_steal_its_tasks_once_each(
        launcher: Launcher, tmp_path):
    """A driver on A runs a project's tasks: the peers that steal them fetch its package
    from A once each, check it and unpack it into their own data dir, where the tasks
    import the project's module."""
    project = tmp_path / "project"
    (project / "shapes").mkdir(parents=True)
    (project / "surveying.py").write_text("from shapes import area\n")
    (project / "shapes" / "__init__.py").write_text("def area(side):\n    return side * side\n")
    a, b, c = three_nodes(launcher)
    answer = run_driver(PROJECT_ACROSS, a.data_dir, str(project), timeout=180)
    thieves = [node for node in (b, c) if stats(node)["stolen_in"] > 0]
    assert thieves, answer  # some ran on peers
    assert sorted(answer["nodes"]) == sorted(n.proc.pid for n in (a, *thieves)), answer
    # one package, unpacked in each node's own data dir
    (package,) = {os.path.basename(path) for path in answer["dirs"]}
    assert sorted(answer["dirs"]) == sorted(str(n.data_dir / "packages" / package)
                                            for n in (a, *thieves))
    assert [stats(node)["packages_fetched"] for node in (a, *thieves)] == [0] + [1] * len(
        thieves)


PRINTING = """
    import json, sys, time
    import p2pexec as px

    px.init()

    @px.remote
    def child(i):
        print("child", i)
        return px.get_runtime_context().get_node_id()

    @px.remote
    def branch(i):
        time.sleep(0.3)  # long enough to be worth stealing
        print("ran", i)
        return px.get_runtime_context().get_node_id(), px.get(child.remote(i))

    results = px.get([branch.remote(i) for i in range(12)], timeout=120)
    names = {node["id"]: node["name"] for node in px.nodes()}
    time.sleep(1)  # output crosses the mesh beside the results, not always before them
    sys.stdout.write("RESULT " + json.dumps([[names[a], names[b]] for a, b in results]) + "\\n")
"""


def test_what_a_stolen_task_prints_reaches_the_driver_with_the_thiefs_name(
        launcher: Launcher):
    a, _b, _c = three_nodes(launcher)
    proc = driver(PRINTING, a.data_dir)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err
    ran = json.loads(out.split("RESULT ")[1].splitlines()[0])
    assert {node for node, _ in ran} != {"a"}, ran  # some branches were stolen

    def shown(name: str, node: str, line: str) -> bool:
        where = "" if node == "a" else f", node={node}"
        return re.search(rf"^\({name} pid=\d+{where}\) {line}$", out, re.MULTILINE) is not None

    for i, (node, child_node) in enumerate(ran):
        assert shown("branch", node, f"ran {i}"), (i, node, out)
        assert shown("child", child_node, f"child {i}"), (i, child_node, out)
