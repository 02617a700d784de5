"""Network layer benchmark: TLS RPC against a raw trio TCP echo of the same frames.

Run: `python benchmarks/bench_net.py [--seconds S] [--inflight N]`. A server process on
127.0.0.1 runs both a raw (no TLS, no decoding) frame echo and a p2pexec RPC node over
TCP+TLS; this process measures, in one run:

* raw echo, one at a time: send one frame, wait for it to come back;
* raw echo, batched: N frames in one `send_all`, wait for all N echoes (and 100 per
  `send_all`, the figure REFERENCES.md quotes);
* TLS echo (trio `SSLStream`, no p2pexec handshake or codec), one at a time and batched:
  what TLS alone costs;
* TLS RPC, one at a time: `RpcNode.call` in a loop;
* TLS RPC, pipelined: N requests in flight, as one `call_many` and as N concurrent tasks.

Every frame is the same bytes on both paths: an encoded `Request` of a 16-byte `Ping`.
Targets (issue 3): pipelined RPC >= 50% of raw batched throughput; one-at-a-time RPC
round trip <= 1.5x raw.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

from p2pexec.net.codec import Codec, FrameDecoder, frame_bytes, message
from p2pexec.net.config import NetConfig
from p2pexec.net.messages import Request
from p2pexec.net.rpc import RpcNode
from p2pexec.net.security import ClusterKeys, NodeIdentity, new_token
from p2pexec.net.tcp import TcpTransport
from p2pexec.net.tls import Credentials
from p2pexec.net.transport import Peer

MAX_FRAME = 1 << 24


@message(990)
@dataclass(frozen=True, slots=True)
class Ping:
    data: bytes


def pong(peer: Peer, body: Ping) -> Ping:
    return body


# ---- server process ------------------------------------------------------------------

async def raw_echo(stream: trio.abc.Stream) -> None:
    """Echo whole frames back, one `send_all` per read: the best trio does without TLS."""
    decoder = FrameDecoder(MAX_FRAME)
    try:
        while data := await stream.receive_some(1 << 16):
            bodies = decoder.feed(data)
            if bodies:
                await stream.send_all(b"".join(frame_bytes(b, MAX_FRAME) for b in bodies))
    except trio.BrokenResourceError:
        pass


async def serve(token: str) -> None:
    creds = Credentials.create(NodeIdentity.generate(), ClusterKeys(token))
    rpc = RpcNode(TcpTransport(creds, NetConfig.local()), pong)

    async def tls_echo(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, creds.server_context, server_side=True)
        await raw_echo(tls)

    async with trio.open_nursery() as nursery:
        ports = []
        for handler in (raw_echo, tls_echo):
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0,
                                                    host="127.0.0.1"))
            ports.append(listeners[0].socket.getsockname()[1])
        _host, rpc_port = await nursery.start(rpc.serve)
        print(f"READY {ports[0]} {ports[1]} {rpc_port}", flush=True)
        stdin = trio.lowlevel.FdStream(0)
        while await stdin.receive_some(1024):
            pass
        nursery.cancel_scope.cancel()


# ---- client side ---------------------------------------------------------------------

@dataclass
class Row:
    name: str
    ops: float
    p50_ms: float
    base: str


async def timed_loop(seconds: float, step: Callable[[], Awaitable[int]]) -> tuple[float, float]:
    """Run `step` (returning how many operations it did) for `seconds`: (ops/s, p50 s)."""
    times: list[float] = []
    ops = 0
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        ops += await step()
        times.append(time.perf_counter() - now)
    return ops / (time.perf_counter() - start), statistics.median(times)


async def measure(raw_port: int, tls_port: int, rpc_port: int, token: str, seconds: float,
                  inflight: int) -> list[Row]:
    codec = Codec()
    body = codec.encode(Request(1, Ping(b"x" * 16)))
    frame = frame_bytes(body, MAX_FRAME)
    rows: list[Row] = []

    creds = Credentials.create(NodeIdentity.generate(), ClusterKeys(token))
    for label, port in (("raw TCP echo", raw_port), ("TLS echo, no RPC", tls_port)):
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        if port == tls_port:
            stream = trio.SSLStream(stream, creds.client_context, server_hostname=None)
        decoder = FrameDecoder(MAX_FRAME)

        async def echo_round(n: int, stream: trio.abc.Stream = stream,
                             decoder: FrameDecoder = decoder) -> int:
            await stream.send_all(frame * n)
            got = 0
            while got < n:
                got += len(decoder.feed(await stream.receive_some(1 << 16)))
            return n

        sizes = [(1, "one at a time"), (inflight, f"batched ({inflight:,} per send)")]
        if port == raw_port:  # the REFERENCES.md figure: 100 frames per send_all
            sizes.append((100, "batched (100 per send)"))
        for n, kind in sizes:
            ops, p50 = await timed_loop(seconds, partial(echo_round, n))
            rows.append(Row(f"{label}, {kind}", ops, p50 * 1e3, f"raw TCP echo, {kind}"))
        await stream.aclose()

    rpc = RpcNode(TcpTransport(creds, NetConfig.local()))
    address = ("127.0.0.1", rpc_port)
    ping = Ping(b"x" * 16)
    async with trio.open_nursery() as nursery:
        await nursery.start(rpc.serve)

        async def one() -> int:
            await rpc.call(address, ping)
            return 1

        async def batch() -> int:
            await rpc.call_many(address, [ping] * inflight, timeout=60)
            return inflight

        async def tasks() -> int:
            async with trio.open_nursery() as inner:
                for _ in range(inflight):
                    inner.start_soon(partial(rpc.call, address, ping, timeout=60))
            return inflight

        await one()  # connect and handshake outside the timing
        ops, p50 = await timed_loop(seconds, one)
        rows.append(Row("TLS RPC, one at a time", ops, p50 * 1e3, rows[0].name))
        ops, p50 = await timed_loop(seconds, batch)
        rows.append(Row(f"TLS RPC, pipelined call_many ({inflight:,} in flight)", ops,
                        p50 * 1e3, rows[1].name))
        ops, p50 = await timed_loop(seconds, tasks)
        rows.append(Row(f"TLS RPC, pipelined {inflight:,} tasks in flight", ops, p50 * 1e3,
                        rows[1].name))
        await rpc.aclose()
        nursery.cancel_scope.cancel()
    return rows


def print_table(rows: list[Row]) -> None:
    by_name = {r.name: r for r in rows}
    header = f"{'case':<48} {'ops/s':>10} {'p50 ms':>9} {'vs raw':>7}  (raw row compared)"
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = r.ops / by_name[r.base].ops
        print(f"{r.name:<48} {r.ops:>10,.0f} {r.p50_ms:>9.3f} {ratio:>6.0%}  ({r.base})")
    one_rpc = next(r for r in rows if r.name == "TLS RPC, one at a time")
    print()
    print(f"one-at-a-time round trip, TLS RPC / raw: "
          f"{one_rpc.p50_ms / by_name[one_rpc.base].p50_ms:.2f}x  (target <= 1.5x)")
    best = max((r for r in rows if "pipelined" in r.name), key=lambda r: r.ops)
    print(f"pipelined TLS RPC / raw batched throughput: {best.ops / by_name[best.base].ops:.0%}"
          f"  (target >= 50%, best pipelined row)")
    per100 = by_name["raw TCP echo, batched (100 per send)"]
    print(f"pipelined TLS RPC / raw echo at 100 frames per send: {best.ops / per100.ops:.0%}")
    print("p50 of pipelined and batched rows is the time for one whole batch.")


async def client(seconds: float, inflight: int) -> None:
    token = new_token()
    env = dict(os.environ, P2PEXEC_TOKEN=token)
    proc = subprocess.Popen([sys.executable, __file__, "--serve"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, *ports = proc.stdout.readline().decode().split()
        assert ready == "READY"
        raw_port, tls_port, rpc_port = map(int, ports)
        rows = await measure(raw_port, tls_port, rpc_port, token, seconds, inflight)
    finally:
        proc.kill()
        proc.wait()
    print_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per row")
    parser.add_argument("--inflight", type=int, default=10_000, help="requests in flight")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, os.environ["P2PEXEC_TOKEN"])
    else:
        trio.run(client, args.seconds, args.inflight)


if __name__ == "__main__":
    main()
