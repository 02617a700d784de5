"""Membership: SWIM + Lifeguard gossip with load dissemination (sans-IO core + trio driver)."""

from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.core import EventKind, Member, MemberEvent, Membership, Send
from p2pexec.gossip.driver import GossipDriver, run_gossip
from p2pexec.gossip.messages import PushPull, State
from p2pexec.gossip.table import Load

__all__ = [
    "EventKind",
    "GossipConfig",
    "GossipDriver",
    "Load",
    "Member",
    "MemberEvent",
    "Membership",
    "PushPull",
    "Send",
    "State",
    "run_gossip",
]
