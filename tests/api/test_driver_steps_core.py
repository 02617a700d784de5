"""The embedded driver's fast path: while the node loop sleeps, the driver thread steps the
scheduler itself (`ExecService.post_all`). These tests check that it is taken, and that
threads racing the loop and each other leave the scheduler valid and the store empty."""

import os
import threading

import pytest

import p2pexec as px
from p2pexec import api
from p2pexec.exec import service as service_module

pytestmark = [
    pytest.mark.usefixtures("cluster"),
    pytest.mark.skipif(bool(os.environ.get("P2PEXEC_TEST_ATTACH")),
                       reason="an attached driver has no node loop in its process"),
]


@px.remote
def plus_one(x):
    return x + 1


@px.remote
def total(*values):
    return sum(values)


@px.remote
class Log:
    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)
        return len(self.items)

    def items_(self):
        return list(self.items)


@pytest.fixture
def fast_paths(monkeypatch):
    """How often `_step_here` stepped the core in the calling thread (True) or left the
    operations to the loop (False)."""
    counts = {True: 0, False: 0}
    original = service_module.ExecService._step_here

    def counted(self, ops, patience):
        taken = original(self, ops, patience)
        counts[taken] += 1
        return taken

    monkeypatch.setattr(service_module.ExecService, "_step_here", counted)
    return counts


def _validate_on_loop() -> None:
    runtime = api._rt()
    runtime.in_loop(runtime.service.core.validate)


def _stored_objects() -> int:
    runtime = api._rt()
    return runtime.in_loop(lambda: len(runtime.service.core.objects.entries))


def test_sync_round_trips_step_the_core_in_the_driver_thread(fast_paths):
    px.get(plus_one.remote(0))  # workers up, code registered
    fast_paths[True] = fast_paths[False] = 0
    assert [px.get(plus_one.remote(i)) for i in range(200)] == list(range(1, 201))
    # the loop sleeps between round trips, so nearly every submit takes the fast path
    assert fast_paths[True] >= 150, fast_paths
    _validate_on_loop()


def test_threads_racing_the_loop_keep_order_state_and_store(fast_paths):
    px.get(plus_one.remote(0))
    before = _stored_objects()
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            log = Log.remote()
            for i in range(60):
                base = px.put(seed * 1000 + i)
                chain = plus_one.remote(plus_one.remote(base))
                fan = [plus_one.remote(i) for i in range(5)]
                assert px.get(total.remote(chain, *fan)) == seed * 1000 + i + 2 + 15
                assert px.get(log.add.remote(i)) == i + 1
                ready, _ = px.wait(fan, num_returns=5, timeout=30)
                assert len(ready) == 5
            # actor calls in flight from one thread arrive in submission order
            refs = [log.add.remote(100 + i) for i in range(40)]
            assert px.get(refs) == list(range(61, 101))
            assert px.get(log.items_.remote()) == list(range(60)) + list(range(100, 140))
            px.kill(log)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert fast_paths[True] > 0 and fast_paths[False] > 0, fast_paths  # both paths raced
    _validate_on_loop()
    # every ref is gone: the store is back where it was once the drops reach the node
    deadline = 100
    while _stored_objects() > before and deadline:
        px.get(plus_one.remote(0))
        deadline -= 1
    assert _stored_objects() <= before
