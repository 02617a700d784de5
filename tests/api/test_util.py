"""The util libraries with Ray's names, on an embedded node."""

import time

import pytest

import p2pexec as px
from p2pexec.util import ActorPool

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
