"""The practical limit of one node-to-worker hop in Python: a bare trio echo.

A trio parent and two worker processes joined by socketpairs, speaking exactly the local
link of `p2pexec.exec.protocol` (typed messages through the codec with `LINK_LIMITS`).
The parent sends `Execute` messages; a worker, a plain blocking loop like p2pexec's own,
decodes each one and answers `Done(task_id, [payload], [], ...)`.
Nothing else happens: no scheduling, no object table, no pickled functions. What p2pexec
measures above this is its own cost.

Figures (all in one process, after a warm-up):
* init: spawn two workers until both have said Hello;
* one at a time: send one frame, wait for its reply (rate, p50, p99);
* pipelined, one frame per `send_all`: all frames in flight, replies counted as they come;
* pipelined, coalesced: the same with 100 frames per `send_all` (the worker answers every
  batch it reads with one `sendall`), the fastest this hop goes;
* 10 MiB argument: a numpy array pickled into the frame, unpickled by the worker, one
  at a time.

Run alone: `python benchmarks/echo_reference.py [--quick]`; `bench_core.py` runs it as the
"trio echo" column.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from collections import deque

import trio

from p2pexec.exec.protocol import INLINE, LINK_LIMITS, WORKER, Done, Execute, Hello
from p2pexec.exec.task import TASK
from p2pexec.net.codec import Codec, FrameDecoder

CODEC = Codec(LINK_LIMITS)

RECEIVE_SIZE = 1 << 18
COALESCE = 100
"""Frames per `send_all` in the coalesced run (and REFERENCES.md's batched figure)."""
INLINE_REPLY_LIMIT = 100 * 1024
"""Arguments above this are not echoed back; the reply carries their size, as a task would."""


# ---- worker process ------------------------------------------------------------------

def worker_main(fd: int) -> None:
    """Answer every Execute with a Done; one `sendall` per batch read."""
    sock = socket.socket(fileno=fd)
    reader = FrameDecoder(LINK_LIMITS.max_frame_size)
    sock.sendall(CODEC.frame(Hello(WORKER, os.getpid())))
    while data := sock.recv(RECEIVE_SIZE):
        replies = []
        for body in reader.feed(data):
            work = CODEC.decode(body)
            args_payload = work.args
            if len(args_payload[1]) > INLINE_REPLY_LIMIT:
                (value,), _ = pickle.loads(args_payload[1])
                result = [INLINE, pickle.dumps(value.nbytes, protocol=5), []]
            else:
                result = args_payload
            replies.append(CODEC.frame(Done(work.task_id, [result], [], 0.0, False)))
        sock.sendall(b"".join(replies))


# ---- parent (trio) -------------------------------------------------------------------

def task_frame(number: int, argument: object) -> bytes:
    """One task as p2pexec sends it to a worker: an `Execute` message."""
    task_id = number.to_bytes(16, "little")
    payload = [INLINE, pickle.dumps(((argument,), {}), protocol=5), []]
    return CODEC.frame(Execute(TASK, task_id, b"h" * 16, None, None, payload, {},
                               [task_id + b"\x01"], "noop", False, {"CPU": 1.0}))


class Link:
    """The parent's end of one worker's socketpair."""

    def __init__(self, stream: trio.SocketStream, process: subprocess.Popen) -> None:
        self.stream = stream
        self.process = process
        self.reader = FrameDecoder(LINK_LIMITS.max_frame_size)
        self.inbox: deque[object] = deque()

    async def receive(self) -> object:
        while not self.inbox:
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise EOFError("echo worker closed its socket")
            self.inbox.extend(CODEC.decode(body) for body in self.reader.feed(data))
        return self.inbox.popleft()

    async def receive_count(self, count: int) -> None:
        """Consume `count` replies, whatever their content."""
        while count:
            if not self.inbox:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    raise EOFError("echo worker closed its socket")
                self.inbox.extend(CODEC.decode(body) for body in self.reader.feed(data))
            taken = min(count, len(self.inbox))
            for _ in range(taken):
                self.inbox.popleft()
            count -= taken


async def spawn_workers(count: int) -> tuple[list[Link], float]:
    """Start `count` workers; return their links and seconds until every one said Hello."""
    started = time.perf_counter()
    links = []
    for _ in range(count):
        parent_end, child_end = socket.socketpair()
        process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", str(child_end.fileno())],
            pass_fds=[child_end.fileno()])
        child_end.close()
        links.append(Link(trio.SocketStream(trio.socket.from_stdlib_socket(parent_end)),
                          process))
    for link in links:
        message = await link.receive()
        if type(message) is not Hello:
            raise RuntimeError(f"echo worker sent {message!r} before its Hello")
    return links, time.perf_counter() - started


async def one_at_a_time(links: list[Link], count: int) -> list[float]:
    """Latencies (s) of `count` round trips, alternating workers."""
    latencies = []
    frame = task_frame(7, 1)
    for i in range(count):
        link = links[i % len(links)]
        start = time.perf_counter()
        await link.stream.send_all(frame)
        reply = await link.receive()
        latencies.append(time.perf_counter() - start)
        if type(reply) is not Done or reply.task_id != (7).to_bytes(16, "little"):
            raise RuntimeError(f"echo worker answered {reply!r}")
    return latencies


async def pipelined(links: list[Link], count: int, per_send: int) -> float:
    """Rate (frames/s) with `count` frames in flight, `per_send` frames per `send_all`."""
    frames = [task_frame(i, i) for i in range(count // len(links))]
    batches = [b"".join(frames[i:i + per_send]) for i in range(0, len(frames), per_send)]
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for link in links:
            nursery.start_soon(link.receive_count, len(frames))

            async def send(link: Link = link) -> None:
                for batch in batches:
                    await link.stream.send_all(batch)

            nursery.start_soon(send)
    return len(frames) * len(links) / (time.perf_counter() - start)


async def big_argument(links: list[Link], array: object, count: int) -> list[float]:
    """Seconds per call carrying `array` as its argument (pickled and framed each time)."""
    durations = []
    for i in range(count):
        link = links[i % len(links)]
        start = time.perf_counter()
        await link.stream.send_all(task_frame(i, array))
        reply = await link.receive()
        durations.append(time.perf_counter() - start)
        if pickle.loads(reply.payloads[0][1]) != array.nbytes:
            raise RuntimeError("echo worker reported a wrong argument size")
    return durations


async def measure(sync_count: int, pipelined_count: int, arg_count: int, repeats: int,
                  arg_mib: int) -> dict[str, float]:
    """Every echo figure, in the units bench_core.py reports."""
    import numpy
    from _common import median, percentile

    links, init_seconds = await spawn_workers(2)
    try:
        await one_at_a_time(links, 200)
        await pipelined(links, 2000, COALESCE)
        latencies: list[float] = []
        sync_rates = []
        for _ in range(repeats):
            batch = await one_at_a_time(links, sync_count)
            latencies += batch
            sync_rates.append(len(batch) / sum(batch))
        coalesced = median([await pipelined(links, pipelined_count, COALESCE)
                            for _ in range(repeats)])
        single = median([await pipelined(links, pipelined_count, 1) for _ in range(repeats)])
        array = numpy.ones(arg_mib * (1 << 20) // 8)
        await big_argument(links, array, 1)
        arg_seconds = median(await big_argument(links, array, arg_count))
    finally:
        for link in links:
            await link.stream.aclose()
        for link in links:
            link.process.wait(timeout=10)
    return {
        "init_ready": init_seconds,
        "sync_rate": median(sync_rates),
        "rtt_p50": percentile(latencies, 0.5) * 1e3,
        "rtt_p99": percentile(latencies, 0.99) * 1e3,
        "async_rate": coalesced,
        "async_one_frame_per_send": single,
        "arg_ms": arg_seconds * 1e3,
        "arg_rate": arg_mib / arg_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run")
    args = parser.parse_args()
    if args.worker is not None:
        worker_main(args.worker)
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    counts = (500, 5000, 2, 1) if args.quick else (3000, 50_000, 10, 3)
    print(json.dumps(trio.run(measure, *counts, 10), indent=1))


if __name__ == "__main__":
    main()
