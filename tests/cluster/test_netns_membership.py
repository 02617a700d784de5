"""Three `p2pexec join` processes in three network namespaces on one bridge: they find each
other by mDNS over the bridge and agree on membership; taking one namespace's link down
partitions it (each side marks the other dead), bringing it up heals (all alive again).

Skips cleanly where namespaces are not permitted. Traffic stays on 10.77.0.x inside the
namespaces the test creates and deletes."""

from __future__ import annotations

import time

import pytest
from join_helpers import states, wait_for

from p2pexec.gossip.config import GossipConfig
from p2pexec.testing.netns import netns_cluster, netns_skip_reason

pytestmark = pytest.mark.netns

TOKEN = "netns-cluster-token-0123456789"
CONFIG = GossipConfig.local()
BOUND = CONFIG.failure_detection_bound(3)
ISOLATED_SLACK = 2 * CONFIG.probe_interval * CONFIG.awareness_max_multiplier
"""The cut-off node suspects its two peers one probe at a time, nobody confirms its
suspicions, and Lifeguard stretches its probe interval up to awareness_max_multiplier
times (its own probes fail): the second peer may be suspected up to two such intervals
after the first (measured: 24-28 s in all, against the 21.4 s crash bound)."""


def test_namespaces_discover_agree_partition_and_heal(launcher):
    reason = netns_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with netns_cluster(3) as net:
        nodes = [launcher.start(f"n{i}", TOKEN,
                                ["--host", net.address(i), "--port", "7946", "--gossip", "local"],
                                command=lambda argv, i=i: net.command(i, argv))
                 for i in net.indices]
        for node in nodes:
            node.wait_started()
        everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
        started = time.monotonic()
        seen = wait_for(lambda: all(states(n.status()) == everyone for n in nodes), 30.0)
        assert seen, [states(n.status()) for n in nodes]
        assert [states(n.status_cli()) for n in nodes] == [everyone] * 3
        ids = [{m["name"]: (m["id"], m["address"]) for m in n.status()} for n in nodes]
        assert ids[0] == ids[1] == ids[2]
        assert ids[0]["n2"][1] == "10.77.0.2:7946"

        net.link_down(3)
        cut = time.monotonic()
        seen = wait_for(lambda: all(states(n.status()) == {**everyone, "n3": "dead"}
                                    for n in nodes[:2]), BOUND + 3.0)
        majority = time.monotonic() - cut
        assert seen, [states(n.status()) for n in nodes[:2]]
        seen = wait_for(lambda: states(nodes[2].status()) == {"n1": "dead", "n2": "dead",
                                                              "n3": "alive"},
                        BOUND + ISOLATED_SLACK)
        isolated = time.monotonic() - cut
        assert seen, states(nodes[2].status())

        net.link_up(3)
        healed = time.monotonic()
        seen = wait_for(lambda: all(states(n.status()) == everyone for n in nodes), 30.0)
        assert seen, [states(n.status()) for n in nodes]
        print(f"agreed after {cut - started:.1f} s of polling; partition: n3 dead for n1 and "
              f"n2 after {majority:.1f} s, n1 and n2 dead for n3 after {isolated:.1f} s "
              f"(bound {BOUND:.1f} s); healed after {time.monotonic() - healed:.1f} s")
