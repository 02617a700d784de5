"""Discovery between real hosts: one network namespace per node on one bridge.

Skips cleanly where namespaces are not permitted (not root, no `ip netns`). Traffic stays
on the namespaces' own 10.77.0.x addresses.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from p2pexec.testing.netns import NetnsCluster, netns_cluster, netns_skip_reason

pytestmark = pytest.mark.netns

PORT = 7946

DISCOVERY_SCRIPT = """
import json, sys, trio
from p2pexec.ids import NodeId
from p2pexec.net.discovery import Announcement, DiscoveryConfig, run_discovery

host, port, node_hex, cluster, name = sys.argv[1:6]

async def main():
    config = DiscoveryConfig(interfaces=(host,), refresh_interval=None)
    me = Announcement((host, int(port)), NodeId.from_hex(node_hex), cluster, name, 1)
    send, recv = trio.open_memory_channel(100)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_discovery, config, me, send)
        async for peer in recv:
            print(json.dumps({"node_id": peer.node_id.hex, "address": list(peer.address),
                              "cluster_id": peer.cluster_id, "name": peer.name,
                              "source": peer.source}), flush=True)

trio.run(main)
"""

ECHO_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    conn.sendall(b"hi")
    conn.close()
"""

CONNECT_ONCE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0) as s:
        print(s.recv(2).decode())
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.fixture
def net3() -> Iterator[NetnsCluster]:
    reason = netns_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with netns_cluster(3) as net:
        yield net


def read_lines(path: Path) -> list[dict]:
    """Complete JSON lines written so far (a line being written is left for later)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


async def test_three_namespaces_discover_each_other_over_the_bridge(net3, tmp_path):
    cluster = secrets.token_hex(8)
    ids = {i: secrets.token_hex(32) for i in net3.indices}
    outputs = {i: tmp_path / f"node{i}.jsonl" for i in net3.indices}
    for i in net3.indices:
        with outputs[i].open("w") as out:
            net3.run(i, [sys.executable, "-c", DISCOVERY_SCRIPT, net3.address(i), str(PORT),
                         ids[i], cluster, f"node{i}"], stdout=out, stderr=subprocess.STDOUT)

    def expected(i: int) -> list[dict]:
        return sorted(({"node_id": ids[j], "address": [net3.address(j), PORT],
                        "cluster_id": cluster, "name": f"node{j}", "source": "mdns"}
                       for j in net3.indices if j != i), key=lambda p: p["node_id"])

    with trio.move_on_after(15):
        while not all(len(read_lines(outputs[i])) >= 2 for i in net3.indices):
            assert all(p.poll() is None for p in net3.processes), {
                i: outputs[i].read_text() for i in net3.indices}
            await trio.sleep(0.1)
    got = {i: sorted(read_lines(outputs[i]), key=lambda p: p["node_id"]) for i in net3.indices}
    assert got == {i: expected(i) for i in net3.indices}


def test_link_down_partitions_a_node_and_link_up_heals_it(net3):
    server = net3.run(2, [sys.executable, "-c", ECHO_SERVER, net3.address(2), str(PORT)],
                      stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline() == "listening\n"

    def connect_from_1() -> str:
        done = net3.call(1, [sys.executable, "-c", CONNECT_ONCE, net3.address(2), str(PORT)])
        return done.stdout.strip()

    assert connect_from_1() == "hi"
    net3.link_down(2)
    assert connect_from_1() == "TimeoutError"
    net3.link_up(2)
    deadline = time.monotonic() + 10
    result = connect_from_1()
    while result != "hi" and time.monotonic() < deadline:
        result = connect_from_1()
    assert result == "hi"


def test_netns_cluster_removes_everything_even_on_failure():
    reason = netns_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="boom"), netns_cluster(2) as net:
        sleeper = net.run(1, ["sleep", "600"])
        names = [net.hub, net.namespace(1), net.namespace(2)]
        raise RuntimeError("boom")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert [n for n in names if n in listed.split()] == []
    assert sleeper.poll() is not None  # killed and reaped


def test_skip_reason_names_missing_root(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    netns_skip_reason.cache_clear()
    try:
        assert netns_skip_reason() == "network namespace tests need root"
    finally:
        netns_skip_reason.cache_clear()
