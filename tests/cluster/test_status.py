"""`p2pexec status`: the table, `--json`, the error when no node runs, the control socket's
permissions, one node per data dir and per port; `Node.nodes()` (what `px.nodes()` returns)
and the membership event stream in a cluster."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import trio
from join_helpers import PX, status, status_cli, wait_for

from p2pexec.cli import format_members
from p2pexec.config import ClusterConfig, NodeConfig
from p2pexec.exec.config import ExecConfig
from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.core import EventKind
from p2pexec.net.security import NodeIdentity
from p2pexec.node import Node

TOKEN = "status-test-token-0123456789"
ONE_NODE = ["--host", "127.0.0.1", "--port", "0", "--no-mdns", "--resources", "gpu=2"]


def test_status_without_a_node_says_so_in_one_line_and_fails(tmp_path):
    done = subprocess.run([*PX, "status", "--data-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=30)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"p2pexec status: no node is running with data dir {tmp_path} "
                           f"(nothing answers on {tmp_path / 'control.sock'}); start one with "
                           f"`p2pexec join`\n")


def test_status_table_and_json_of_one_node(launcher):
    node = launcher.start("solo", TOKEN, ONE_NODE).wait_started()
    node_id = NodeIdentity.load_or_create(node.data_dir).node_id
    assert wait_for(lambda: (m := status(node.data_dir)) and m[0]["workers"] == 1, 30)
    assert status_cli(node.data_dir) == [{
        "name": "solo", "id": node_id.hex, "short_id": node_id.short,
        "address": node.address, "state": "alive", "resources": {"CPU": 1.0, "gpu": 2.0},
        "load": {"queue_length": 0, "running_tasks": 0}, "last_heard": None,
        "incarnation": 0, "available": {"CPU": 1.0, "gpu": 2.0}, "workers": 1,
        "exec": {"queued": 0, "running": 0, "done": 0, "stolen_in": 0, "stolen_out": 0,
                 "store_bytes": 0, "spilled": 0},
    }]
    assert stat.S_IMODE(os.stat(node.data_dir / "control.sock").st_mode) == 0o600

    table = subprocess.run([*PX, "status", "--data-dir", str(node.data_dir)],
                           capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [re.split(r"\s{2,}", line) for line in table.splitlines()]
    assert rows == [
        ["NAME", "ID", "ADDRESS", "STATE", "RESOURCES", "QUEUED/RUNNING", "DONE",
         "STOLEN IN/OUT", "STORE", "LAST HEARD"],
        ["solo", node_id.short, node.address, "alive", "CPU=1 gpu=2", "0/0", "0", "0/0",
         "0.0 MiB", "-"],
    ]

    second = launcher.start("again", TOKEN, [*ONE_NODE, "--data-dir", str(node.data_dir)])
    assert second.proc.wait(timeout=30) == 1
    assert (f"p2pexec join: another node is already running with data dir {node.data_dir}"
            in second.log())
    port = node.address.rsplit(":", 1)[1]
    clash = launcher.start("clash", TOKEN, [*ONE_NODE, "--port", port])
    assert clash.proc.wait(timeout=30) == 1
    assert (f"p2pexec join: cannot listen on 127.0.0.1:{port}: Address already in use (nodes "
            f"on one machine need distinct --port values)\n") in clash.log()


def test_table_shows_each_member_on_one_aligned_line():
    members = [
        {"name": "a", "short_id": "AAAA", "address": "10.0.0.1:7946", "state": "alive",
         "resources": {"gpu": 1.0, "CPU": 8.0}, "load": {"queue_length": 3, "running_tasks": 8},
         "last_heard": None,
         "exec": {"queued": 3, "running": 8, "done": 120, "stolen_in": 7, "stolen_out": 0,
                  "store_bytes": 3 * 2**20, "spilled": 2}},
        {"name": "bee", "short_id": "BBBB", "address": "[::1]:7946", "state": "suspect",
         "resources": {"CPU": 2.0}, "load": {"queue_length": 0, "running_tasks": 1},
         "last_heard": 1.25, "exec": None},  # did not answer: gossip's load is shown
    ]
    assert format_members(members).splitlines() == [
        "NAME  ID    ADDRESS        STATE    RESOURCES    QUEUED/RUNNING  DONE  STOLEN IN/OUT"
        "  STORE               LAST HEARD",
        "a     AAAA  10.0.0.1:7946  alive    CPU=8 gpu=1  3/8             120   7/0"
        "            3.0 MiB +2 spilled  -",
        "bee   BBBB  [::1]:7946     suspect  CPU=2        0/1             -     -"
        "              -                   1.2s ago",
    ]


FAST = GossipConfig.local()


def cluster_node(tmp_path, name: str, peers=()) -> Node:
    cluster = ClusterConfig(token=TOKEN, data_dir=tmp_path / name, host="127.0.0.1", port=0,
                            peers=tuple(peers), mdns=False, gossip=FAST)
    return Node(NodeConfig(exec=ExecConfig(num_cpus=1), name=name, cluster=cluster))


async def test_nodes_lists_this_node_first_then_the_members_it_knows(tmp_path):
    first = cluster_node(tmp_path, "first")
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        events = first.cluster.subscribe()
        second = cluster_node(tmp_path, "second", peers=[first.cluster.address])
        await nursery.start(second.run)
        with trio.fail_after(20):
            joined = await events.receive()
        assert (joined.kind, joined.member.node_id) == (EventKind.JOINED, second.node_id)
        with trio.fail_after(20):
            while len(first.nodes()) < 2 or len(second.nodes()) < 2:
                await trio.sleep(0.05)
        got = first.nodes()
        assert [(n["name"], n["id"], n["state"]) for n in got] == [
            ("first", first.node_id.hex, "alive"), ("second", second.node_id.hex, "alive")]
        assert set(got[0]) == set(got[1]) | {"workers", "available"}
        assert got[1]["address"] == f"127.0.0.1:{second.cluster.address[1]}"
        assert got[1]["resources"] == {"CPU": 1.0}
        assert second.nodes()[0]["id"] == second.node_id.hex
        nursery.cancel_scope.cancel()
