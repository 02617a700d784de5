"""Shared fixtures of the net tests: keys, tokens and TCP transports on 127.0.0.1."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from p2pexec.net.config import NetConfig
from p2pexec.net.security import ClusterKeys, NodeIdentity
from p2pexec.net.tcp import TcpTransport
from p2pexec.net.tls import Credentials

TOKEN = "test-token-0123456789abcdef"
OTHER_TOKEN = "other-token-0123456789abcdef"


@functools.cache
def cluster_keys(token: str = TOKEN) -> ClusterKeys:
    """Deriving the CA takes a few ms: share it between tests."""
    return ClusterKeys(token)


def credentials(token: str = TOKEN) -> Credentials:
    """A fresh node identity in the cluster of `token`."""
    return Credentials.create(NodeIdentity.generate(), cluster_keys(token))


def tcp_transport(token: str = TOKEN, config: NetConfig | None = None) -> TcpTransport:
    """A transport on 127.0.0.1, port chosen by the kernel, fast local timeouts."""
    return TcpTransport(credentials(token), config or NetConfig.local())


@pytest.fixture
def make_transport() -> Callable[..., TcpTransport]:
    """Factory of fresh transports: `make_transport(token=TOKEN, config=None)`."""
    return tcp_transport


@pytest.fixture
def make_credentials() -> Callable[..., Credentials]:
    """Factory of fresh node credentials: `make_credentials(token=TOKEN)`."""
    return credentials
