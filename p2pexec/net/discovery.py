"""Finding peers: zeroconf (mDNS) on the LAN plus static `--peer host:port` seeds.

Discovery only says "a node of our cluster may listen at this address". Nothing it
reports is trusted: the transport's TLS handshake proves the node id and the cluster
token, so a forged announcement costs a failed connection attempt and nothing more.
The announcement carries the node id, the cluster id, a human name and the protocol
version in its TXT record, and never the cluster token.

Three layers, outermost last:

- Sans-IO rules (`encode_txt`, `parse_announcement`, `parse_seed`, `PeerTable`): what an
  announcement looks like, which ones are malformed, which belong to our cluster, which
  are new. Plain functions and one class, tested without zeroconf or trio.
- The zeroconf bridge: zeroconf runs its own asyncio loop on its own thread. Every
  zeroconf call is submitted to that loop (`asyncio.run_coroutine_threadsafe`) and its
  result handed back to trio through the trio token, so no trio worker thread is
  borrowed and cancelling a call (e.g. the ~1.6 s name probing of a registration) is
  immediate. Browser callbacks run on zeroconf's loop and hand events to trio with
  `TrioToken.run_sync_soon(send_nowait, ...)`.
- `run_discovery`: the one trio service. Closing its nursery sends mDNS goodbyes, closes
  zeroconf and joins its thread, so nothing is left behind.

mDNS questions are asked as QM (multicast answers): on loopback a unicast (QU) answer can
reach another zeroconf instance's socket bound to the same port, and discovery then waits
for the next query (~1 s more). mDNS never reports a partitioned peer as removed (PTR
records live 75 min), so failure detection belongs to gossip; instead discovery re-reports
every peer it knows each `refresh_interval`, which lets the membership layer rejoin peers
after a partition heals.

Loopback needs nothing special on Linux: `Zeroconf(interfaces=["127.0.0.1"])` sets
IP_MULTICAST_IF to 127.0.0.1, `lo` is joined to 224.0.0.251 by the socket, and the
kernel loops multicast back to every socket in the group (IP_MULTICAST_LOOP defaults on).
No multicast route on `lo` is needed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import trio
from zeroconf import (
    DNSQuestionType,
    IPVersion,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf import Error as ZeroconfError
from zeroconf.asyncio import AsyncServiceBrowser

from p2pexec.errors import LocalUsageError, RemoteProtocolError
from p2pexec.ids import NodeId
from p2pexec.net.tcp import RateLimitedLog
from p2pexec.net.transport import WILDCARD_HOSTS, Address, format_address

log = logging.getLogger("p2pexec.discovery")

SERVICE_TYPE = "_p2pexec._tcp.local."
"""The DNS-SD service type every p2pexec node advertises and browses."""

TXT_NODE_ID = "id"
TXT_CLUSTER_ID = "c"
TXT_NAME = "n"
TXT_PROTOCOL_VERSION = "v"

MAX_NAME_BYTES = 63
"""A node's human name fits one DNS label, so it can also name the mDNS instance."""

MAX_ADDRESSES = 8
"""Most addresses kept from one announcement (a host with more interfaces is rare)."""

_CLUSTER_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NODE_ID_RE = re.compile(r"[0-9a-f]{64}")
_VERSION_RE = re.compile(r"0|[1-9][0-9]{0,3}")

_EVENT_BUFFER = 1024
"""Browser events waiting for trio. Handling one only starts a task, so the buffer fills
only when a hostile LAN announces 1000+ services at once; the excess is dropped, logged."""

_MAX_REJECTED_NAMES = 4096
"""Names remembered only to log each bad announcement once; forgotten wholesale past this."""

_RESOLVE_CONCURRENCY = 16
"""Service records resolved at once. A resolution task is only started once it has a slot,
so a flood of announcements cannot pile up tasks: the event buffer above fills and drops."""


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """How a node finds its peers. Defaults suit a LAN; `local()` suits one machine."""

    mdns: bool = True
    """Advertise and browse with mDNS. `--no-mdns` turns it off (seeds only)."""
    seeds: tuple[Address, ...] = ()
    """`--peer host:port` addresses, for networks multicast does not reach."""
    interfaces: tuple[str, ...] | None = None
    """IPv4 addresses of the interfaces mDNS uses; None means every interface."""
    service_type: str = SERVICE_TYPE
    """DNS-SD type. Every cluster shares it; the cluster id in TXT tells them apart."""
    resolve_timeout: float = 3.0
    """Seconds to wait for a browsed service's SRV/TXT/A records (usually cached already)."""
    refresh_interval: float | None = 30.0
    """Every known peer and seed is reported again this often (None: once), so the
    membership layer can rejoin peers it declared dead during a partition. Matches
    memberlist's 30 s push-pull interval."""
    requery_interval: float | None = 60.0
    """Seconds between fresh mDNS queries (None: zeroconf's own schedule only). zeroconf
    asks four times in the first ~14 s and then only when records near expiry (~56 min):
    a node that was cut off or not yet up then is not found for an hour. Each fresh query
    lists the peers we know (known-answer suppression), so only unknown peers answer: one
    packet per node per interval on a quiet LAN. Every pair of nodes meets within one
    interval of both being reachable."""
    goodbye_timeout: float = 1.0
    """Longest shutdown waits for the mDNS goodbye packets (three, 125 ms apart)."""
    max_peers: int = 4096
    """Most mDNS peers remembered; announcements beyond it are ignored with a log line."""

    def __post_init__(self) -> None:
        if not self.service_type.endswith("._tcp.local."):
            raise LocalUsageError(
                f"service type must end in ._tcp.local., got {self.service_type!r}")
        if self.resolve_timeout <= 0 or self.goodbye_timeout < 0 or self.max_peers < 1:
            raise LocalUsageError("resolve_timeout, goodbye_timeout and max_peers must be positive")
        for interval in (self.refresh_interval, self.requery_interval):
            if interval is not None and interval <= 0:
                raise LocalUsageError("refresh_interval and requery_interval must be "
                                      "positive or None")

    @classmethod
    def lan(cls) -> DiscoveryConfig:
        """Machines on one LAN: mDNS on every interface (the defaults)."""
        return cls()

    @classmethod
    def local(cls) -> DiscoveryConfig:
        """Nodes on one machine (tests, demos): mDNS on 127.0.0.1 only, nothing leaves the
        host; peers are re-reported and re-queried every 5 s so membership heals quickly."""
        return cls(interfaces=("127.0.0.1",), refresh_interval=5.0, requery_interval=5.0)


@dataclass(frozen=True, slots=True)
class Announcement:
    """What a node advertises about itself: where it listens and who it claims to be."""

    address: Address
    node_id: NodeId
    cluster_id: str
    name: str
    protocol_version: int
    addresses: tuple[Address, ...] = ()
    """Every address a parsed announcement listed, best first (`address` is the first).
    Empty for our own: `service_info_for` derives what we advertise from `address`."""


@dataclass(frozen=True, slots=True)
class DiscoveredPeer:
    """A candidate peer. `node_id` is None for a seed: it is learnt when we connect.

    Unverified by construction: the transport handshake proves id and cluster token, so
    dial `address` with `expected=node_id`, and the other `addresses` if it fails."""

    address: Address
    node_id: NodeId | None
    cluster_id: str
    name: str
    source: Literal["mdns", "seed"] = "mdns"
    addresses: tuple[Address, ...] = ()
    """Every advertised address, best first; `address` is `addresses[0]`."""


# ---------------------------------------------------------------------------------------
# Sans-IO rules


def _cluster_id_ok(cluster_id: str) -> bool:
    return _CLUSTER_ID_RE.fullmatch(cluster_id) is not None


def _name_ok(name: str) -> bool:
    return bool(name) and len(name.encode("utf-8")) <= MAX_NAME_BYTES and name.isprintable()


def validate_cluster_id(cluster_id: str) -> str:
    """Our own cluster id must be one an honest peer's parser accepts."""
    if not _cluster_id_ok(cluster_id):
        raise LocalUsageError(
            f"cluster id must be 1-64 characters of A-Z a-z 0-9 _ -, got {cluster_id!r}")
    return cluster_id


def validate_name(name: str) -> str:
    """A node name is one printable DNS label (at most 63 UTF-8 bytes)."""
    if not _name_ok(name):
        raise LocalUsageError(f"node name must be 1-{MAX_NAME_BYTES} printable bytes, got {name!r}")
    return name


def encode_txt(me: Announcement) -> dict[str, str]:
    """TXT properties for our announcement: id, cluster id, name, protocol version."""
    validate_cluster_id(me.cluster_id)
    validate_name(me.name)
    return {
        TXT_NODE_ID: me.node_id.hex,
        TXT_CLUSTER_ID: me.cluster_id,
        TXT_NAME: me.name,
        TXT_PROTOCOL_VERSION: str(me.protocol_version),
    }


def _txt_field(properties: Mapping[bytes, bytes | None], key: str) -> str:
    value = properties.get(key.encode("ascii"))
    if value is None:
        raise RemoteProtocolError(f"TXT record lacks {key!r}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"TXT field {key!r} is not UTF-8") from None


def order_addresses(addresses: Iterable[str]) -> list[str]:
    """The addresses a service lists, best to dial first: IPv4 before IPv6, routable before
    link-local, listed order otherwise; duplicates, wildcard and multicast addresses
    dropped; at most `MAX_ADDRESSES`. A multi-homed peer (Wi-Fi plus a container bridge)
    lists several and only the handshake can tell which one reaches it, so all are kept."""
    parsed: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, None] = {}
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text)  # keeps an IPv6 scope ("%eth0")
        except ValueError:
            raise RemoteProtocolError(f"bad address {text[:80]!r}") from None
        if not (addr.is_unspecified or addr.is_multicast):
            parsed[addr] = None
    if not parsed:
        raise RemoteProtocolError("announcement has no usable address")
    ranked = sorted(parsed, key=lambda a: (a.version, a.is_link_local))  # stable
    return [str(a) for a in ranked[:MAX_ADDRESSES]]


def parse_announcement(properties: Mapping[bytes, bytes | None], addresses: Iterable[str],
                       port: int | None) -> Announcement:
    """Validate every field a peer announced; raise `RemoteProtocolError` on any defect.

    Fields come from the network, so each is checked for presence, encoding, length and
    form before it is believed. Unknown TXT keys are ignored (newer peers may add some)."""
    node_hex = _txt_field(properties, TXT_NODE_ID)
    if not _NODE_ID_RE.fullmatch(node_hex):
        raise RemoteProtocolError(f"node id is not 64 lowercase hex digits: {node_hex[:80]!r}")
    cluster_id = _txt_field(properties, TXT_CLUSTER_ID)
    if not _cluster_id_ok(cluster_id):
        raise RemoteProtocolError(f"malformed cluster id {cluster_id[:80]!r}")
    name = _txt_field(properties, TXT_NAME)
    if not _name_ok(name):
        raise RemoteProtocolError(f"malformed node name {name[:80]!r}")
    version_text = _txt_field(properties, TXT_PROTOCOL_VERSION)
    if not _VERSION_RE.fullmatch(version_text):
        raise RemoteProtocolError(f"malformed protocol version {version_text[:80]!r}")
    if port is None or not 1 <= port <= 65535:
        raise RemoteProtocolError(f"bad port {port!r}")
    ordered = tuple((host, port) for host in order_addresses(addresses))
    return Announcement(address=ordered[0], node_id=NodeId.from_hex(node_hex),
                        cluster_id=cluster_id, name=name, protocol_version=int(version_text),
                        addresses=ordered)


def parse_seed(text: str) -> Address:
    """`host:port` or `[v6addr]:port` from `--peer`; a `LocalUsageError` names the fault."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an unbracketed IPv6 address is ambiguous
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise LocalUsageError(
            f"--peer expects host:port (IPv6 as [addr]:port), got {text!r}")
    return (host, int(port_text))


def seed_peer(address: Address, cluster_id: str) -> DiscoveredPeer:
    """A seed as a candidate: id unknown until the handshake, cluster assumed to be ours."""
    return DiscoveredPeer(address=address, node_id=None, cluster_id=cluster_id,
                          name=format_address(address), source="seed", addresses=(address,))


_ITSELF = "it is this node"


@dataclass
class PeerTable:
    """Which announcements are new, which are ours to ignore. No I/O.

    Keyed by mDNS service name: `observe` returns the peer to report when a name is new
    or its announcement changed, and None for a repeat, for ourselves, for another
    cluster or protocol version, or past `max_peers`. Each reason to ignore a name is
    logged once, so a chatty or hostile LAN costs one log line per name."""

    me: Announcement
    max_peers: int = 4096
    _known: dict[str, DiscoveredPeer] = field(default_factory=dict)
    _ignored: dict[str, str] = field(default_factory=dict)

    def observe(self, service_name: str, announcement: Announcement) -> DiscoveredPeer | None:
        """A resolved, well-formed announcement; the peer to report, if any."""
        reason = self._ignore_reason(service_name, announcement)
        if reason is not None:
            self._known.pop(service_name, None)
            self._note_ignored(service_name, reason)
            return None
        self._ignored.pop(service_name, None)
        peer = DiscoveredPeer(address=announcement.address, node_id=announcement.node_id,
                              cluster_id=announcement.cluster_id, name=announcement.name,
                              addresses=announcement.addresses or (announcement.address,))
        if self._known.get(service_name) == peer:
            return None
        self._known[service_name] = peer
        return peer

    def reject(self, service_name: str, reason: str) -> None:
        """A malformed announcement: forget the name and log why, once."""
        self._known.pop(service_name, None)
        self._note_ignored(service_name, reason)

    def forget(self, service_name: str) -> None:
        """The service said goodbye; a later announcement is new again."""
        self._known.pop(service_name, None)
        self._ignored.pop(service_name, None)

    def known(self) -> list[DiscoveredPeer]:
        """Every peer currently believed to be announced, in discovery order."""
        return list(self._known.values())

    def _ignore_reason(self, service_name: str, ann: Announcement) -> str | None:
        if ann.node_id == self.me.node_id:
            return _ITSELF
        if ann.cluster_id != self.me.cluster_id:
            return f"it belongs to cluster {ann.cluster_id!r}"
        if ann.protocol_version != self.me.protocol_version:
            return (f"it speaks protocol version {ann.protocol_version}, "
                    f"we speak {self.me.protocol_version}")
        if service_name not in self._known and len(self._known) >= self.max_peers:
            return f"{self.max_peers} peers are known already"
        return None

    def _note_ignored(self, service_name: str, reason: str) -> None:
        if self._ignored.get(service_name) == reason:
            return
        if len(self._ignored) >= _MAX_REJECTED_NAMES:
            self._ignored.clear()
        self._ignored[service_name] = reason
        level = logging.DEBUG if reason == _ITSELF else logging.INFO
        log.log(level, "%s: ignoring mDNS service %r: %s", self.me.name, service_name, reason)


def advertised_addresses(host: str, interfaces: tuple[str, ...] | None) -> list[str]:
    """The addresses to put in our A records.

    A concrete listen host is advertised as is; a wildcard one (0.0.0.0) is reachable on
    every mDNS interface, so those interfaces' addresses are advertised."""
    if host not in WILDCARD_HOSTS:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise LocalUsageError(f"mDNS advertises IP addresses; {host!r} is not one "
                                  f"(listen on an address, or use --no-mdns)") from None
        return [host]
    if interfaces:
        return list(interfaces)
    import ifaddr  # zeroconf's own dependency for listing interfaces

    found = sorted({ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
                    if ip.is_IPv4 and not ipaddress.ip_address(ip.ip).is_loopback})
    return found or ["127.0.0.1"]


def service_info_for(me: Announcement, config: DiscoveryConfig) -> ServiceInfo:
    """Our zeroconf record: instance and host names derived from the node id (unique)."""
    label = me.node_id.hex[:32]
    return ServiceInfo(
        config.service_type,
        f"{label}.{config.service_type}",
        port=me.address[1],
        properties=encode_txt(me),
        server=f"px-{label}.local.",
        parsed_addresses=advertised_addresses(me.address[0], config.interfaces),
    )


# ---------------------------------------------------------------------------------------
# The zeroconf <-> trio bridge

T = TypeVar("T")


async def _in_zeroconf_loop(zc: Zeroconf, make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on zeroconf's own loop and await its result from trio.

    Cancelling the trio side cancels the asyncio task; no trio thread is used."""
    assert zc.loop is not None
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    async def call() -> T:
        return await make()

    future = asyncio.run_coroutine_threadsafe(call(), zc.loop)

    def wake(_: object) -> None:
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            return

    future.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        raise
    return future.result()


Event = tuple[ServiceStateChange, str]


def _browser_handler(token: trio.lowlevel.TrioToken,
                     events: trio.MemorySendChannel[Event]) -> Callable[..., None]:
    """A zeroconf state-change handler (runs on zeroconf's loop) feeding a trio channel."""

    overflow = RateLimitedLog(interval=10.0, burst=1)

    def deliver(event: Event) -> None:  # runs in trio; must never raise
        try:
            events.send_nowait(event)
        except trio.WouldBlock:
            if overflow.allow("mDNS event dropped"):
                log.warning("mDNS events arrive faster than they are handled; dropped %r",
                            event[1])
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return

    def handler(*, zeroconf: Zeroconf, service_type: str, name: str,
                state_change: ServiceStateChange) -> None:
        try:
            token.run_sync_soon(deliver, (state_change, name))
        except trio.RunFinishedError:
            return

    return handler


# ---------------------------------------------------------------------------------------
# The trio service


async def run_discovery(config: DiscoveryConfig, me: Announcement,
                        found: trio.MemorySendChannel[DiscoveredPeer], *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Advertise `me`, browse for peers of `me.cluster_id`, report candidates on `found`.

    Seeds are reported first and, with mDNS peers, again every `refresh_interval`.
    `task_status.started()` once browsing runs (registration finishes ~1.6 s later in the
    background). Returns when cancelled or when `found`'s receiver is closed; either way
    our service is withdrawn and zeroconf closed. `found` is left open for its owner."""
    validate_cluster_id(me.cluster_id)
    validate_name(me.name)
    info = service_info_for(me, config) if config.mdns else None  # usage errors surface now
    table = PeerTable(me, max_peers=config.max_peers)
    seeds = [seed_peer(a, me.cluster_id) for a in dict.fromkeys(config.seeds) if a != me.address]
    mdns = _Mdns.open(config) if config.mdns else None
    try:
        async with trio.open_nursery() as nursery:

            async def emit(peer: DiscoveredPeer) -> None:
                try:
                    await found.send(peer)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    nursery.cancel_scope.cancel()  # nobody listens: discovery is pointless

            if mdns is not None:
                events_send, events_recv = trio.open_memory_channel[Event](_EVENT_BUFFER)
                await mdns.browse(events_send)
                nursery.start_soon(mdns.register, info)
                nursery.start_soon(mdns.requery_periodically)
                nursery.start_soon(_handle_events, mdns, table, events_recv, emit)
            nursery.start_soon(_refresh, config, table, seeds, emit)
            task_status.started()
    finally:
        if mdns is not None:
            with trio.CancelScope(shield=True):
                await mdns.aclose()


class _Mdns:
    """One zeroconf instance and its browser, driven from trio."""

    def __init__(self, zc: Zeroconf, config: DiscoveryConfig) -> None:
        self.zc = zc
        self.config = config
        self.browser: AsyncServiceBrowser | None = None
        self.handler: Callable[..., None] | None = None

    @classmethod
    def open(cls, config: DiscoveryConfig) -> _Mdns | None:
        """Zeroconf on the configured interfaces, or None (seeds only) when the OS refuses."""
        try:
            if config.interfaces:
                zc = Zeroconf(interfaces=list(config.interfaces))
            else:
                zc = Zeroconf(ip_version=IPVersion.V4Only)
        except (OSError, RuntimeError) as exc:  # RuntimeError: no interface to listen on
            log.warning("mDNS unavailable (%s); discovering peers through --peer seeds only", exc)
            return None
        return cls(zc, config)

    async def browse(self, events: trio.MemorySendChannel[Event]) -> None:
        """Start the browser on zeroconf's loop; its events go to `events`."""
        self.handler = _browser_handler(trio.lowlevel.current_trio_token(), events)
        await self._restart_browser()

    async def requery_periodically(self) -> None:
        """Replace the browser every `requery_interval`: a new browser asks afresh."""
        interval = self.config.requery_interval
        while interval is not None:
            await trio.sleep(interval)
            await self._restart_browser()

    async def _restart_browser(self) -> None:
        """Cancel the current browser (if any) and start one that queries at once.

        A new browser first replays zeroconf's cached services as "added"; `PeerTable`
        drops those repeats, and services new to the cache are reported as usual."""

        async def restart() -> None:  # on zeroconf's loop, so `aclose` sees the newest
            if self.browser is not None:
                await self.browser.async_cancel()
            self.browser = AsyncServiceBrowser(self.zc, self.config.service_type,
                                               handlers=[self.handler],
                                               question_type=DNSQuestionType.QM)

        await _in_zeroconf_loop(self.zc, restart)

    async def register(self, info: ServiceInfo) -> None:
        """Probe our names and announce them. A failure leaves us browsing, never crashes."""
        try:
            await _in_zeroconf_loop(self.zc, lambda: self.zc.async_register_service(info))
        except (ZeroconfError, OSError) as exc:
            log.error("could not advertise %s over mDNS (%s: %s); peers must find us through "
                      "--peer or our own connections", info.name, type(exc).__name__, exc)
            return
        log.debug("advertising %s over mDNS", info.name)

    async def resolve(self, name: str) -> ServiceInfo | None:
        """A browsed service's SRV/TXT/A records, asked with QM questions; None on timeout."""
        timeout_ms = int(self.config.resolve_timeout * 1000)
        return await _in_zeroconf_loop(self.zc, lambda: self.zc.async_get_service_info(
            self.config.service_type, name, timeout_ms, DNSQuestionType.QM))

    async def aclose(self) -> None:
        """Stop browsing, say goodbye (bounded by `goodbye_timeout`), join zeroconf's thread."""

        async def goodbye() -> None:
            if self.browser is not None:
                await self.browser.async_cancel()
                self.browser = None
            await self.zc.async_unregister_all_services()

        with trio.move_on_after(self.config.goodbye_timeout):
            try:
                await _in_zeroconf_loop(self.zc, goodbye)
            except (ZeroconfError, OSError) as exc:
                log.warning("mDNS goodbye failed (%s); peers will forget us by TTL", exc)
        self.zc.close()  # sockets and the loop thread; quick once nothing is registered


async def _handle_events(mdns: _Mdns, table: PeerTable, events: trio.MemoryReceiveChannel[Event],
                         emit: Callable[[DiscoveredPeer], Awaitable[None]]) -> None:
    """Resolve added/updated services concurrently, one resolution per name at a time."""
    limiter = trio.CapacityLimiter(_RESOLVE_CONCURRENCY)
    resolving: set[str] = set()
    stale: set[str] = set()

    async def resolve_name(name: str, slot: object) -> None:
        try:
            while True:
                stale.discard(name)
                peer = await _judge(mdns, table, name)
                if peer is not None:
                    await emit(peer)
                if name not in stale:
                    return
        finally:
            resolving.discard(name)
            limiter.release_on_behalf_of(slot)

    async with trio.open_nursery() as nursery:
        async for state, name in events:
            if state is ServiceStateChange.Removed:
                log.debug("mDNS service %s said goodbye", name)
                table.forget(name)
            elif name in resolving:
                stale.add(name)
            else:
                # take the slot before spawning: a flood waits here (and the bounded event
                # buffer drops the excess) instead of piling up tasks
                slot = object()
                await limiter.acquire_on_behalf_of(slot)
                resolving.add(name)
                nursery.start_soon(resolve_name, name, slot)


async def _judge(mdns: _Mdns, table: PeerTable, name: str) -> DiscoveredPeer | None:
    """Resolve one service and judge its announcement; never raises for bad input."""
    try:
        info = await mdns.resolve(name)
    except (ZeroconfError, ValueError) as exc:  # e.g. BadTypeInNameException for odd names
        table.reject(name, f"unresolvable service name: {exc}")
        return None
    if info is None:
        log.debug("mDNS service %s did not resolve within %.1f s", name,
                  mdns.config.resolve_timeout)
        return None
    try:
        announcement = parse_announcement(info.properties, info.parsed_addresses(), info.port)
    except RemoteProtocolError as exc:
        table.reject(name, f"malformed announcement: {exc}")
        return None
    return table.observe(name, announcement)


async def _refresh(config: DiscoveryConfig, table: PeerTable, seeds: list[DiscoveredPeer],
                   emit: Callable[[DiscoveredPeer], Awaitable[None]]) -> None:
    """Report seeds now, then seeds and every known mDNS peer each refresh interval."""
    for seed in seeds:
        await emit(seed)
    interval = math.inf if config.refresh_interval is None else config.refresh_interval
    while True:
        await trio.sleep(interval)
        for peer in [*seeds, *table.known()]:
            await emit(peer)
