"""Every parameter of the Kademlia layer, with the reasoning behind its default.

Times are seconds on whatever clock the driver passes in (trio's in a node, a simulated
one in the stepper). Reference points: the Kademlia paper (Maymounkov & Mazieres, 2002)
and the libp2p Kademlia spec; see ../shared/REFERENCES.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pexec.net.config import require_setting


@dataclass(frozen=True, slots=True)
class DhtConfig:
    """Kademlia parameters. Tweak with `dataclasses.replace`."""

    k: int = 20
    """Bucket size and replication factor (the paper's and libp2p's k = 20): a record
    lives on the k nodes closest to its key, so it survives unless all k fail between two
    republishes. With independent failures of probability p per interval, loss is p^k."""

    alpha: int = 3
    """Queries a lookup keeps in flight. The spec's 3, not go-libp2p's 10: go-libp2p tunes
    for the public internet, where most contacts are slow or gone; here the routing
    table is fed by gossip membership, so contacts are live and a LAN lookup ends in
    one round; a larger alpha only multiplies the load every lookup puts on peers."""

    query_timeout: float = 1.0
    """Seconds one FIND_NODE / FIND_VALUE / STORE may take before its peer counts as
    failed for this lookup (LAN round trips are well under a millisecond; a second is
    the gossip probe period, by which a live peer has certainly answered)."""

    lookup_deadline: float = 5.0
    """Seconds a whole lookup may take: past it, it ends with what it has (a value
    lookup that found nothing raises a clear error instead of waiting). At least
    log2(n) sequential rounds of query_timeout would fit for any realistic n only if
    contacts fail one after another; alpha parallel queries make that unlikely."""

    record_ttl: float = 900.0
    """Seconds a stored record lives without being published again. Three republish
    intervals: a record survives two missed republishes."""

    republish_interval: float = 300.0
    """Seconds between a publisher's stores of each of its records on the k closest
    nodes (the paper republishes hourly on the internet; a LAN cluster churns faster)."""

    refresh_interval: float = 600.0
    """A bucket not used by any lookup for this long is refreshed with a lookup of a
    random id in its range (the paper's bucket refresh, hourly there)."""

    ping_timeout: float = 1.0
    """Seconds the least recently seen contact of a full bucket has to answer the ping
    that decides whether a newcomer replaces it."""

    max_record_value: int = 4096
    """Bytes a record's value may hold: records point at things (nodes, ids), they do
    not carry objects."""

    max_records_per_key: int = 256
    """Publishers one key may have (holders of one object): bounds what one key costs."""

    max_records: int = 200_000
    """Records one node stores for others, about 100 MB at the largest values."""

    max_contacts_per_reply: int = 20
    """Contacts a FIND reply may carry (k): replies from peers are cut to this."""

    def __post_init__(self) -> None:
        for name in ("k", "alpha", "max_record_value", "max_records_per_key", "max_records",
                     "max_contacts_per_reply"):
            require_setting(self, name, getattr(self, name) >= 1, "must be at least 1")
        for name in ("query_timeout", "lookup_deadline", "record_ttl", "republish_interval",
                     "refresh_interval", "ping_timeout"):
            require_setting(self, name, getattr(self, name) > 0, "must be positive")
        require_setting(self, "republish_interval", self.republish_interval < self.record_ttl,
                        "must be shorter than record_ttl, or records expire between two "
                        "republishes")
        require_setting(self, "query_timeout", self.query_timeout <= self.lookup_deadline,
                        "must not exceed lookup_deadline")
