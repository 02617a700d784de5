"""Settings of the network layer: decoder limits, handshake and connection timeouts.

Every default says why it has its value. The defaults fit machines on one LAN; `local()`
fits several nodes on one machine or tests, where failures should show fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from p2pexec.errors import LocalUsageError

MiB = 1024 * 1024

MAX_UDP_PAYLOAD = 65_507
"""Largest UDP payload over IPv4."""
MIN_DATAGRAM_SIZE = 576
"""Smallest max_datagram_size: the datagram every IPv4 host must accept; less leaves too
little room after the 73-byte seal for a gossip packet (GossipConfig's minimum is 512)."""


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """Hard limits on what a peer may make us decode. Anything beyond raises
    `RemoteProtocolError` for that connection only."""

    max_frame_size: int = 16 * MiB
    """Largest frame body in bytes. Large objects travel in chunks of at most 1 MiB
    (exec's transfer), so 16 MiB leaves room for a batch of them while bounding the
    memory one connection can pin to 16 MiB."""

    max_depth: int = 32
    """Deepest nesting of containers inside one message. Our own messages nest at most
    ~5 levels; 32 leaves room for user metadata and stops stack-exhausting payloads."""

    max_collection_len: int = 1_000_000
    """Most items in one array or map. A batch of 10,000 task ids or gossip entries fits
    many times over; a frame claiming 2^32 items is refused before any allocation."""

    max_str_len: int = 1 * MiB
    """Longest text string. Names, errors and tracebacks are far shorter."""

    max_bin_len: int = 16 * MiB
    """Longest byte string: one frame's worth (`max_frame_size`)."""

    def __post_init__(self) -> None:
        """Every limit is at least 1: a zero limit refuses every message."""
        for name in ("max_frame_size", "max_depth", "max_collection_len", "max_str_len",
                     "max_bin_len"):
            require_setting(self, name, getattr(self, name) >= 1, "must be >= 1")


@dataclass(frozen=True, slots=True)
class NetConfig:
    """Timeouts and caps of the TCP+TLS transport, the datagram socket and the RPC layer."""

    limits: CodecLimits = field(default_factory=CodecLimits)
    """Decoder limits, see `CodecLimits`."""

    connect_timeout: float = 5.0
    """Seconds to open a TCP connection. A LAN peer answers a SYN in <1 ms; 5 s covers a
    busy machine without stalling a caller for long on a dead address."""

    handshake_timeout: float = 10.0
    """Seconds for TLS plus the hello/token exchange. Both take 2 round trips and a few
    signatures (~2 ms); anything slower is a stuck or hostile peer whose slot we free."""

    max_handshakes: int = 64
    """Connections allowed in the handshake at once. More are closed at accept, so a flood
    of half-open connections costs at most this many slots (each ~50 KiB of TLS state)."""

    frame_timeout: float = 30.0
    """Seconds for the rest of a frame to arrive once its first byte came. An idle
    connection may stay silent forever; a half-sent frame may not hold a buffer forever."""

    write_timeout: float = 30.0
    """Seconds a write may wait for the peer to take data before the connection counts as
    broken: a peer that stops reading must not pin our queue and writer forever."""

    send_buffer_bytes: int = 4 * MiB
    """Bytes queued on one connection before `send` waits (back-pressure). Four 1 MiB chunks
    keep a gigabit link busy while the writer drains them."""

    max_datagram_size: int = 1400
    """Largest sealed UDP datagram. 1400 stays under a 1500-byte Ethernet MTU with IP and
    UDP headers (memberlist uses the same figure), so datagrams are never fragmented."""

    rpc_timeout: float = 10.0
    """Default seconds an RPC call waits for its answer before `TimeoutError`."""

    log_interval: float = 10.0
    """Seconds between two log lines about the same kind of dropped input (undecryptable
    datagrams, handshake floods): a flood must not flood the log too."""

    def __post_init__(self) -> None:
        """Refuse settings the transport cannot run with (a zero timeout fails every
        connection, a datagram size no sealed gossip packet fits in)."""
        for name in ("connect_timeout", "handshake_timeout", "frame_timeout",
                     "write_timeout", "rpc_timeout", "log_interval"):
            require_setting(self, name, getattr(self, name) > 0, "must be > 0")
        for name in ("max_handshakes", "send_buffer_bytes"):
            require_setting(self, name, getattr(self, name) >= 1, "must be >= 1")
        require_setting(self, "max_datagram_size",
                 MIN_DATAGRAM_SIZE <= self.max_datagram_size <= MAX_UDP_PAYLOAD,
                 f"must be in {MIN_DATAGRAM_SIZE}..{MAX_UDP_PAYLOAD} bytes")

    @classmethod
    def local(cls) -> NetConfig:
        """Nodes on one machine (tests, demos): loopback answers in microseconds, so stuck
        peers are given up on quickly."""
        return cls(connect_timeout=2.0, handshake_timeout=2.0, frame_timeout=5.0,
                   write_timeout=5.0, rpc_timeout=5.0)


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/p2pexec`, else `~/.local/share/p2pexec` (where the node key lives)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                             "share")
    return Path(base) / "p2pexec"


def require_setting(cfg: object, name: str, ok: bool, rule: str) -> None:
    """`LocalUsageError` naming the setting, its value and `rule` unless `ok` (used by every
    config's __post_init__, so all refusals read alike)."""
    if not ok:
        raise LocalUsageError(f"{type(cfg).__name__}.{name} = {getattr(cfg, name)!r} {rule}")
