"""The util libraries with Ray's names, on an embedded node."""

import queue as stdlib_queue
import time

import pytest

import p2pexec as px
from p2pexec.util import ActorPool
from p2pexec.util.multiprocessing import TASKS_PER_CPU, Pool
from p2pexec.util.queue import Empty, Full, Queue

pytestmark = pytest.mark.usefixtures("cluster")


@px.remote(num_cpus=0)
class Doubler:
    def double(self, value, delay=0.0):
        time.sleep(delay)
        return 2 * value


def test_actor_pool_maps_in_order_and_unordered_as_in_ray():
    a, b = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a, b])
    assert list(pool.map(lambda actor, v: actor.double.remote(v), range(8))) == [
        2 * v for v in range(8)]
    slow_first = list(pool.map_unordered(
        lambda actor, v: actor.double.remote(v, 0.3 if v == 0 else 0.0), range(4)))
    assert sorted(slow_first) == [0, 2, 4, 6] and slow_first[-1] == 0


def test_actor_pool_submit_get_next_and_the_idle_actors():
    a = Doubler.remote()
    pool = ActorPool([a])
    assert pool.has_free() and not pool.has_next()
    pool.submit(lambda actor, v: actor.double.remote(v, 0.2), 1)
    pool.submit(lambda actor, v: actor.double.remote(v), 2)  # waits for the actor
    assert pool.pop_idle() is None and not pool.has_free()
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.01)
    assert [pool.get_next(), pool.get_next()] == [2, 4]
    assert pool.pop_idle() == a and not pool.has_free()
    pool.push(a)
    with pytest.raises(px.LocalUsageError, match="already in the pool"):
        pool.push(a)
    with pytest.raises(StopIteration):
        pool.get_next()
    pool.submit(lambda actor, v: actor.double.remote(v, 0.5), 5)
    with pytest.raises(TimeoutError):  # and that call is skipped for good
        pool.get_next_unordered(timeout=0.01, ignore_if_timedout=True)
    assert not pool.has_next() and pool.has_free()
    with pytest.raises(px.LocalUsageError, match="ObjectRef"):
        pool.submit(lambda actor, v: v, 1)


@px.remote
def producer(queue, items):
    for item in items:
        queue.put(item)
    return len(items)


@px.remote
def consumer(queue, count):
    return [queue.get(timeout=30) for _ in range(count)]


def test_a_queue_is_shared_by_tasks_blocks_and_times_out_as_in_ray():
    queue = Queue(maxsize=3)
    assert queue.empty() and not queue.full() and len(queue) == 0
    taken = consumer.remote(queue, 10)  # blocks until the producer's items come
    assert px.get(producer.remote(queue, list(range(10))), timeout=60) == 10
    assert px.get(taken, timeout=60) == list(range(10))
    with pytest.raises(Empty):
        queue.get_nowait()
    started = time.monotonic()
    with pytest.raises(Empty):
        queue.get(timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 5
    queue.put_nowait_batch([1, 2, 3])
    assert queue.full() and queue.qsize() == 3
    with pytest.raises(Full):
        queue.put(4, timeout=0.05)
    with pytest.raises(Full):
        queue.put_nowait_batch([4])
    assert queue.get_nowait_batch(2) == [1, 2] and queue.get() == 3
    with pytest.raises(Empty):
        queue.get_nowait_batch(1)
    with pytest.raises(ValueError):
        queue.get(timeout=-1)
    assert issubclass(Empty, stdlib_queue.Empty) and issubclass(Full, stdlib_queue.Full)


def test_callers_blocked_on_a_queue_whose_actor_dies_get_a_clear_error():
    queue = Queue()
    blocked = consumer.remote(queue, 1)
    time.sleep(0.3)
    queue.shutdown()
    with pytest.raises(px.ActorDiedError):
        px.get(blocked, timeout=30)


def square(x):
    return x * x


def power(x, y):
    return x ** y


def fails(x):
    raise ValueError(f"bad {x}")


_seen = []


def remember(value):
    _seen.append(value)


def seen(_):
    return list(_seen)


def test_pool_is_a_drop_in_for_multiprocessing_pool():
    with Pool(2, initializer=remember, initargs=("init",)) as pool:
        assert pool.map(square, range(100)) == [x * x for x in range(100)]
        assert pool.map(square, range(10), chunksize=3) == [x * x for x in range(10)]
        assert pool.starmap(power, [(2, 3), (3, 2)]) == [8, 9]
        assert list(pool.imap(square, range(20), chunksize=4)) == [x * x for x in range(20)]
        assert sorted(pool.imap_unordered(square, range(20))) == [x * x for x in range(20)]
        assert pool.apply(power, (2,), {"y": 10}) == 1024
        got = []
        result = pool.map_async(square, range(5), callback=got.append)
        assert result.get(timeout=30) == [0, 1, 4, 9, 16] and result.successful()
        errors = []
        failed = pool.apply_async(fails, (1,), error_callback=errors.append)
        failed.wait(30)
        assert failed.ready() and not failed.successful()
        with pytest.raises(ValueError, match="bad 1"):
            failed.get()
        assert isinstance(errors[0], ValueError)
        assert all(seen[0] == "init" for seen in pool.map(seen, range(8)))  # once a process
        assert pool.starmap_async(power, [(2, 2)]).get(timeout=30) == [4]
        assert got == [[0, 1, 4, 9, 16]]
    with pytest.raises(ValueError, match="not running"):
        pool.map(square, [1])
    with pytest.raises(px.LocalUsageError, match="maxtasksperchild"):
        Pool(maxtasksperchild=1)


def test_pool_map_runs_many_chunks_in_a_few_tasks_keeping_order_and_errors():
    cpus = int(px.cluster_resources()["CPU"])
    with Pool(2) as pool:
        assert len(pool._map(square, range(1000), 1, False)) == TASKS_PER_CPU * cpus
        assert len(pool._map(square, range(10), 1, False)) == 10  # few: one chunk a task
        assert pool.map(square, range(5000), chunksize=3) == [x * x for x in range(5000)]
        assert pool.starmap(power, [(x, 2) for x in range(999)], chunksize=1) == [
            x * x for x in range(999)]
        assert pool.map_async(square, range(300), chunksize=1).get(30) == [
            x * x for x in range(300)]
        with pytest.raises(ValueError, match="bad 0"):
            pool.map(fails, range(100), chunksize=1)
        assert pool.map(square, []) == [] and list(pool.imap(square, [])) == []


def test_joblib_runs_on_p2pexec_through_its_backend():
    import os

    import joblib

    from p2pexec.util.joblib import register_p2pexec

    register_p2pexec()
    with joblib.parallel_backend("p2pexec", n_jobs=-1):
        squares = joblib.Parallel()(joblib.delayed(square)(i) for i in range(50))
        pids = set(joblib.Parallel()(joblib.delayed(os.getpid)() for _ in range(40)))
    assert squares == [i * i for i in range(50)]
    assert os.getpid() not in pids  # ran in the node's workers
    with joblib.parallel_backend("p2pexec"), pytest.raises(ValueError, match="bad 3"):
        joblib.Parallel(n_jobs=2)(joblib.delayed(fails)(i) for i in (3,))
