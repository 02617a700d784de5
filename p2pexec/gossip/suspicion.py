"""Lifeguard's dynamic suspicion timer and local-health awareness score.

A suspicion starts with the long timeout `suspicion_max(n)` and shrinks, on a log scale,
with each independent confirmation down to `suspicion_min(n)` (memberlist suspicion.go).
The awareness score counts recent evidence that *this* node is slow (missed acks, missing
nacks, having to refute); the prober scales its timeouts by score + 1 (awareness.go).
"""

from __future__ import annotations

from p2pexec.gossip.config import GossipConfig
from p2pexec.ids import NodeId


class Suspicion:
    """The timer of one suspected member at one incarnation, as seen by this node."""

    def __init__(self, cfg: GossipConfig, n: int, origin: NodeId, incarnation: int,
                 start: float) -> None:
        self._cfg = cfg
        self.incarnation = incarnation
        self._n = n
        self.start = start
        self.confirmers: set[NodeId] = {origin}
        self.confirmations = 0
        self.needed = cfg.suspicion_confirmations(n)
        self.deadline = start + cfg.suspicion_timeout(n, 0)

    def confirm(self, origin: NodeId) -> bool:
        """Count an independent suspicion; True when it was new (and shortened the timer),
        so the caller re-gossips it for others to confirm too."""
        if self.confirmations >= self.needed or origin in self.confirmers:
            return False
        self.confirmers.add(origin)
        self.confirmations += 1
        self.deadline = self.start + self._cfg.suspicion_timeout(self._n, self.confirmations)
        return True


class Awareness:
    """Local health score in [0, awareness_max_multiplier - 1]; 0 is healthy."""

    def __init__(self, cfg: GossipConfig) -> None:
        self._max = cfg.awareness_max_multiplier - 1
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(self._max, max(0, self.score + delta))

    def scale(self, timeout: float) -> float:
        """`timeout` stretched by (score + 1): a struggling node waits longer and probes less."""
        return timeout * (self.score + 1)
