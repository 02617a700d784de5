import pytest

import p2pexec as px


@pytest.fixture(scope="session")
def cluster():
    """One embedded node with two CPUs shared by the API tests (workers start once)."""
    px.init(num_cpus=2, resources={"gpu": 1}, ignore_reinit_error=True)
    yield
    px.shutdown()
