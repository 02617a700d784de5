"""Resource accounting on its own: holdings, lent CPUs, and what validate refuses."""

import pytest

from p2pexec.exec.resources import CPU, LENT, Resources


def test_acquire_release_and_lend_keep_available_equal_to_total_minus_holdings():
    resources = Resources({CPU: 2.0, "gpu": 1.0})
    held = resources.acquire({CPU: 1.0, "gpu": 1.0})
    assert resources.available == {CPU: 1.0, "gpu": 0.0}
    assert not resources.fits({"gpu": 1.0}) and resources.feasible({"gpu": 1.0})
    resources.lend_cpu(held)  # blocked in get: the CPU is free for others
    assert held == {"gpu": 1.0, LENT: 1.0} and resources.available[CPU] == 2.0
    resources.validate([held])
    other = resources.acquire({CPU: 2.0})
    resources.reacquire_cpu(held)  # back from get: oversubscribed, as Ray does
    assert resources.available[CPU] == -1.0
    resources.validate([held, other])
    resources.release(held)
    resources.release(other)
    assert resources.available == {CPU: 2.0, "gpu": 1.0} and held == {} and other == {}
    resources.validate([])


def test_validate_refuses_a_leak_and_a_negative_non_cpu_amount():
    resources = Resources({CPU: 1.0, "gpu": 1.0})
    held = resources.acquire({CPU: 1.0})
    with pytest.raises(AssertionError, match=r"CPU: available 0\.0 but total 1\.0 - held 0\.0"):
        resources.validate([])  # the holding was forgotten
    resources.release(held)
    resources.acquire({"gpu": 1.0})
    twice = resources.acquire({"gpu": 1.0})
    with pytest.raises(AssertionError, match=r"gpu: available -1\.0 < 0"):
        resources.validate([{"gpu": 1.0}, twice])
