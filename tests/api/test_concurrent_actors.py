"""Async and threaded actors: calls that run at once, `await ref` inside them (Ray's
`max_concurrency` semantics)."""

import asyncio
import os
import threading
import time

import pytest

import p2pexec as px

pytestmark = pytest.mark.usefixtures("cluster")


@px.remote
def add_one(x, delay=0.0):
    time.sleep(delay)
    return x + 1


@px.remote
def fails():
    raise KeyError("gone")


@px.remote
class Gathering:
    """Each call waits until `n` calls are inside: only concurrent calls can finish."""

    def __init__(self):
        self.inside = 0
        self.peak = 0
        self.everyone = asyncio.Event()

    async def arrive(self, n, hold=0.0):
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        if self.inside >= n:
            self.everyone.set()
        await self.everyone.wait()
        await asyncio.sleep(hold)
        self.inside -= 1
        return px.get_runtime_context().get_task_id()

    async def busy(self, hold):
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        await asyncio.sleep(hold)
        self.inside -= 1

    def peak_seen(self):  # a plain method of an async actor runs on its loop
        return self.peak

    async def plus_one_of(self, ref_list):
        return await ref_list[0] + 1

    async def catches(self):
        try:
            await fails.remote()
        except KeyError as exc:
            return "caught" if "gone" in str(exc) else str(exc)

    async def times_out(self):
        try:
            await px.get_async(add_one.remote(0, 5), timeout=0.05)
        except px.GetTimeoutError:
            return "timed out"

    async def blocking_get(self, ref_list):
        return px.get(ref_list[0]) + px.get(add_one.remote(1))

    async def quit(self):
        px.actor.exit_actor()


def test_an_async_actor_runs_its_calls_at_once_on_one_loop():
    actor = Gathering.remote()
    refs = [actor.arrive.remote(50) for _ in range(50)]
    task_ids = px.get(refs, timeout=60)  # one at a time, the first call would never end
    # each call sees its own task in the runtime context, even while others run
    assert task_ids == [ref.hex()[:32] for ref in refs]
    assert px.get(actor.peak_seen.remote(), timeout=30) == 50


def test_max_concurrency_caps_an_async_actors_calls():
    actor = Gathering.options(max_concurrency=3).remote()
    px.get([actor.busy.remote(0.1) for _ in range(12)], timeout=60)
    assert px.get(actor.peak_seen.remote(), timeout=30) == 3
    serial = Gathering.options(max_concurrency=1).remote()  # async, but one at a time
    px.get([serial.busy.remote(0.02) for _ in range(5)], timeout=60)
    assert px.get(serial.peak_seen.remote(), timeout=30) == 1


def test_await_ref_inside_an_async_actor():
    actor = Gathering.remote()
    assert px.get(actor.plus_one_of.remote([add_one.remote(1, 0.1)]), timeout=30) == 3
    assert px.get(actor.catches.remote(), timeout=30) == "caught"
    assert px.get(actor.times_out.remote(), timeout=30) == "timed out"
    # px.get blocks the loop but works (as in Ray)
    assert px.get(actor.blocking_get.remote([px.put(40)]), timeout=30) == 42


def test_an_async_actor_that_exits_fails_its_call_and_stays_dead():
    actor = Gathering.remote()
    with pytest.raises(px.ActorDiedError, match="exit_actor"):
        px.get(actor.quit.remote(), timeout=30)
    with pytest.raises(px.ActorDiedError):
        px.get(actor.peak_seen.remote(), timeout=30)


@px.remote(max_concurrency=4)
class Threaded:
    def __init__(self):
        self.lock = threading.Lock()
        self.inside = 0
        self.peak = 0
        self.threads = set()

    def meet(self, barrier_parties):
        with self.lock:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            self.threads.add(threading.get_ident())
        time.sleep(0.05)
        deadline = time.monotonic() + 20
        while self.peak < barrier_parties and time.monotonic() < deadline:
            time.sleep(0.01)
        ready = self.peak >= barrier_parties  # (once seen: the others may have left)
        value = px.get(add_one.remote(1))  # calls may use the API at once
        with self.lock:
            self.inside -= 1
        return ready, value

    def stats(self):
        return self.peak, len(self.threads), os.getpid()


def test_a_threaded_actor_runs_up_to_max_concurrency_calls_at_once():
    actor = Threaded.remote()
    results = px.get([actor.meet.remote(4) for _ in range(4)], timeout=60)
    assert results == [(True, 2)] * 4  # one at a time, the first would never see four
    px.get([actor.meet.remote(1) for _ in range(12)], timeout=60)
    peak, threads, _pid = px.get(actor.stats.remote(), timeout=30)
    assert peak == 4 and threads == 4


@px.remote
class Sequential:
    def __init__(self):
        self.inside = 0
        self.peak = 0

    def step(self, i):
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        time.sleep(0.01)
        self.inside -= 1
        return i

    def peak_seen(self):
        return self.peak

    def awaits(self, ref_list):
        return ref_list[0].future()


def test_the_default_stays_one_call_at_a_time_in_order():
    actor = Sequential.remote()
    assert px.get([actor.step.remote(i) for i in range(20)], timeout=30) == list(range(20))
    assert px.get(actor.peak_seen.remote(), timeout=30) == 1
    with pytest.raises(px.LocalUsageError, match="async or threaded actors"):
        px.get(actor.awaits.remote([px.put(1)]), timeout=30)


def test_killing_a_concurrent_actor_fails_its_calls_in_flight():
    actor = Gathering.remote()
    stuck = [actor.arrive.remote(1000) for _ in range(5)]  # never all there
    time.sleep(0.3)
    px.kill(actor)
    for ref in stuck:
        with pytest.raises(px.ActorDiedError):
            px.get(ref, timeout=30)


def test_max_concurrency_must_be_a_positive_int():
    with pytest.raises(px.LocalUsageError, match="max_concurrency"):
        Threaded.options(max_concurrency=0).remote()
