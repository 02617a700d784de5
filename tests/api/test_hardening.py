"""Regressions found by review: each of these once hung, leaked or crashed."""

import concurrent.futures
import os
import sys
import textwrap
import time

import msgpack
import pytest
from fresh_interpreter import run_python

import p2pexec as px

pytestmark = pytest.mark.usefixtures("cluster")

FULL = {"CPU": 2.0, "gpu": 1.0}


def _settled_resources() -> dict:
    deadline = time.monotonic() + 10
    while px.available_resources() != FULL and time.monotonic() < deadline:
        time.sleep(0.05)
    return px.available_resources()


def test_actor_restart_and_constructor_crash_give_their_cpus_back():
    @px.remote
    class Fragile:
        def crash(self):
            os._exit(1)

        def ping(self):
            return "pong"

    phoenix = Fragile.options(num_cpus=1, max_restarts=1).remote()
    assert px.get(phoenix.ping.remote(), timeout=30) == "pong"
    with pytest.raises(px.ActorDiedError):
        px.get(phoenix.crash.remote(), timeout=30)
    assert px.get(phoenix.ping.remote(), timeout=30) == "pong"  # restarted
    px.kill(phoenix)

    @px.remote
    class DiesStarting:
        def __init__(self):
            os._exit(1)

        def ping(self):
            return "pong"

    doomed = DiesStarting.options(num_cpus=1).remote()
    with pytest.raises(px.ActorDiedError):
        px.get(doomed.ping.remote(), timeout=30)
    assert _settled_resources() == FULL


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_actor_whose_constructor_argument_failed_is_dead_with_that_reason(delay):
    @px.remote
    def boom(wait):
        time.sleep(wait)
        raise ValueError("no config")

    @px.remote
    class Service:
        def __init__(self, config):
            self.config = config

        def ok(self):
            return "ok"

    if delay == 0.0:
        failed = boom.remote(0.0)
        px.wait([failed], timeout=10)  # already failed when the actor is created
        service = Service.remote(failed)
    else:
        service = Service.remote(boom.remote(delay))
    with pytest.raises(px.ActorDiedError, match="argument of its constructor failed"):
        px.get(service.ok.remote(), timeout=10)


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("frame", [
    pytest.param(_frame(msgpack.packb([100, [b"not a dict"]])), id="wrong-field-type"),
    pytest.param(_frame(b"\xc1garbage"), id="garbage"),
    pytest.param((2**31 - 1).to_bytes(4, "big"), id="oversized"),
    pytest.param(_frame(msgpack.packb([999, 1])), id="unknown-kind"),
])
def test_a_worker_that_sends_garbage_is_stopped_and_the_node_carries_on(frame: bytes):
    from p2pexec.exec import protocol
    from p2pexec.net.codec import registered

    assert registered()[100] is protocol.Refs  # whose deltas must be a map
    assert 999 not in registered()

    @px.remote(max_retries=1)
    def vandal(frame):
        from p2pexec.exec import context

        context.runtime.link.sock.sendall(frame)
        time.sleep(5)

    @px.remote
    def fine():
        return "fine"

    with pytest.raises(px.WorkerCrashedError):
        px.get(vandal.remote(frame), timeout=60)
    assert px.get([fine.remote() for _ in range(4)], timeout=30) == ["fine"] * 4


def test_nested_get_timeout_is_honoured():
    @px.remote
    def sleepy(seconds):
        time.sleep(seconds)
        return seconds

    @px.remote
    def impatient():
        started = time.monotonic()
        try:
            px.get(sleepy.remote(3), timeout=0.2)
        except px.GetTimeoutError:
            return time.monotonic() - started
        return None

    waited = px.get(impatient.remote(), timeout=30)
    assert waited is not None and waited < 2.5  # the 3 s child did not run on its stack


def test_threads_inside_a_task_may_call_the_api():
    @px.remote
    def square(x):
        time.sleep(0.01)
        return x * x

    @px.remote
    def fan_out():
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda i: px.get(square.remote(i)), range(12)))

    assert px.get(fan_out.remote(), timeout=60) == [i * i for i in range(12)]


def test_executor_shutdown_without_wait_still_completes_and_cancel_futures_cancels():
    def slow(x):
        time.sleep(0.2)
        return x

    executor = px.Executor()
    futures = [executor.submit(slow, i) for i in range(3)]
    executor.shutdown(wait=False)
    assert [f.result(timeout=30) for f in futures] == [0, 1, 2]

    executor = px.Executor(max_workers=2)
    futures = [executor.submit(slow, i) for i in range(6)]
    assert [f.running() for f in futures] == [True, True, False, False, False, False]
    executor.shutdown(wait=True, cancel_futures=True)  # only those not started, as the
    assert [f.cancelled() for f in futures] == [False, False, True, True, True, True]  # stdlib
    assert [f.result() for f in futures[:2]] == [0, 1]


def test_executor_max_workers_bounds_the_calls_running_at_once(tmp_path):
    def visit(path, i):
        import os
        import time
        marker = os.path.join(path, str(i))
        open(marker, "w").close()
        running = len(os.listdir(path))
        time.sleep(0.1)
        os.unlink(marker)
        return running

    with pytest.raises(ValueError, match="max_workers"):
        px.Executor(max_workers=0)
    with px.Executor(max_workers=1) as executor:
        assert max(executor.map(visit, [str(tmp_path)] * 6, range(6))) == 1


def test_executor_submit_takes_any_keyword_and_keeps_nothing_of_a_finished_call():
    import gc
    import weakref

    class Result:
        pass

    def call(fn=None, self=None):
        return (fn, self)

    with px.Executor() as executor:
        assert executor.submit(call, fn=1, self=2).result(timeout=30) == (1, 2)

        def make():
            return Result()

        future = executor.submit(make)
        result = weakref.ref(future.result(timeout=30))
        function = weakref.ref(make)
        del make, future
        gc.collect()
        assert function() is None and result() is None


def test_parent_can_catch_the_crash_of_a_child_it_waits_for():
    @px.remote(max_retries=0)
    def dies():
        os._exit(1)

    @px.remote(max_retries=0)
    def careful():
        try:
            px.get(dies.remote())
        except px.WorkerCrashedError:
            return "caught"
        return "not raised"

    assert px.get(careful.remote(), timeout=60) == "caught"


def test_exception_whose_repr_fails_is_still_reported():
    class Weird(Exception):
        def __repr__(self):
            raise RuntimeError("no repr")

        def __str__(self):
            raise RuntimeError("no str")

    @px.remote(max_retries=0)
    def raise_weird():
        raise Weird()

    with pytest.raises(px.TaskError, match="whose repr"):
        px.get(raise_weird.remote(), timeout=30)


def test_num_returns_mismatch_says_what_was_declared():
    @px.remote(num_returns=2)
    def one_value():
        return 5

    with pytest.raises(px.TaskError, match="declared num_returns=2 but returned 1"):
        px.get(one_value.remote()[0], timeout=30)


def test_ref_from_a_stopped_node_is_lost_not_a_hang():
    script = textwrap.dedent("""
        import p2pexec as px
        px.init(num_cpus=1)
        @px.remote
        def one():
            return 1
        ref = one.remote()
        assert px.get(ref) == 1
        px.shutdown()
        px.init(num_cpus=1)
        try:
            px.get(ref, timeout=20)
        except px.ObjectLostError as error:
            print("lost:", error)
        px.shutdown()
    """)
    assert run_python(script).startswith("lost: object ")


def _exit_cleanly():
    sys.exit(0)


def _exit_hard():
    os._exit(1)


@pytest.mark.parametrize("body", [_exit_cleanly, _exit_hard])
def test_argument_whose_worker_always_exits_fails_its_dependent_and_the_node_lives(body):
    exits = px.remote(body)

    @px.remote
    def ident(x):
        return x

    with pytest.raises(px.WorkerCrashedError, match="ran out of retries"):
        px.get(ident.remote(exits.remote()), timeout=60)
    assert px.get(ident.remote("alive"), timeout=30) == "alive"
