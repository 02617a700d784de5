"""The shared transport conformance suite, run against the production TCP+TLS transport."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from p2pexec.net.tcp import TcpTransport
from p2pexec.net.transport import Address, Transport
from p2pexec.testing.conformance import TransportConformance


def free_port() -> int:
    """A port nobody listens on right now (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpFactory:
    def __init__(self, make_transport: Callable[[], TcpTransport]) -> None:
        self.make_transport = make_transport

    async def make(self, n: int) -> list[Transport]:
        return [self.make_transport() for _ in range(n)]

    def unused_address(self) -> Address:
        return ("127.0.0.1", free_port())


class TestTcpConformance(TransportConformance):
    @pytest.fixture
    def transport_factory(self, make_transport: Callable[[], TcpTransport]) -> TcpFactory:
        return TcpFactory(make_transport)
