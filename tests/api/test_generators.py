"""Generators, with Ray's semantics: streaming (the default for a generator function),
num_returns="dynamic", and a generator yielding a fixed num_returns."""

import asyncio
import gc
import os
import time

import pytest

import p2pexec as px

pytestmark = pytest.mark.usefixtures("cluster")


@px.remote
def count(n, fail_at=None, gate=None):
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"boom at {i}")
        if gate is not None and i == 1:
            while not os.path.exists(gate):  # the caller reads value 0 meanwhile
                time.sleep(0.01)
        yield i * 10


@px.remote(num_returns="dynamic")
def dynamic(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise ValueError("dynamic boom")
        yield i


@px.remote(num_returns=3)
def three(fail_at=None):
    for i in range(3):
        if i == fail_at:
            raise ValueError("three boom")
        yield i


def test_a_generator_function_streams_its_values_while_it_runs(tmp_path):
    gate = tmp_path / "gate"
    stream = count.remote(3, gate=str(gate))
    assert isinstance(stream, px.ObjectRefGenerator)
    first = next(stream)
    assert px.get(first, timeout=30) == 0  # the task is still running: it waits for us
    gate.write_text("go")
    assert [px.get(ref, timeout=30) for ref in stream] == [10, 20]
    with pytest.raises(StopIteration):
        next(stream)


def test_an_error_part_way_keeps_the_earlier_values_then_stops():
    values = []
    for ref in count.remote(5, fail_at=3):
        try:
            values.append(px.get(ref, timeout=30))
        except ValueError as exc:
            values.append(f"error: {'boom at 3' in str(exc)}")
    assert values == [0, 10, 20, "error: True"]


def test_streams_are_async_iterables_too():
    async def read():
        return [await ref async for ref in count.remote(4)]
    assert asyncio.run(read()) == [0, 10, 20, 30]


def test_dynamic_returns_one_ref_to_the_refs_it_yielded():
    refs = px.get(dynamic.remote(4), timeout=30)
    assert isinstance(refs, px.DynamicObjectRefGenerator) and len(refs) == 4
    assert px.get(list(refs), timeout=30) == [0, 1, 2, 3]
    partial = list(px.get(dynamic.remote(4, fail_at=2), timeout=30))
    assert px.get(partial[:2], timeout=30) == [0, 1]
    with pytest.raises(ValueError, match="dynamic boom"):
        px.get(partial[2], timeout=30)


def test_a_generator_with_fixed_num_returns_keeps_what_it_yielded_before_an_error():
    assert px.get(three.remote(), timeout=30) == [0, 1, 2]
    refs = three.remote(fail_at=2)
    assert px.get(refs[:2], timeout=30) == [0, 1]
    with pytest.raises(ValueError, match="three boom"):
        px.get(refs[2], timeout=30)


@px.remote
class Source:
    def numbers(self, n):
        yield from range(n)

    @px.method(num_returns="dynamic")
    def batch(self, n):
        yield from range(n)


@px.remote
class AsyncSource:
    async def ticks(self, n):
        for i in range(n):
            await asyncio.sleep(0.01)
            yield -i


def test_actor_methods_stream_sync_and_async_generators():
    source = Source.remote()
    assert [px.get(ref, timeout=30) for ref in source.numbers.remote(4)] == [0, 1, 2, 3]
    assert px.get(list(px.get(source.batch.remote(3), timeout=30)), timeout=30) == [0, 1, 2]
    ticks = AsyncSource.remote()
    assert [px.get(ref, timeout=30) for ref in ticks.ticks.remote(3)] == [0, -1, -2]


def objects_of(*refs):
    """Entries the embedded node still has of the tasks that made `refs`."""
    tasks = {ref.id[:16] for ref in refs}
    entries = px.api.context.runtime.service.core.objects.entries
    return [object_id for object_id in list(entries) if object_id[:16] in tasks]


def test_a_stream_dropped_early_or_cancelled_leaves_nothing_behind(tmp_path):
    if os.environ.get("P2PEXEC_TEST_ATTACH"):
        pytest.skip("looks into the embedded node's object table")
    stream = count.remote(1000)
    first = next(stream)
    assert px.get(first, timeout=30) == 0
    del stream
    # a generator that never ends is cancelled: its consumer sees TaskCancelledError
    endless = count.remote(10**9, gate=str(tmp_path / "never"))
    second = next(endless)
    assert px.get(second, timeout=30) == 0
    px.cancel(endless)
    with pytest.raises(px.TaskCancelledError):
        px.get(next(endless), timeout=30)
    with pytest.raises(StopIteration):
        next(endless)
    del endless
    probes = [px.ObjectRef(first.id, first.owner), px.ObjectRef(second.id, second.owner)]
    del first, second
    gc.collect()
    deadline = time.monotonic() + 20
    while len(objects_of(*probes)) > 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(objects_of(*probes)) == sorted(probe.id for probe in probes)


def test_a_bad_num_returns_is_refused_and_a_strategy_is_taken():
    with pytest.raises(px.LocalUsageError, match="num_returns"):
        count.options(num_returns="lots")
    spread = count.options(scheduling_strategy="SPREAD").remote(3)
    assert [px.get(ref, timeout=30) for ref in spread] == [0, 10, 20]
