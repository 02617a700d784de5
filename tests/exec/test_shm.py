"""Shared-memory segments and the pool that recycles argument segments."""

import os

import numpy as np
import pytest

import p2pexec as px
from p2pexec.exec import shm


def _make(tag: str, size: int) -> str:
    name = f"{shm.PREFIX}_{os.getpid()}_{tag}"
    shm.write(name, size, [(0, b"head"), (size - 4, b"tail")])
    return name


def test_write_places_parts_at_their_offsets_and_attach_reads_them():
    name = _make("parts", 4096)
    try:
        view = shm.attach(name)
        assert (bytes(view[:4]), bytes(view[-4:]), view.nbytes) == (b"head", b"tail", 4096)
    finally:
        shm.unlink(name)


def test_pool_keeps_own_segments_within_limits_and_hands_out_a_close_fit():
    pool = shm.SegmentPool(max_segments=2)
    names = [_make(f"pool{i}", size) for i, size in enumerate((1000, 5000, 9000))]
    try:
        assert [pool.give(n) for n in names] == [True, True, False]  # third: pool full
        assert pool.give("someone_elses_segment") is False
        assert pool.take(900) == names[0]
        assert pool.take(900) is None  # 5000 is more than 4x too big
        assert pool.take(4000) == names[1]
        assert pool.take(10) is None
    finally:
        pool.clear()
        for name in names:
            shm.unlink(name)


@pytest.mark.usefixtures("cluster")
def test_recycled_argument_segments_never_change_a_value_still_in_use():
    @px.remote
    class Keeper:
        def __init__(self):
            self.kept = []

        def keep(self, array):
            self.kept.append(array)  # holds the mapping: its segment must not be reused
            return float(array[0])

        def firsts(self):
            return [float(a[0]) for a in self.kept]

    @px.remote
    def first(array):
        return float(array[0])

    keeper = Keeper.remote()
    size = 300_000
    got = []
    for i in range(6):
        got.append(px.get(first.remote(np.full(size, float(i)))))
        got.append(px.get(keeper.keep.remote(np.full(size, 100.0 + i))))
    assert got == [v for i in range(6) for v in (float(i), 100.0 + i)]
    assert px.get(keeper.firsts.remote()) == [100.0 + i for i in range(6)]
