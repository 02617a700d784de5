"""px.cancel through the public API (Ray's semantics): tasks queued, running, stubborn,
forced and recursive; actor calls; bad input."""

import asyncio
import os
import time

import pytest

import p2pexec as px

pytestmark = pytest.mark.usefixtures("cluster")


def all_cpus_free(timeout=20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if px.available_resources().get("CPU") == px.cluster_resources().get("CPU"):
            return True
        time.sleep(0.05)
    return False


@px.remote
def mark_and_sleep(path, seconds):
    with open(path, "w") as marker:
        marker.write(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


@px.remote
def catches_interrupt(path, seconds):
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        with open(path, "w") as marker:
            marker.write("interrupted")
        raise


@px.remote
def ignores_interrupt(path, seconds):
    with open(path, "w") as marker:
        marker.write(str(os.getpid()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.02)
        except KeyboardInterrupt:
            pass
    return "ignored"


@px.remote
def quick(x):
    return x


def wait_for_file(path, timeout=20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path):
            return True
        time.sleep(0.02)
    return False


def test_a_queued_task_never_runs(tmp_path):
    blockers = [mark_and_sleep.remote(str(tmp_path / f"b{i}"), 0.5) for i in range(2)]
    queued = mark_and_sleep.remote(str(tmp_path / "queued"), 0)
    px.cancel(queued)
    with pytest.raises(px.TaskCancelledError, match="cancelled"):
        px.get(queued, timeout=30)
    assert px.get(blockers, timeout=30) == ["slept", "slept"]
    time.sleep(0.2)
    assert not (tmp_path / "queued").exists()


def test_a_running_task_gets_keyboard_interrupt_and_the_node_serves_on(tmp_path):
    ref = catches_interrupt.remote(str(tmp_path / "seen"), 60)
    time.sleep(0.5)
    px.cancel(ref)
    with pytest.raises(px.TaskCancelledError):
        px.get(ref, timeout=30)
    assert wait_for_file(tmp_path / "seen")
    assert (tmp_path / "seen").read_text() == "interrupted"
    assert all_cpus_free()
    assert px.get([quick.remote(i) for i in range(20)], timeout=30) == list(range(20))


def test_a_task_that_ignores_the_interrupt_fails_at_get_and_force_kills_it(tmp_path):
    stubborn = ignores_interrupt.remote(str(tmp_path / "stubborn"), 1.0)
    assert wait_for_file(tmp_path / "stubborn")
    px.cancel(stubborn)
    with pytest.raises(px.TaskCancelledError):  # at once, though it still runs
        px.get(stubborn, timeout=30)
    assert all_cpus_free()  # once it ends by itself, its worker serves again
    forever = ignores_interrupt.remote(str(tmp_path / "forever"), 600)
    assert wait_for_file(tmp_path / "forever")
    pid = int((tmp_path / "forever").read_text())
    px.cancel(forever, force=True)
    with pytest.raises(px.TaskCancelledError):
        px.get(forever, timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("force=True left the worker process running")
    assert all_cpus_free()
    assert px.get([quick.remote(i) for i in range(10)], timeout=30) == list(range(10))


@px.remote
def parent(directory, seconds):
    children = [mark_and_sleep.remote(os.path.join(directory, f"child{i}"), seconds)
                for i in range(2)]
    return px.get(children)


@px.remote
def late_child(path):
    time.sleep(1.0)
    with open(path, "w") as marker:
        marker.write("ran")


@px.remote
def parent_of_late(directory):
    refs = [late_child.remote(os.path.join(directory, f"late{i}")) for i in range(2)]
    px.get(refs)


def test_cancel_is_recursive_unless_told_otherwise(tmp_path):
    ref = parent.remote(str(tmp_path), 60)
    assert wait_for_file(tmp_path / "child0") and wait_for_file(tmp_path / "child1")
    px.cancel(ref)
    with pytest.raises(px.TaskCancelledError):
        px.get(ref, timeout=30)
    assert all_cpus_free()  # the children's minute of sleep was cut short
    kept = tmp_path / "kept"
    kept.mkdir()
    ref = parent_of_late.remote(str(kept))
    time.sleep(0.5)
    px.cancel(ref, recursive=False)
    with pytest.raises(px.TaskCancelledError):
        px.get(ref, timeout=30)
    assert wait_for_file(kept / "late0") and wait_for_file(kept / "late1")


def test_a_finished_task_keeps_its_result_and_bad_input_is_refused():
    ref = quick.remote(7)
    assert px.get(ref, timeout=30) == 7
    px.cancel(ref)
    assert px.get(ref, timeout=30) == 7
    with pytest.raises(px.LocalUsageError, match=r"px\.put"):
        px.cancel(px.put(1))
    with pytest.raises(px.LocalUsageError, match="ObjectRef"):
        px.cancel("not a ref")


@px.remote
class Worker:
    def __init__(self):
        self.calls = 0

    def slow(self, seconds, started=None):
        if started is not None:
            open(started, "w").write("started")
        time.sleep(seconds)
        self.calls += 1
        return "finished"

    def count(self):
        return self.calls


@px.remote
class AsyncWorker:
    def __init__(self):
        self.cancelled = 0

    async def wait(self, seconds, started=None):
        if started is not None:
            open(started, "w").write("started")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return "waited"

    async def cancelled_calls(self):
        return self.cancelled


def test_actor_calls_are_skipped_if_queued_and_run_on_if_running_as_in_ray(tmp_path):
    actor = Worker.remote()
    running = actor.slow.remote(0.5, str(tmp_path / "running"))
    queued = actor.slow.remote(0)
    assert wait_for_file(tmp_path / "running")
    px.cancel(running)
    px.cancel(queued)
    assert px.get(running, timeout=30) == "finished"  # a running sync call is not stopped
    with pytest.raises(px.TaskCancelledError):
        px.get(queued, timeout=30)
    assert px.get(actor.count.remote(), timeout=30) == 1
    with pytest.raises(px.LocalUsageError, match="actor call"):
        px.cancel(actor.slow.remote(0), force=True)


def test_a_call_on_an_async_actor_is_cancelled_on_its_loop(tmp_path):
    actor = AsyncWorker.remote()
    waiting = [actor.wait.remote(60, str(tmp_path / f"w{i}")) for i in range(3)]
    assert all(wait_for_file(tmp_path / f"w{i}") for i in range(3))
    for ref in waiting:
        px.cancel(ref)
    for ref in waiting:
        with pytest.raises(px.TaskCancelledError):
            px.get(ref, timeout=30)
    assert px.get(actor.cancelled_calls.remote(), timeout=30) == 3
    assert px.get(actor.wait.remote(0), timeout=30) == "waited"


@px.remote
def hold_until(gate):
    while not os.path.exists(gate):
        time.sleep(0.01)


def test_ten_thousand_queued_tasks_are_cancelled_and_none_runs(tmp_path):
    gate = tmp_path / "gate"
    runs = tmp_path / "runs"
    runs.mkdir()
    holders = [hold_until.remote(str(gate)) for _ in range(2)]  # every CPU is busy
    refs = [mark_and_sleep.remote(str(runs / f"q{i}"), 0) for i in range(10_000)]
    for ref in refs:
        px.cancel(ref)
    # px.cancel returns once the cancel is on its way (as Ray's): the node takes them in
    # order, so once the last result is cancelled, none of the others can start
    with pytest.raises(px.TaskCancelledError):
        px.get(refs[-1], timeout=60)
    gate.write_text("open")
    px.get(holders, timeout=60)
    for ref in refs:
        with pytest.raises(px.TaskCancelledError):
            px.get(ref, timeout=60)
    assert list(runs.iterdir()) == []  # not one ran, even those sent ahead to a worker
    assert all_cpus_free()
