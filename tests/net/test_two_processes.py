"""Two nodes in two processes on 127.0.0.1 exchange authenticated RPCs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from p2pexec.errors import AuthenticationError
from p2pexec.ids import NodeId
from p2pexec.net.config import NetConfig
from p2pexec.net.rpc import RpcNode
from p2pexec.net.security import ClusterKeys, NodeIdentity
from p2pexec.net.tcp import TcpTransport
from p2pexec.net.tls import Credentials

HERE = Path(__file__).parent
TOKEN = "two-process-token-0123456789"
_spec = importlib.util.spec_from_file_location("peer_process", HERE / "peer_process.py")
assert _spec is not None and _spec.loader is not None
peer_process = sys.modules.setdefault("peer_process", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(peer_process)


@asynccontextmanager
async def server_process(data_dir: Path) -> AsyncIterator[tuple[trio.Process, int, NodeId]]:
    """The peer process, its port and node id; killed (by pid) whatever happens."""
    env = dict(os.environ, P2PEXEC_TOKEN=TOKEN)
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(HERE / "peer_process.py"), str(data_dir)], env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1)
                assert chunk, "peer process exited before it was ready"
                line += chunk
        ready, port, node_hex = line.decode().split()
        assert ready == "READY"
        yield proc, int(port), NodeId.from_hex(node_hex)
    finally:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()


@asynccontextmanager
async def client(data_dir: Path, token: str) -> AsyncIterator[RpcNode]:
    identity = NodeIdentity.load_or_create(data_dir)
    transport = TcpTransport(Credentials.create(identity, ClusterKeys(token)), NetConfig.local())
    rpc = RpcNode(transport, config=NetConfig.local())
    async with rpc.serving():
        yield rpc


async def test_authenticated_rpc_between_two_processes(tmp_path: Path) -> None:
    async with server_process(tmp_path / "server") as (_proc, port, server_id), \
            client(tmp_path / "client", TOKEN) as rpc:
        assert server_id == NodeIdentity.load_or_create(tmp_path / "server").node_id
        answers = await rpc.call_many(("127.0.0.1", port),
                                      [peer_process.Add(i, 10) for i in range(20)],
                                      node=server_id)
        me = rpc.local.node_id
        assert answers == [peer_process.Sum(i + 10, me) for i in range(20)]
        assert await rpc.call(("127.0.0.1", port), peer_process.Add(2, 3)) == \
            peer_process.Sum(5, me)


async def test_wrong_token_is_refused_and_logged_by_the_other_process(tmp_path: Path) -> None:
    async with server_process(tmp_path / "server") as (proc, port, server_id):
        async with client(tmp_path / "intruder", TOKEN + "-wrong") as rpc:
            with pytest.raises(AuthenticationError, match="not signed by this cluster's token"):
                await rpc.call(("127.0.0.1", port), peer_process.Add(1, 1))
        async with client(tmp_path / "client", TOKEN) as rpc:
            assert await rpc.call(("127.0.0.1", port), peer_process.Add(1, 1), node=server_id) \
                == peer_process.Sum(2, rpc.local.node_id)
        assert proc.stdin is not None and proc.stderr is not None
        await proc.stdin.aclose()
        with trio.fail_after(10):
            await proc.wait()
        err = b""
        while chunk := await proc.stderr.receive_some(65536):
            err += chunk
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("WARNING p2pexec.net: dropped peer 127.0.0.1:")
    assert lines[0].endswith("peer hung up during the TLS handshake (it did not trust our "
                             "certificate: different --token?)")
