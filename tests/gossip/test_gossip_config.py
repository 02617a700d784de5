"""The config formulas against memberlist's documented values."""

from __future__ import annotations

import dataclasses

import pytest

from p2pexec.errors import LocalUsageError
from p2pexec.gossip.config import GossipConfig


def test_lan_and_local_presets_match_memberlist():
    lan, local = GossipConfig.lan(), GossipConfig.local()
    assert (lan.probe_interval, lan.probe_timeout, lan.indirect_checks, lan.suspicion_mult,
            lan.suspicion_max_timeout_mult, lan.retransmit_mult, lan.gossip_nodes,
            lan.gossip_interval, lan.push_pull_interval, lan.gossip_to_the_dead_time,
            lan.awareness_max_multiplier) == (1.0, 0.5, 3, 4, 6, 4, 3, 0.2, 30.0, 30.0, 8)
    assert (local.indirect_checks, local.probe_timeout, local.gossip_interval,
            local.suspicion_mult, local.retransmit_mult, local.push_pull_interval) == (
        1, 0.2, 0.1, 3, 2, 15.0)


def test_suspicion_bounds_follow_the_log10_formula():
    lan = GossipConfig.lan()
    assert lan.suspicion_min(1) == lan.suspicion_min(10) == 4.0
    assert lan.suspicion_min(100) == pytest.approx(8.0)
    assert lan.suspicion_max(100) == pytest.approx(48.0)
    assert [lan.suspicion_confirmations(n) for n in (2, 3, 4, 50)] == [0, 0, 2, 2]


def test_suspicion_timeout_shrinks_with_confirmations_to_the_minimum():
    lan = GossipConfig.lan()
    got = [lan.suspicion_timeout(100, c) for c in range(4)]
    assert got == pytest.approx([48.0, 48.0 - 40.0 * 0.6309297535714575, 8.0, 8.0])
    assert lan.suspicion_timeout(3, 0) == lan.suspicion_min(3)  # k = 0: no one to confirm


def test_retransmit_limit_and_push_pull_scale_with_n():
    lan = GossipConfig.lan()
    assert [lan.retransmit_limit(n) for n in (1, 9, 10, 99, 100, 200)] == [4, 4, 8, 8, 12, 12]
    assert [lan.push_pull_period(n) for n in (10, 32, 33, 64, 65, 200)] == [
        30.0, 30.0, 60.0, 60.0, 90.0, 120.0]


@pytest.mark.parametrize("changes", [
    {"gossip_interval": 0.0},                       # the driver would spin
    {"probe_interval": 0.0},
    {"probe_timeout": 1.0},                         # not shorter than the probe interval
    {"probe_timeout": -0.1},
    {"nack_fraction": 1.5},
    {"indirect_checks": -1},
    {"suspicion_mult": 0},
    {"suspicion_max_timeout_mult": 0},
    {"retransmit_mult": 0},
    {"gossip_nodes": 0},                            # updates would never leave the queue
    {"push_pull_interval": 0.0},
    {"reconnect_interval": -1.0},
    {"reap_time": 0.0},
    {"stream_timeout": 0.0},
    {"leave_timeout": -1.0},
    {"awareness_max_multiplier": 0},
    {"max_packet_size": 200},                       # no room for the largest probe
    {"max_packet_size": 70_000},                    # over any UDP datagram
    {"load_update_interval": float("nan")},
])
def test_nonsense_settings_are_refused_with_a_clear_error(changes):
    with pytest.raises(LocalUsageError, match=f"GossipConfig.{next(iter(changes))}"):
        dataclasses.replace(GossipConfig.lan(), **changes)


def test_the_presets_and_the_test_configs_are_valid():
    fast = dataclasses.replace(GossipConfig.local(), probe_interval=0.1, probe_timeout=0.05,
                               gossip_interval=0.02)
    assert (fast.probe_timeout, GossipConfig.lan().max_packet_size) == (0.05, 1300)
