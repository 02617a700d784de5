"""GPUs handed out by index: whole, shared, given back, exhausted; what validate refuses."""

import pytest

from p2pexec.errors import LocalUsageError
from p2pexec.exec.gpus import UNITS, GpuAllocator, gpu_demand
from p2pexec.exec.resources import CPU, GPU, LENT, Resources, gpu_ids


def test_whole_gpus_are_the_lowest_free_indices_and_come_back_on_release():
    resources = Resources({CPU: 4.0, GPU: 3.0})
    first = resources.acquire({CPU: 1.0, GPU: 1.0})
    pair = resources.acquire({CPU: 1.0, GPU: 2.0})
    assert (gpu_ids(first), gpu_ids(pair)) == ([0], [1, 2])
    assert resources.available[GPU] == 0.0 and not resources.fits({GPU: 1.0})
    resources.validate([first, pair])
    resources.release(first)
    assert resources.available[GPU] == 1.0 and first == {}
    assert gpu_ids(resources.acquire({GPU: 1.0})) == [0]


def test_fractions_share_one_gpu_and_pack_before_taking_a_whole_one():
    resources = Resources({CPU: 4.0, GPU: 2.0})
    halves = [resources.acquire({GPU: 0.5}) for _ in range(2)]
    assert [gpu_ids(h) for h in halves] == [[0], [0]]  # two tasks of 0.5 share GPU 0
    quarter = resources.acquire({GPU: 0.25})
    assert gpu_ids(quarter) == [1] and resources.fits({GPU: 0.75})
    assert not resources.fits({GPU: 1.0})  # 1.75 free in all, but no GPU is whole
    resources.validate([*halves, quarter])
    resources.release(halves[0])
    assert gpu_ids(resources.acquire({GPU: 0.5})) == [0]  # the fuller GPU, not GPU 1


def test_shares_give_a_whole_gpu_back_exactly():
    resources = Resources({GPU: 1.0})
    for _ in range(10):  # with floats: 1 - 0.3 - 0.1 + 0.3 + 0.1 == 0.9999999999999999
        held = [resources.acquire({GPU: 0.3}), resources.acquire({GPU: 0.1}),
                resources.acquire({GPU: 1 / 3})]
        for holding in held:
            resources.release(holding)
    assert resources.available[GPU] == 1.0 and resources.gpus.free == [UNITS]
    whole = resources.acquire({GPU: 1.0})
    assert gpu_ids(whole) == [0]
    resources.validate([whole])


def test_exhaustion_and_a_node_without_gpus():
    resources = Resources({CPU: 2.0, GPU: 1.0})
    resources.acquire({GPU: 0.75})
    assert not resources.fits({GPU: 0.5}) and resources.fits({GPU: 0.25})
    assert resources.feasible({GPU: 1.0}) and not resources.feasible({GPU: 2.0})
    plain = Resources({CPU: 2.0})
    assert not plain.fits({GPU: 0.5}) and not plain.feasible({GPU: 0.5})
    assert gpu_ids(plain.acquire({CPU: 1.0})) == []


def test_a_blocked_task_keeps_its_gpus_while_it_lends_its_cpu():
    resources = Resources({CPU: 1.0, GPU: 1.0})
    held = resources.acquire({CPU: 1.0, GPU: 1.0})
    resources.lend_cpu(held)
    assert LENT in held and gpu_ids(held) == [0] and not resources.fits({GPU: 0.1})
    resources.validate([held])


def test_validate_refuses_forgotten_and_misplaced_gpu_shares():
    resources = Resources({GPU: 2.0})
    held = resources.acquire({GPU: 1.0})
    with pytest.raises(AssertionError, match=r"GPU: available 1\.0 but total 2\.0 - held 0"):
        resources.validate([])  # the holding was forgotten
    with pytest.raises(AssertionError, match=r"a holding of 1\.0 GPUs names the shares"):
        resources.validate([{GPU: 1.0}])  # an amount without its indices
    moved = {GPU: 1.0, "_gpu:1": 1.0}  # the right amount, another GPU's index
    with pytest.raises(AssertionError, match="GPU 0: 0 units free but 0 held, of 10000"):
        resources.validate([moved])
    resources.validate([held])
    allocator = GpuAllocator(2)
    allocator.free = [UNITS // 2, UNITS // 2]
    with pytest.raises(AssertionError, match="a share of several GPUs"):
        allocator.validate([{0: UNITS // 2, 1: UNITS // 2}])


def test_gpu_demand_follows_rays_rule():
    assert [gpu_demand(n) for n in (0, 0.5, 1, 2, 3.0)] == [0.0, 0.5, 1.0, 2.0, 3.0]
    with pytest.raises(LocalUsageError, match=r"num_gpus=1.5: above 1, GPUs come whole"):
        gpu_demand(1.5)
    for bad in (-1, float("nan"), float("inf"), "1", True, 0.00001):
        with pytest.raises(LocalUsageError, match="num_gpus"):
            gpu_demand(bad)
