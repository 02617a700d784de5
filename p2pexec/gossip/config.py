"""Every timing parameter of the membership protocol, with the formula behind it.

The reference point is hashicorp/memberlist's `DefaultLANConfig` (`lan()`) and
`DefaultLocalConfig` (`local()`); Lifeguard's suspicion and awareness rules follow
memberlist's suspicion.go and awareness.go. Times are seconds on whatever clock the driver
passes in (trio's clock in a node, a simulated one in the stepper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from p2pexec.net.config import require_setting

MAX_DATAGRAM = 65_507
"""Largest UDP payload: no gossip packet can be bigger."""

MIN_PACKET_SIZE = 512
"""Smallest max_packet_size: room for the largest probe message (an IndirectPing naming a
255-byte host is about 350 bytes) and an update or two."""


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """SWIM + Lifeguard parameters. Use `lan()` or `local()`; tweak with `dataclasses.replace`."""

    probe_interval: float = 1.0
    """Seconds between two probes of one member (round-robin over a shuffled list). SWIM's
    expected time until some member probes a crashed one is T / (1 - e^-q) ~ 1.58 T.
    Lifeguard stretches it to probe_interval * (awareness + 1) on an unhealthy node."""

    probe_timeout: float = 0.5
    """Seconds to wait for a direct ack before asking `indirect_checks` others to probe.
    Should be about the 99th percentile round trip. Scaled by (awareness + 1)."""

    indirect_checks: int = 3
    """k members asked to probe a silent target for us (SWIM's ping-req fan-out)."""

    nack_fraction: float = 0.8
    """An intermediary that heard nothing from the target after nack_fraction * probe_timeout
    answers with a nack (Lifeguard): a missing nack tells the prober that *it* is the slow one."""

    suspicion_mult: int = 4
    """Suspicion lasts at least suspicion_mult * max(1, log10(n)) * probe_interval
    (`suspicion_min(n)`); suspicion_mult - 2 independent confirmations bring it down to that."""

    suspicion_max_timeout_mult: int = 6
    """A suspicion nobody confirms lasts suspicion_max_timeout_mult * suspicion_min(n)
    (`suspicion_max(n)`): Lifeguard's dynamic suspicion starts long and shrinks."""

    retransmit_mult: int = 4
    """Each piggybacked update is sent retransmit_mult * ceil(log10(n + 1)) times
    (`retransmit_limit(n)`), enough to reach every member with high probability."""

    gossip_nodes: int = 3
    """Members each gossip round sends pending updates to (fan-out)."""

    gossip_interval: float = 0.2
    """Seconds between gossip rounds. A round is skipped when nothing is pending, so an idle
    cluster sends only probes."""

    gossip_to_the_dead_time: float = 30.0
    """Seconds a member declared dead still receives gossip, so it can learn it was declared
    dead and refute."""

    push_pull_interval: float = 30.0
    """Seconds between full-state exchanges with one random member over a reliable stream
    (anti-entropy). Above 32 members it is scaled by ceil(log2(n) - log2(32)) + 1
    (`push_pull_period(n)`), keeping the cluster-wide rate bounded."""

    reconnect_interval: float = 30.0
    """Seconds between attempts to push-pull with one random dead (not left) member (Serf's
    reconnect): after a partition heals the two sides find each other again this way."""

    reap_time: float = 24 * 3600.0
    """Seconds a dead or left member stays in the table as a tombstone (Serf's
    reconnect/tombstone timeout). Tombstones stop stale state from resurrecting it."""

    stream_timeout: float = 10.0
    """Seconds a push-pull exchange may take before it is abandoned (memberlist TCPTimeout)."""

    leave_timeout: float = 5.0
    """Seconds `GossipDriver.leave` waits for the leave to be gossiped retransmit_limit(n)
    times (a few gossip intervals) before giving up and letting the node shut down."""

    awareness_max_multiplier: int = 8
    """Local health score is capped at awareness_max_multiplier - 1; timeouts and the probe
    interval are scaled by (score + 1), so at most by this factor."""

    max_packet_size: int = 1300
    """Bytes of gossip per datagram, piggybacked updates included. memberlist's
    UDPBufferSize is 1400, as is the TCP transport's limit on the wire (NetConfig
    max_datagram_size); its AES-GCM sealing takes 73 of those (DatagramSealer.OVERHEAD),
    leaving 1327: 1300 keeps a margin."""

    load_update_interval: float = 1.0
    """Minimum seconds between two broadcasts of this node's load: load changes with every
    task, gossip should carry a recent sample, not every change."""

    def __post_init__(self) -> None:
        """Refuse settings the protocol cannot run with: a zero gossip_interval makes the
        driver spin, a probe timeout as long as the probe period never leaves time for
        indirect probes, a packet too small holds no probe."""
        for name in ("probe_interval", "probe_timeout", "gossip_interval",
                     "push_pull_interval", "reconnect_interval", "reap_time",
                     "stream_timeout"):
            require_setting(self, name, getattr(self, name) > 0, "must be > 0")
        for name in ("gossip_to_the_dead_time", "leave_timeout", "load_update_interval"):
            require_setting(self, name, getattr(self, name) >= 0, "must be >= 0")
        for name in ("suspicion_mult", "suspicion_max_timeout_mult", "retransmit_mult",
                     "gossip_nodes", "awareness_max_multiplier"):
            require_setting(self, name, getattr(self, name) >= 1, "must be >= 1")
        require_setting(self, "indirect_checks", self.indirect_checks >= 0, "must be >= 0")
        require_setting(self, "nack_fraction", 0 < self.nack_fraction <= 1, "must be in (0, 1]")
        require_setting(self, "probe_timeout", self.probe_timeout < self.probe_interval,
                 f"must be shorter than probe_interval ({self.probe_interval!r}), or no "
                 f"time is left for indirect probes")
        require_setting(self, "max_packet_size",
                 MIN_PACKET_SIZE <= self.max_packet_size <= MAX_DATAGRAM,
                 f"must be in {MIN_PACKET_SIZE}..{MAX_DATAGRAM} bytes")

    @classmethod
    def lan(cls) -> GossipConfig:
        """memberlist DefaultLANConfig: a LAN of up to a few hundred machines."""
        return cls()

    @classmethod
    def local(cls) -> GossipConfig:
        """memberlist DefaultLocalConfig: one machine or a quiet, fast network (loopback,
        simulations). Faster failure detection, fewer indirect probes and retransmits."""
        return cls(
            probe_timeout=0.2,
            indirect_checks=1,
            suspicion_mult=3,
            retransmit_mult=2,
            gossip_interval=0.1,
            gossip_to_the_dead_time=15.0,
            push_pull_interval=15.0,
            reconnect_interval=15.0,
            stream_timeout=1.0,
            load_update_interval=0.2,
        )

    def suspicion_min(self, n: int) -> float:
        """suspicion_mult * max(1, log10(n)) * probe_interval (memberlist suspicionTimeout)."""
        return self.suspicion_mult * max(1.0, math.log10(max(1, n))) * self.probe_interval

    def suspicion_max(self, n: int) -> float:
        """suspicion_max_timeout_mult * suspicion_min(n): the timeout with no confirmations."""
        return self.suspicion_max_timeout_mult * self.suspicion_min(n)

    def suspicion_confirmations(self, n: int) -> int:
        """k = suspicion_mult - 2 independent confirmations shrink the timeout to its minimum;
        0 when n - 2 < k (there are not enough other members to confirm)."""
        k = self.suspicion_mult - 2
        return 0 if n - 2 < k else k

    def suspicion_timeout(self, n: int, confirmations: int) -> float:
        """Lifeguard: max - log(c + 1) / log(k + 1) * (max - min), floored at min; min when k
        is 0. Starts at suspicion_max(n) and reaches suspicion_min(n) after k confirmations."""
        lo, hi = self.suspicion_min(n), self.suspicion_max(n)
        k = self.suspicion_confirmations(n)
        if k < 1:
            return lo
        frac = math.log(confirmations + 1) / math.log(k + 1)
        return max(lo, hi - frac * (hi - lo))

    def retransmit_limit(self, n: int) -> int:
        """retransmit_mult * ceil(log10(n + 1)): sends of one piggybacked update."""
        return self.retransmit_mult * math.ceil(math.log10(n + 1))

    def push_pull_period(self, n: int) -> float:
        """push_pull_interval, times ceil(log2(n) - log2(32)) + 1 above 32 members
        (memberlist pushPullScale)."""
        if n <= 32:
            return self.push_pull_interval
        return self.push_pull_interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)

    def failure_detection_bound(self, n: int) -> float:
        """Seconds within which every live member should mark a crashed one dead, on a
        healthy network: 3 probe intervals until some member probes it and times out
        (expected ~1.58), plus the unconfirmed suspicion timeout suspicion_max(n), plus
        ceil(log2(n)) + 2 gossip intervals for the verdict to spread (epidemic rounds)."""
        spread = (math.ceil(math.log2(max(2, n))) + 2) * self.gossip_interval
        return 3 * self.probe_interval + self.suspicion_max(n) + spread

