"""Tasks, objects and futures through the public API on an embedded node."""

import itertools
import os
import threading
import time

import numpy as np
import pytest

import p2pexec as px

pytestmark = pytest.mark.usefixtures("cluster")


@px.remote
def add(a, b=0):
    return a + b


@px.remote
def identity(x):
    return x


@px.remote(num_returns=3)
def three(x):
    return x, x * 2, x * 3


@px.remote
def pid():
    return os.getpid()


def test_remote_returns_ref_and_get_returns_value():
    ref = add.remote(1, b=2)
    assert isinstance(ref, px.ObjectRef)
    assert px.get(ref) == 3
    assert px.get([add.remote(i, i) for i in range(5)]) == [0, 2, 4, 6, 8]


def test_calling_remote_function_directly_is_an_error():
    with pytest.raises(px.LocalUsageError, match=r"add.remote"):
        add(1)


def test_num_returns_gives_one_ref_per_value():
    refs = three.remote(5)
    assert len(refs) == 3
    assert px.get(refs) == [5, 10, 15]


def test_options_override_per_call():
    refs = add.options(num_returns=1, num_cpus=0.5).remote(2, 3)
    assert px.get(refs) == 5
    with pytest.raises(px.LocalUsageError, match="unknown option"):
        add.options(colour="red")


def test_tasks_run_in_worker_processes():
    pids = set(px.get([pid.remote() for _ in range(20)]))
    assert os.getpid() not in pids


def test_top_level_refs_resolved_nested_refs_stay_refs():
    inner = px.put(41)

    @px.remote
    def describe(top, nested):
        return type(top).__name__, type(nested[0]).__name__, px.get(nested[0]) + top

    assert px.get(describe.remote(inner, [inner])) == ("int", "ObjectRef", 82)


def test_ref_passed_before_producer_finishes_builds_graph():
    @px.remote
    def slow(x):
        time.sleep(0.2)
        return x

    first = slow.remote(1)
    second = add.remote(first, 10)
    third = add.remote(second, first)
    assert px.get(third) == 12


def test_put_and_get_values_of_many_kinds():
    values = [None, 1, "text", b"bytes", {"a": [1, 2]}, (1, 2), {3, 4}]
    refs = [px.put(v) for v in values]
    assert px.get(refs) == values
    with pytest.raises(px.LocalUsageError):
        px.put(refs[0])


def test_large_numpy_roundtrip_without_copy_through_shared_memory():
    array = np.arange(2_000_000, dtype=np.float64)
    ref = px.put(array)
    back = px.get(ref)
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable is False  # a read-only view of the shared segment
    assert px.get(identity.remote(ref)).sum() == array.sum()
    assert px.get(add.remote(array, 1.0))[-1] == array[-1] + 1.0


def test_large_result_from_task():
    @px.remote
    def big(n):
        return np.ones(n, dtype=np.uint8)

    value = px.get(big.remote(5_000_000))
    assert value.shape == (5_000_000,) and int(value.sum()) == 5_000_000


def test_large_bytes_argument():
    data = os.urandom(3 * 1024 * 1024)

    @px.remote
    def digest(blob):
        import hashlib

        return hashlib.sha256(blob).hexdigest()

    import hashlib

    assert px.get(digest.remote(data)) == hashlib.sha256(data).hexdigest()


def test_wait_splits_ready_and_not_ready():
    @px.remote
    def sleeper(t):
        time.sleep(t)
        return t

    fast = [sleeper.remote(0) for _ in range(2)]
    slow = sleeper.remote(3)
    ready, not_ready = px.wait([slow, *fast], num_returns=2, timeout=2)
    assert sorted(r.id for r in ready) == sorted(r.id for r in fast)
    assert [r.id for r in not_ready] == [slow.id]
    ready, not_ready = px.wait([slow], num_returns=1, timeout=0.05)
    assert ready == [] and not_ready == [slow]


def test_get_timeout_raises_get_timeout_error():
    @px.remote
    def sleeper():
        time.sleep(2)

    with pytest.raises(px.GetTimeoutError):
        px.get(sleeper.remote(), timeout=0.1)
    with pytest.raises(TimeoutError):  # also a builtin TimeoutError
        px.get(sleeper.remote(), timeout=0.01)


def test_custom_resources_limit_concurrency():
    @px.remote(resources={"gpu": 1}, num_cpus=0)
    def hold():
        start = time.monotonic()
        time.sleep(0.3)
        return start, time.monotonic()

    spans = sorted(px.get([hold.remote() for _ in range(3)]))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.01  # one gpu: never two at once


def test_cluster_resources_and_nodes():
    assert px.cluster_resources() == {"CPU": 2.0, "gpu": 1.0}
    nodes = px.nodes()
    assert len(nodes) == 1
    assert nodes[0]["state"] == "alive"
    assert nodes[0]["resources"] == {"CPU": 2.0, "gpu": 1.0}


def test_submitting_from_many_threads():
    results = []

    def submit_many(base):
        results.extend(px.get([add.remote(base, i) for i in range(50)]))

    threads = [threading.Thread(target=submit_many, args=(k * 100,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == sorted(k * 100 + i for k in range(4) for i in range(50))


@px.remote(num_cpus=2, resources={"gpu": 1})
def whereabouts():
    context = px.get_runtime_context()
    return (context.worker_mode, context.get_node_id(), context.get_task_id(),
            context.get_actor_id(), context.get_assigned_resources())


@px.remote
class Placed:
    def where(self):
        context = px.get_runtime_context()
        return (context.worker_mode, context.get_task_id(), context.get_actor_id(),
                context.get_assigned_resources())


@px.remote(num_cpus=1)
def parent_and_child():
    mine = px.get_runtime_context().get_task_id()
    child = px.get(whereabouts.options(num_cpus=1, resources={}).remote())
    return mine, child[2], px.get_runtime_context().get_task_id()


def test_runtime_context_names_the_node_task_actor_and_resources():
    driver = px.get_runtime_context()
    node_id = driver.get_node_id()
    assert (driver.worker_mode, driver.get_task_id(), driver.get_actor_id()) == (
        "driver", None, None)
    assert len(node_id) == 64 and driver.get_assigned_resources() == {}
    ref = whereabouts.remote()
    assert px.get(ref, timeout=30) == ("task", node_id, ref.id[:16].hex(), None,
                                       {"CPU": 2.0, "gpu": 1.0})
    placed = Placed.options(num_cpus=1).remote()
    mode, task_id, actor_id, resources = px.get(placed.where.remote(), timeout=30)
    assert (mode, resources) == ("actor", {"CPU": 1.0}) and task_id != actor_id
    assert actor_id == placed._actor_id.hex()
    mine, child, after = px.get(parent_and_child.remote(), timeout=30)
    assert mine == after != child  # a child run on the blocked parent's stack is its own


@px.remote
def slow_add(a, b, delay=0.05):
    time.sleep(delay)
    return a + b


@px.remote
def fails_slowly():
    time.sleep(0.05)
    raise KeyError("missing")


@px.remote
def uses_future(ref_list):
    return ref_list[0].future()


def test_refs_are_futures_and_awaitables_in_drivers_as_in_ray():
    import asyncio
    import concurrent.futures

    future = slow_add.remote(1, 2).future()
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=30) == 3
    with pytest.raises(KeyError):
        fails_slowly.remote().future().result(timeout=30)

    async def main():
        first = await slow_add.remote(2, 3)
        both = await px.get_async([slow_add.remote(1, 1), slow_add.remote(2, 2)])
        ticks = 0

        async def tick():  # the loop stays free while refs are awaited
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1
        ticker = asyncio.create_task(tick())
        single = await px.get_async(slow_add.remote(5, 5, 0.2), timeout=30)
        ticker.cancel()
        with pytest.raises(KeyError):
            await fails_slowly.remote()
        late = slow_add.remote(0, 0, 0.3)
        with pytest.raises(px.GetTimeoutError):
            await px.get_async(late, timeout=0.05)  # its future is cancelled
        await asyncio.sleep(0.5)  # ... before the value comes: the resolver lives on
        assert await px.get_async([late, slow_add.remote(1, 0)], timeout=30) == [0, 1]
        return first, both, single, ticks
    first, both, single, ticks = asyncio.run(main())
    assert (first, both, single) == (5, [2, 4], 10) and ticks >= 5
    with pytest.raises(px.LocalUsageError, match="async or threaded actors"):
        px.get(uses_future.remote([px.put(1)]), timeout=30)


@px.remote
def blas_threads():
    return os.environ.get("OMP_NUM_THREADS")


def test_workers_run_numpy_on_one_thread_unless_told_otherwise():
    # Ray's default: OMP_NUM_THREADS=1 in workers, unless the node's environment sets it
    expected = os.environ.get("OMP_NUM_THREADS", "1")
    assert px.get(blas_threads.remote(), timeout=30) == expected
