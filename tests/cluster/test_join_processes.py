"""Real `p2pexec join` processes on 127.0.0.1: mDNS discovery, `p2pexec status`, failure
detection of a SIGKILLed node within the configured bound, a graceful leave on SIGINT, a
node with the wrong token that is never admitted and says why, a killed node that restarts
and rejoins."""

from __future__ import annotations

import re
import signal
import time

from join_helpers import states, wait_for

from p2pexec.gossip.config import GossipConfig

TOKEN = "cluster-test-token-0123456789"
WRONG_TOKEN = "another-token-0123456789abcdef"
JOIN_ARGS = ["--host", "127.0.0.1", "--port", "0", "--gossip", "local"]
POLL_SLACK = 2.0
"""Seconds added to the detection bound: the poll interval and a busy machine's delays."""


def test_three_nodes_find_each_other_detect_a_crash_and_refuse_a_wrong_token(launcher):
    started = time.monotonic()
    nodes = [launcher.start(f"n{i}", TOKEN, JOIN_ARGS) for i in (1, 2, 3)]
    for node in nodes:
        node.wait_started()
    everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
    seen = wait_for(lambda: all(states(n.status()) == everyone for n in nodes), 30.0)
    print(f"3 alive members in every status after {time.monotonic() - started:.1f} s "
          f"(processes started at 0)")
    assert seen, [states(n.status()) for n in nodes]
    assert [states(n.status_cli()) for n in nodes] == [everyone] * 3
    ids = {m["name"]: m["short_id"] for m in nodes[0].status()}
    assert ids == {n.name: n.short_id for n in nodes}

    # a fourth node with another token, pointed straight at n1: never admitted
    intruder = launcher.start("n4", WRONG_TOKEN, [*JOIN_ARGS, "--peer", nodes[0].address])
    intruder.wait_started()

    # SIGKILL n3: the others mark it dead within the configured bound
    bound = GossipConfig.local().failure_detection_bound(3)
    nodes[2].signal(signal.SIGKILL)
    killed = time.monotonic()
    dead = {"n1": "alive", "n2": "alive", "n3": "dead"}
    seen = wait_for(lambda: all(states(n.status()) == dead for n in nodes[:2]),
                    bound + POLL_SLACK)
    print(f"SIGKILLed n3 marked dead by n1 and n2 after {time.monotonic() - killed:.1f} s "
          f"(bound {bound:.1f} s)")
    assert seen, [states(n.status()) for n in nodes[:2]]
    assert [states(n.status_cli()) for n in nodes[:2]] == [dead] * 2

    # the intruder was never admitted, and the logs say why
    assert states(intruder.status()) == {"n4": "alive"}
    for node in nodes[:2]:
        assert "n4" not in states(node.status())
        assert intruder.short_id not in node.log()
    assert "certificate not signed by this cluster's token (different --token?)" in (
        intruder.log())
    assert "did not trust our certificate: different --token?" in nodes[0].log()

    # SIGINT (Ctrl-C) on n2: it leaves gracefully, n1 records "left", not "dead"
    nodes[1].signal(signal.SIGINT)
    assert nodes[1].proc.wait(timeout=15) == 0
    seen = wait_for(lambda: states(nodes[0].status()) == {"n1": "alive", "n2": "left",
                                                           "n3": "dead"}, 10.0)
    assert seen, states(nodes[0].status())
    assert "left the cluster" in nodes[1].log()
    assert "member left: n2" in nodes[0].log()

    # n3 restarts on its data dir (stale control socket, same key): it refutes its death
    again = launcher.start("n3", TOKEN, JOIN_ARGS).wait_started()
    assert again.short_id == nodes[2].short_id
    seen = wait_for(lambda: states(nodes[0].status()) == {"n1": "alive", "n2": "left",
                                                           "n3": "alive"}, 15.0)
    assert seen, states(nodes[0].status())


def test_join_without_a_token_creates_one_and_prints_the_command_that_joins(launcher):
    first = launcher.start("first", None, ["--host", "127.0.0.1", "--port", "0", "--no-mdns",
                                           "--gossip", "local"]).wait_started()
    printed = wait_for(lambda: re.search(r"on other machines run:\n  p2pexec join (.*)\n",
                                         first.log()), 10.0)
    assert printed, first.log()
    command = printed.group(1).split()
    assert command[::2] == ["--token", "--peer"]
    assert command[3] == first.address
    assert len(command[1]) == 43  # 32 random bytes, URL-safe base64
    second = launcher.start("second", command[1], [*command[2:], "--host", "127.0.0.1",
                                                   "--port", "0", "--no-mdns",
                                                   "--gossip", "local"]).wait_started()
    both = {"first": "alive", "second": "alive"}
    seen = wait_for(lambda: states(first.status()) == states(second.status()) == both, 20.0)
    assert seen, (states(first.status()), states(second.status()))
