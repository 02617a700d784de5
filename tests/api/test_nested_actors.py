"""Nested parallelism and actors."""

import os
import time

import pytest

import p2pexec as px

pytestmark = pytest.mark.usefixtures("cluster")


@px.remote
def fib(n):
    if n < 2:
        return n
    return sum(px.get([fib.remote(n - 1), fib.remote(n - 2)]))


def test_recursive_fibonacci_as_tasks_completes():
    assert px.get(fib.remote(20), timeout=240) == 6765


def test_every_worker_blocked_does_not_deadlock():
    @px.remote
    def leaf(i):
        time.sleep(0.05)
        return i

    @px.remote
    def parent(k):
        ready, _ = px.wait([leaf.remote(i) for i in range(4)], num_returns=4)
        return k + sum(px.get(ready))

    # more blocked parents than CPUs: children still run
    assert px.get([parent.remote(k) for k in range(6)], timeout=60) == [k + 6 for k in range(6)]


def test_get_inside_task_with_timeout():
    @px.remote
    def sleepy():
        time.sleep(5)

    @px.remote
    def impatient():
        try:
            px.get(sleepy.remote(), timeout=0.2)
        except px.GetTimeoutError:
            return "timed out"
        return "finished"

    assert px.get(impatient.remote(), timeout=30) == "timed out"


def test_put_inside_task_and_get_outside():
    @px.remote
    def producer():
        return [px.put(i * 10) for i in range(3)]

    # the refs die in the worker as the task returns; the result must pin them first
    refs = px.get(producer.remote(), timeout=60)
    assert px.get(refs, timeout=60) == [0, 10, 20]


@px.remote
class Counter:
    def __init__(self, start=0):
        self.value = start
        self.log = []

    def incr(self, by=1):
        self.value += by
        self.log.append(by)
        return self.value

    def history(self):
        return self.log

    def pid(self):
        return os.getpid()

    def fail(self):
        raise KeyError("no such thing")


def test_actor_methods_run_in_submission_order():
    counter = Counter.remote(100)
    refs = [counter.incr.remote(i) for i in range(200)]
    assert px.get(refs)[-1] == 100 + sum(range(200))
    assert px.get(counter.history.remote()) == list(range(200))


def test_actor_lives_in_its_own_process():
    a, b = Counter.remote(), Counter.remote()
    pid_a, pid_b = px.get([a.pid.remote(), b.pid.remote()])
    assert pid_a != pid_b and os.getpid() not in (pid_a, pid_b)


def test_actor_exception_raises_at_get_and_actor_lives_on():
    counter = Counter.remote()
    with pytest.raises(KeyError) as info:
        px.get(counter.fail.remote())
    assert isinstance(info.value, px.TaskError)
    assert px.get(counter.incr.remote()) == 1


def test_actor_handle_passed_to_tasks_and_actors():
    counter = Counter.remote()

    @px.remote
    def bump(handle, times):
        return px.get([handle.incr.remote() for _ in range(times)])[-1]

    px.get([bump.remote(counter, 5) for _ in range(4)])
    assert px.get(counter.incr.remote(0)) == 20

    @px.remote
    class Proxy:
        def __init__(self, target):
            self.target = target

        def forward(self):
            return px.get(self.target.incr.remote(1000))

    assert px.get(Proxy.remote(counter).forward.remote()) == 1020


def test_named_actor_found_from_anywhere_and_killed():
    counter = Counter.options(name="shared-counter").remote(5)
    assert px.get(px.get_actor("shared-counter").incr.remote()) == 6

    @px.remote
    def find():
        return px.get(px.get_actor("shared-counter").incr.remote())

    assert px.get(find.remote()) == 7
    with pytest.raises(px.LocalUsageError, match="already exists"):
        Counter.options(name="shared-counter").remote()
    px.kill(counter)
    with pytest.raises(px.ActorDiedError):
        px.get(counter.incr.remote())
    with pytest.raises(px.LocalUsageError, match="no actor named"):
        px.get_actor("shared-counter")


def test_kill_fails_pending_calls():
    @px.remote
    class Slow:
        def nap(self):
            time.sleep(10)

    slow = Slow.remote()
    pending = slow.nap.remote()
    time.sleep(0.5)
    px.kill(slow)
    with pytest.raises(px.ActorDiedError):
        px.get(pending, timeout=10)


def test_constructor_error_kills_actor_with_reason():
    @px.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("cannot start")

        def ping(self):
            return "pong"

    broken = Broken.remote()
    with pytest.raises(px.ActorDiedError, match="constructor"):
        px.get(broken.ping.remote(), timeout=30)


def test_actor_process_crash_fails_calls_and_restart_when_allowed():
    @px.remote
    class Fragile:
        def __init__(self):
            self.calls = 0

        def crash(self):
            os._exit(1)

        def count(self):
            self.calls += 1
            return self.calls

    fragile = Fragile.remote()
    assert px.get(fragile.count.remote()) == 1
    with pytest.raises(px.ActorDiedError):
        px.get(fragile.crash.remote(), timeout=30)
    with pytest.raises(px.ActorDiedError):
        px.get(fragile.count.remote(), timeout=30)

    phoenix = Fragile.options(max_restarts=1).remote()
    assert px.get(phoenix.count.remote()) == 1
    with pytest.raises(px.ActorDiedError):
        px.get(phoenix.crash.remote(), timeout=30)
    assert px.get(phoenix.count.remote(), timeout=30) == 1  # fresh state after restart


def test_executor_runs_existing_executor_code():
    def square(x):
        return x * x

    with px.Executor() as executor:
        future = executor.submit(square, 7)
        assert future.result(timeout=30) == 49
        assert list(executor.map(square, range(10))) == [i * i for i in range(10)]
        failing = executor.submit(int, "not a number")
        with pytest.raises(ValueError):
            failing.result(timeout=30)
    with pytest.raises(RuntimeError):
        executor.submit(square, 1)


def test_actor_holds_the_resources_it_asks_for_until_killed():
    @px.remote
    def quick():
        return "ran"

    hog = Counter.options(num_cpus=2).remote()
    assert px.get(hog.incr.remote()) == 1
    waiting = quick.remote()
    ready, _ = px.wait([waiting], timeout=0.5)
    assert ready == []  # both CPUs belong to the actor
    px.kill(hog)
    assert px.get(waiting, timeout=30) == "ran"


def test_an_unnamed_actor_stops_when_its_last_handle_is_gone():
    from p2pexec.processes import pid_alive

    @px.remote
    class Pid:
        def pid(self):
            return os.getpid()

    @px.remote
    def call_through(handle):
        return px.get(handle.pid.remote())

    assert isinstance(px.get(Pid.remote().pid.remote()), int)  # a pending call keeps it
    handle = Pid.remote()
    pid = px.get(handle.pid.remote())
    assert px.get(call_through.remote(handle)) == pid  # handles travel, counted
    named = Pid.options(name="kept").remote()
    named_pid = px.get(named.pid.remote())
    del handle, named
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    assert pid_alive(named_pid)  # named actors live until killed
    px.kill(px.get_actor("kept"))


def test_calls_in_flight_when_the_actor_dies_run_again_within_max_task_retries(tmp_path):
    @px.remote
    class CrashesOnce:
        def __init__(self, marker):
            self.marker = marker

        def work(self, x):
            if not os.path.exists(self.marker):  # the first incarnation dies mid-call
                open(self.marker, "w").close()
                os._exit(1)
            return x * 2

    retried = CrashesOnce.options(max_restarts=1, max_task_retries=1).remote(
        str(tmp_path / "a"))
    assert px.get(retried.work.remote(21), timeout=30) == 42  # ran again after the restart
    plain = CrashesOnce.options(max_restarts=1).remote(str(tmp_path / "b"))
    with pytest.raises(px.ActorDiedError):  # no retries: the call dies with its actor
        px.get(plain.work.remote(21), timeout=30)
    assert px.get(plain.work.remote(4), timeout=30) == 8


@px.remote(num_cpus=0)
class Splitter:
    @px.method(num_returns=2)
    def halves(self, x):
        return x // 2, x - x // 2

    def whole(self, x):
        return x


@px.remote
def use_splitter(splitter, x):
    first, second = splitter.halves.remote(x)  # the method's num_returns travels too
    return px.get([first, second])


def test_method_num_returns_and_get_if_exists_as_in_ray():
    splitter = Splitter.options(name="splitter").remote()
    first, second = splitter.halves.remote(5)
    assert px.get([first, second], timeout=30) == [2, 3]
    assert px.get(splitter.halves.options(num_returns=1).remote(4), timeout=30) == (2, 2)
    assert px.get(splitter.whole.remote(9), timeout=30) == 9
    assert px.get(use_splitter.remote(splitter, 7), timeout=30) == [3, 4]
    same = Splitter.options(name="splitter", get_if_exists=True).remote()
    assert same == splitter
    assert px.get(list(same.halves.remote(1)), timeout=30) == [0, 1]
    with pytest.raises(px.LocalUsageError, match="already exists"):
        Splitter.options(name="splitter").remote()
    with pytest.raises(px.LocalUsageError, match="needs a name"):
        Splitter.options(get_if_exists=True).remote()
    with pytest.raises(px.LocalUsageError, match="num_returns"):
        px.method(num_returns=0)
    px.kill(splitter)
    fresh = Splitter.options(name="splitter", get_if_exists=True).remote()
    assert fresh != splitter and px.get(fresh.whole.remote(1), timeout=30) == 1
    px.kill(fresh)


@px.remote(num_cpus=0, max_restarts=3)
class Quitter:
    def __init__(self):
        self.calls = 0

    def work(self):
        self.calls += 1
        return self.calls

    def quit(self):
        try:
            px.actor.exit_actor()
        except Exception:  # not an error a method's own handler catches
            return "caught"


def test_an_actor_that_exits_itself_stops_for_good_as_in_ray():
    quitter = Quitter.remote()
    assert px.get(quitter.work.remote(), timeout=30) == 1
    exiting = quitter.quit.remote()
    after = quitter.work.remote()
    with pytest.raises(px.ActorDiedError, match="exit_actor"):
        px.get(exiting, timeout=30)
    with pytest.raises(px.ActorDiedError):  # no restart, despite max_restarts
        px.get(after, timeout=30)
    with pytest.raises(px.ActorDiedError):
        px.get(quitter.work.remote(), timeout=30)
    with pytest.raises(px.LocalUsageError, match="only inside an actor"):
        px.actor.exit_actor()


@px.remote(num_cpus=0)
class Lives:
    def __init__(self):
        self.calls = 0

    def call(self):
        self.calls += 1
        return os.getpid(), self.calls


def test_kill_with_no_restart_false_restarts_the_actor_as_after_a_crash():
    lives = Lives.options(max_restarts=1, max_task_retries=1).remote()
    first_pid, _ = px.get(lives.call.remote(), timeout=30)
    px.kill(lives, no_restart=False)
    pid, calls = px.get(lives.call.remote(), timeout=30)  # retried on the new process
    assert pid != first_pid and calls == 1
    px.kill(lives, no_restart=False)  # its one restart is spent: it dies
    with pytest.raises(px.ActorDiedError):
        for _ in range(50):
            px.get(lives.call.remote(), timeout=30)
            time.sleep(0.1)
