"""SimNetwork passes the same transport contract as TCP+TLS."""

from __future__ import annotations

import pytest
import trio.testing

from p2pexec.net.transport import Address, Transport
from p2pexec.testing import LinkSpec, SimNetwork
from p2pexec.testing.conformance import TransportConformance


class SimFactory:
    """Nodes of one jittery simulated network; an unused address inside its 10/8 range."""

    def __init__(self) -> None:
        self.net = SimNetwork(seed=7, default_link=LinkSpec(latency=0.002, jitter=0.001))

    async def make(self, n: int) -> list[Transport]:
        return [self.net.add_node() for _ in range(n)]

    def unused_address(self) -> Address:
        return ("10.255.255.254", 7946)


class TestSimConformance(TransportConformance):
    @pytest.fixture
    def transport_factory(self) -> SimFactory:
        return SimFactory()

    @pytest.fixture
    def conformance_clock(self) -> trio.testing.MockClock:
        return trio.testing.MockClock(autojump_threshold=0)
