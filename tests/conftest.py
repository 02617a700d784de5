import atexit
import os
import shutil
import tempfile

import pytest

import p2pexec as px

ATTACH_ENV = "P2PEXEC_TEST_ATTACH"
"""Set to a node's data dir: the API tests then run through a driver attached to that
node instead of an embedded one (tests/cluster/test_attach.py runs them that way)."""

if not os.environ.get(ATTACH_ENV):
    # never attach to a node the developer happens to run: a bare px.init() in a test (or
    # a script it starts) looks in a data dir of its own, removed when the run ends
    os.environ["P2PEXEC_DATA_DIR"] = tempfile.mkdtemp(prefix="p2pexec-tests-")
    atexit.register(shutil.rmtree, os.environ["P2PEXEC_DATA_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def cluster():
    """One node with two CPUs and a gpu shared by the API tests (workers start once):
    embedded, or the node of $P2PEXEC_TEST_ATTACH."""
    address = os.environ.get(ATTACH_ENV)
    if address:
        px.init(address=address, ignore_reinit_error=True)
    else:
        px.init(num_cpus=2, resources={"gpu": 1}, ignore_reinit_error=True)
    yield
    px.shutdown()
