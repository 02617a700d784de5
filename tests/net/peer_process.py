"""A node in its own process for the two-process tests and the benchmark's server side.

Usage: python tests/net/peer_process.py DATA_DIR  (token from $P2PEXEC_TOKEN). Prints
`READY <port> <node id hex>` once serving on 127.0.0.1, answers `Add` requests, logs
warnings to stderr and exits when its stdin closes (so it never outlives its parent).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from p2pexec.ids import NodeId
from p2pexec.net.codec import message
from p2pexec.net.config import NetConfig
from p2pexec.net.rpc import RpcNode
from p2pexec.net.security import ClusterKeys, NodeIdentity, resolve_token
from p2pexec.net.tcp import TcpTransport
from p2pexec.net.tls import Credentials
from p2pexec.net.transport import Peer


@message(920)
@dataclass(frozen=True, slots=True)
class Add:
    a: int
    b: int


@message(921)
@dataclass(frozen=True, slots=True)
class Sum:
    value: int
    caller: NodeId


def add(peer: Peer, body: Add) -> Sum:
    return Sum(body.a + body.b, peer.node_id)


async def serve(data_dir: Path) -> None:
    token = resolve_token(None)
    assert token is not None, "set P2PEXEC_TOKEN"
    identity = NodeIdentity.load_or_create(data_dir)
    transport = TcpTransport(Credentials.create(identity, ClusterKeys(token)), NetConfig.local())
    rpc = RpcNode(transport, add, config=NetConfig.local())
    async with trio.open_nursery() as nursery:
        _host, port = await nursery.start(rpc.serve)
        print(f"READY {port} {identity.node_id.hex}", flush=True)
        stdin = trio.lowlevel.FdStream(0)
        while await stdin.receive_some(1024):
            pass
        await rpc.aclose()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    trio.run(serve, Path(sys.argv[1]))
