"""Moving large objects between nodes.

A node that holds a value in shared memory publishes a holder record for it in the DHT
(`announce`). A node that needs a copy (`fetch`) finds the holders there and asks one
over a connection of its own (kept for the next fetch from that holder, IDLE_TIMEOUT).
Where the transport offers bulk channels (TCP, `net.bulk`), the holder answers with a
header holding a fresh ticket and AES-256-GCM key, and the segment flows as sealed frames
read with a few large `recv_into`s (TLS through trio would cost a pass per 16 KiB record)
on the connection's bulk channel: the fetcher opens it for the first offer, and both ends
keep it with the connection, so a later fetch costs one round trip; elsewhere
(SimNetwork) the chunks travel as messages on the connection. Either way each send
waits for the peer to take the previous data, so neither side holds more than a chunk
or two; the fetcher writes each chunk straight into a segment of its own (local workers
then map it: no other copy) and checksums as it goes. The holder sends the CRC-32 of the
whole segment after the last chunk (computed while streaming the first time, remembered
after), so no pass over the data precedes the first byte. If the holder fails mid-way,
the fetch resumes at the same offset from the next holder; the final checksum must
match, or the copy is discarded.

Why a CRC and not SHA-256: the checksum guards against accidents, not against holders.
The bytes in transit are authenticated frame by frame (AES-GCM, offsets bound in), and
object ids are random, not derived from content, so no digest can prove that a holder
sent the right value: a holder that lies computes its digest over its lie. What is left
to catch is a copy that differs between holders (a resumed fetch stitching two of them)
or that changed after its checksum was remembered, which a CRC-32 catches as well as a
cryptographic hash. SHA-256 cost 0.57 ms per MiB on each side, half of the whole
transfer's CPU on this machine; CRC-32 costs 0.2.

Values under the inline limit never come here: they travel inside task and result
messages, and nothing about them is published.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import random
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio

from p2pexec.dht.driver import DhtDriver
from p2pexec.dht.messages import Record
from p2pexec.errors import DhtLookupError, ObjectLostError, ProtocolError, RemoteProtocolError
from p2pexec.exec import shm
from p2pexec.exec.protocol import SHARED
from p2pexec.ids import NodeId
from p2pexec.net.bulk import (
    TAG_SIZE,
    BulkCipher,
    BulkOffer,
    BulkStream,
    BulkTransport,
    receive_exactly,
)
from p2pexec.net.codec import Codec, log_dropped, message
from p2pexec.net.transport import Connection, Transport

log = logging.getLogger("p2pexec.exec")

CHUNK_SIZE = 1 << 18
"""Bytes per chunk (a bulk frame's plaintext): large enough that per-frame costs vanish
next to the copy, small enough that a frame and its sealed twin stay in the CPU cache
between read, checksum, seal and send (and open, write and checksum), and that the first
frame arrives soon. Per 16 MiB here: 256 and 512 KiB alike, 128 KiB ~0.5 ms slower,
1 MiB 1-2 ms."""

CHECKSUM_SIZE = 4
"""Bytes of an `ObjectEnd` checksum (a CRC-32, big-endian)."""

STALL_TIMEOUT = 10.0
"""Seconds a holder may go without sending the next message of a transfer before the
fetch moves on to the next holder (a holder that stalls costs this, never a hang)."""

IDLE_TIMEOUT = 30.0
"""Seconds a holder keeps a transfer connection open for the fetcher's next request. The
fetcher reuses one for half that long (never one the holder is about to close): a node
fetching several objects from another pays its TLS handshake (~5 ms) once."""

IDLE_PER_HOLDER = 2
"""Idle transfer connections a fetcher keeps per holder (one per concurrent fetch from it
is what saves handshakes; more would only hold sockets)."""

KEPT_BUFFERS = 4
"""Frame buffers kept between transfers: two per transfer in progress (read and sealed, or
sealed and plain), for two at once. A fresh buffer costs a page fault per 4 KiB when it is
first written (~0.5 ms per MiB here, on each side of every transfer)."""

HOLDER_RETRIES = (0.05, 0.25, 1.0)
"""Seconds to wait before asking the DHT again for the holders of an object none was
found for (an announcement takes one lookup and a store: milliseconds on a LAN)."""

TRANSFER_CODES = range(112, 117)
"""Message codes of this protocol: a connection opening with FetchObject is served here."""


@message(112)
@dataclass(frozen=True, slots=True)
class FetchObject:
    """Send me object `object_id` from byte `offset` on (on a bulk channel if you can and
    `bulk`: my transport takes one)."""

    object_id: bytes
    offset: int
    bulk: bool


@message(113)
@dataclass(frozen=True, slots=True)
class ObjectHeader:
    """What follows: the whole segment is `size` bytes, laid out as a pickle stream of
    `main_size` bytes and buffers of `buffer_sizes`; the bytes from the offset asked for
    (as ObjectChunks, or on the bulk channel of `bulk`), then an ObjectEnd."""

    size: int
    main_size: int
    buffer_sizes: list[int]
    bulk: BulkOffer | None

    @property
    def layout(self) -> tuple[int, int, list[int]]:
        """What every holder of one object must agree on (offers differ per transfer)."""
        return self.size, self.main_size, self.buffer_sizes


@message(114)
@dataclass(frozen=True, slots=True)
class ObjectChunk:
    data: bytes


@message(116)
@dataclass(frozen=True, slots=True)
class ObjectEnd:
    """The CRC-32 of the whole segment (from byte 0, whatever offset was asked for)."""

    digest: bytes


@message(115)
@dataclass(frozen=True, slots=True)
class ObjectMissing:
    """This node holds no copy (any more)."""

    reason: str


def object_key(object_id: bytes) -> bytes:
    """The DHT key of an object's holder records."""
    return hashlib.sha256(b"p2pexec object\0" + object_id).digest()


async def find_publishers(dht: DhtDriver, key: bytes, exclude: NodeId) -> list[NodeId]:
    """The nodes other than `exclude` that published a record under `key` (see
    `find_records`)."""
    return [r.publisher for r in await find_records(dht, key) if r.publisher != exclude]


async def find_records(dht: DhtDriver, key: bytes) -> list[Record]:
    """The records under `key`. A ref can outrun its maker's announcement (made a moment
    ago), so a lookup that finds none is repeated after each of HOLDER_RETRIES;
    `DhtLookupError` after the last."""
    for pause in (*HOLDER_RETRIES, None):
        try:
            return await dht.find_value(key)
        except DhtLookupError:
            if pause is None:
                raise
            await trio.sleep(pause)
    raise AssertionError("unreachable: the last pass returns or raises")


class ObjectTransfers:
    """Serves this node's large values to peers and fetches copies of theirs."""

    def __init__(self, transport: Transport, dht: DhtDriver, codec: Codec,
                 payload_of: Callable[[bytes], list | None], rng: random.Random,
                 chunk_size: int = CHUNK_SIZE, stall_timeout: float = STALL_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        """`payload_of(object_id)` is the local payload of an object, if held; `rng`
        spreads fetchers over holders."""
        self.transport = transport
        self.rng = rng
        self.stall_timeout = stall_timeout
        self.idle_timeout = idle_timeout
        self.dht = dht
        self.codec = codec
        self.payload_of = payload_of
        self.chunk_size = chunk_size
        self._bulk = isinstance(transport, BulkTransport)
        """The transport offers bulk channels (checked once: a Protocol check is slow)."""
        self._digests: dict[bytes, bytes] = {}
        """Checksum per object held, once known: computed while first streamed (or checked
        when fetched), so later requests stream without it; forgotten when freed."""
        self.node_id = transport.local.node_id
        self.bytes_served = 0
        self.bytes_fetched = 0
        self.prefetched = 0
        """Copies a prefetch brought (see `prefetch`)."""
        self._fetches = itertools.count()
        self._buffers = _Buffers(chunk_size + TAG_SIZE, KEPT_BUFFERS)
        self._idle: dict[NodeId, list[tuple[float, _Channel]]] = {}
        """Transfer connections to holders whose last request completed, with the time it
        did (reused for the next fetch from that holder, see IDLE_TIMEOUT)."""

    # ---- holder side -------------------------------------------------------------------

    async def announce(self, object_id: bytes, held: bool) -> None:
        """Publish (or withdraw) this node's holder record for `object_id`."""
        key = object_key(object_id)
        try:
            if held:
                await self.dht.publish(key, b"held")
            else:
                await self.dht.withdraw(key)
        except trio.ClosedResourceError:
            pass  # the node is stopping
        if not held:
            self._digests.pop(object_id, None)

    async def serve(self, conn: Connection, first: FetchObject) -> None:
        """Stream each requested object to the peer that opened `conn` (a stream service
        for TRANSFER_CODES), until it closes or sends nothing for IDLE_TIMEOUT."""
        peer = conn.peer
        channel = _Channel(conn)
        request = first
        try:
            while True:
                if type(request) is not FetchObject:
                    raise RemoteProtocolError(f"a transfer request is a FetchObject, not "
                                              f"{type(request).__name__}")
                await self._serve_one(channel, request)
                with trio.move_on_after(self.idle_timeout) as idle:
                    request = self.codec.decode(await conn.receive())
                if idle.cancelled_caught:
                    return  # idle too long: closed (the fetcher asks on a fresh one)
        except ProtocolError as exc:
            log_dropped(peer.address, f"bad transfer request: {exc}", peer.node_id)
        except TimeoutError as exc:
            log_dropped(peer.address, f"transfer stalled: {exc}", peer.node_id)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
            pass  # the fetcher went away; it resumes elsewhere
        finally:
            await channel.aclose()

    async def _serve_one(self, channel: _Channel, request: FetchObject) -> None:
        """Send one object (or ObjectMissing) on `channel`."""
        conn = channel.conn
        payload = self.payload_of(request.object_id)
        if payload is None or payload[0] != SHARED:
            await conn.send(self.codec.encode(ObjectMissing("no copy of that object here")))
            return
        segment, main_size, sizes = payload[1], payload[2], payload[3]
        try:
            fd = shm.open_segment(segment)  # in memory, or spilled to disk
        except FileNotFoundError:
            await conn.send(self.codec.encode(ObjectMissing("the copy was just freed")))
            return
        try:  # an open descriptor keeps the data even if the object is freed now
            size = os.fstat(fd).st_size
            if not 0 <= request.offset <= size:
                raise RemoteProtocolError(f"asked for offset {request.offset} of a "
                                          f"{size}-byte object")
            offer = (BulkOffer.new(self.chunk_size)
                     if request.bulk and self._bulk else None)
            header = ObjectHeader(size, main_size, list(sizes), offer)
            known = self._digests.get(request.object_id)
            hasher = None if known is not None else Checksum()
            with self._buffers.lend(self.chunk_size) as buffer:
                await self._stream(channel, header, fd, request.offset, hasher, buffer)
            if hasher is not None:
                known = self._digests[request.object_id] = hasher.digest()
            await conn.send(self.codec.encode(ObjectEnd(known)))
        finally:
            os.close(fd)

    async def _stream(self, channel: _Channel, header: ObjectHeader, fd: int, offset: int,
                      hasher: Checksum | None, buffer: memoryview) -> None:
        """Send `header`, then the segment from `offset` on, read a `buffer` at a time: on
        the bulk channel if `header` offers one (the connection's, opened by the fetcher
        for its first offer), else as ObjectChunks."""
        conn, size, offer = channel.conn, header.size, header.bulk
        if offer is None:
            await conn.send(self.codec.encode(header))
            await self._hash_prefix(fd, offset, hasher, buffer)
            for data in _read_chunks(fd, offset, size, buffer):
                if hasher is not None:
                    hasher.update(data)
                await conn.send(self.codec.encode(ObjectChunk(bytes(data))))
                self.bytes_served += len(data)
        else:
            if channel.bulk is None:
                channel.bulk = await self._bulk_arrival(conn, header)
            else:  # the frames follow the header at once: no round trip
                await conn.send(self.codec.encode(header))
                # `send` only queued it for the connection's writer task: let that run
                # before this one spends a frame's CPU (trio runs the tasks ready at once
                # in either order, so twice); ~0.5 ms sooner at the fetcher
                await trio.lowlevel.checkpoint()
                await trio.lowlevel.checkpoint()
            await self._hash_prefix(fd, offset, hasher, buffer)
            await self._send_bulk(channel.bulk, offer, fd, offset, size, hasher, buffer)

    async def _hash_prefix(self, fd: int, offset: int, hasher: Checksum | None,
                           buffer: memoryview) -> None:
        """The checksum covers the bytes before a resumed fetch's offset too."""
        if hasher is not None:
            for data in _read_chunks(fd, 0, offset, buffer):
                hasher.update(data)
                await trio.lowlevel.checkpoint()

    async def _bulk_arrival(self, conn: Connection, header: ObjectHeader) -> BulkStream:
        """Send `header` (its offer) and wait for the fetcher's bulk connection."""
        assert isinstance(self.transport, BulkTransport) and header.bulk is not None
        with self.transport.expect_bulk(header.bulk.ticket) as arrivals:
            await conn.send(self.codec.encode(header))
            with trio.move_on_after(self.stall_timeout):
                return await arrivals.receive()
        raise TimeoutError(f"no bulk connection within {self.stall_timeout:g} s")

    async def _send_bulk(self, stream: BulkStream, offer: BulkOffer, fd: int, offset: int,
                         size: int, hasher: Checksum | None, buffer: memoryview) -> None:
        """Seal the segment from `offset` on into frames of `offer.frame_size` bytes (a
        `buffer`'s worth)."""
        cipher = BulkCipher(offer)
        with self._buffers.lend(len(buffer) + TAG_SIZE) as sealed:
            for data in _read_chunks(fd, offset, size, buffer):
                if hasher is not None:
                    hasher.update(data)
                frame = cipher.seal_into(offset, data, sealed)
                with trio.move_on_after(self.stall_timeout) as scope:
                    await stream.send_all(frame)
                if scope.cancelled_caught:
                    raise TimeoutError(f"the fetcher took no frame for "
                                       f"{self.stall_timeout:g} s")
                offset += len(data)
                self.bytes_served += len(data)

    # ---- fetcher side ------------------------------------------------------------------

    async def fetch(self, object_id: bytes, holder: NodeId | None = None) -> list:
        """A local copy of `object_id` as a payload; `ObjectLostError` if no holder in the
        cluster can supply one intact. `holder`: a node known to have a copy (the peer
        that computed it), asked before the DHT is."""
        copy = self._copy(object_id)
        reasons: list[str] = []
        try:
            if holder is not None:
                payload = await self._fetch_one(holder, object_id, copy, reasons)
                if payload is not None:
                    return payload
            try:
                holders = await self._holders(object_id)
            except ObjectLostError:
                if not reasons:
                    raise
                holders = []
            self.rng.shuffle(holders)  # spread the fetchers of one object over its holders
            for other in holders:
                if other == holder:
                    continue
                payload = await self._fetch_one(other, object_id, copy, reasons)
                if payload is not None:
                    return payload
        except BaseException:
            copy.discard()
            raise
        copy.discard()
        raise ObjectLostError(f"object {object_id.hex()} could not be fetched: "
                              f"{'; '.join(reasons) or 'no holder'}")

    async def prefetch(self, object_id: bytes, holder: NodeId) -> list | None:
        """A copy of `object_id` from `holder` alone, or None: no connection to it is kept
        (a guess opens none), it has no large copy (a small value, or none yet), or the
        transfer failed. Never an error: the borrow this goes with has its own answer."""
        address = self.dht.address_of(holder)
        if address is None:
            return None
        channel = await self._take_idle(holder)
        if channel is None:
            return None
        copy = self._copy(object_id)
        try:
            if await self._request(channel, holder, address, object_id, copy, pooled=True):
                payload = self._checked(holder, object_id, copy, [])
                self.prefetched += payload is not None
                return payload
        except (ProtocolError, OSError, ObjectLostError, trio.BrokenResourceError,
                trio.ClosedResourceError, trio.EndOfChannel) as exc:
            log.debug("prefetch of object %s from %s got no copy (%s)", object_id.hex()[:12],
                      holder.short, exc or type(exc).__name__)
        finally:
            if not copy.complete:
                copy.discard()
        return None

    def _copy(self, object_id: bytes) -> _Copy:
        """The segment a fetch of `object_id` writes into: a name of its own per fetch, so
        that a copy fetched again soon after it was freed never meets the old file, whose
        unlink may still be under way."""
        return _Copy(shm.segment_name(os.getpid(), hashlib.sha256(
            b"fetched\0" + self.node_id.raw + object_id
            + next(self._fetches).to_bytes(8, "big")).digest()[:16]))

    async def _fetch_one(self, holder: NodeId, object_id: bytes, copy: _Copy,
                         reasons: list[str]) -> list | None:
        """Fill `copy` from `holder` (resuming where an earlier holder stopped); the
        payload once it is whole and its hash checks, else None with the reason noted."""
        address = self.dht.address_of(holder)
        if address is None:
            reasons.append(f"{holder.short}: not a live member")
            return None
        try:
            await self._fetch_from(holder, address, object_id, copy)
        except ProtocolError as exc:  # logged where it was seen
            reasons.append(f"{holder.short}: {exc}")
            return None
        except (OSError, ObjectLostError, trio.BrokenResourceError,
                trio.ClosedResourceError, trio.EndOfChannel) as exc:
            reasons.append(f"{holder.short}: {exc or type(exc).__name__}")
            log.info("fetch of object %s from %s stopped at byte %d (%s); trying "
                     "the next holder", object_id.hex()[:12], holder.short,
                     copy.offset, exc or type(exc).__name__)
            return None
        if not copy.complete:
            return None
        return self._checked(holder, object_id, copy, reasons)

    def _checked(self, holder: NodeId, object_id: bytes, copy: _Copy, reasons: list[str]
                 ) -> list | None:
        """The payload of a `copy` whose content matches the holder's checksum; else None,
        the copy started over and the reason noted."""
        if copy.hasher.digest() != copy.digest:
            copy.restart()
            reasons.append(f"{holder.short}: content checksum mismatch")
            log.warning("object %s from %s failed its content checksum; discarded",
                        object_id.hex()[:12], holder.short)
            return None
        header = copy.header
        copy.close()
        self._digests[object_id] = copy.digest  # serving it needs no hashing
        return [SHARED, copy.name, header.main_size, list(header.buffer_sizes)]

    async def _holders(self, object_id: bytes) -> list[NodeId]:
        """The other nodes that announced a copy."""
        try:
            return await find_publishers(self.dht, object_key(object_id), self.node_id)
        except DhtLookupError as exc:
            raise ObjectLostError(f"object {object_id.hex()} is held by no node of "
                                  f"the cluster ({exc})") from None

    async def _fetch_from(self, holder: NodeId, address: tuple[str, int], object_id: bytes,
                          copy: _Copy) -> None:
        """Fill `copy` from `holder`, on an idle connection to it if one is kept (a fresh
        one if that turns out closed before answering)."""
        channel = await self._take_idle(holder)
        if channel is not None and await self._request(channel, holder, address, object_id,
                                                        copy, pooled=True):
            return
        conn = None
        with trio.move_on_after(self.stall_timeout):
            conn = await self.transport.connect(address, expected=holder)
        if conn is None:
            raise TimeoutError(f"no connection within {self.stall_timeout:g} s")
        await self._request(_Channel(conn), holder, address, object_id, copy, pooled=False)

    async def _request(self, channel: _Channel, holder: NodeId, address: tuple[str, int],
                       object_id: bytes, copy: _Copy, pooled: bool) -> bool:
        """Ask for the object on `channel` and fill `copy`; kept idle for the next fetch
        once complete, else closed. False if a `pooled` connection was closed by the
        holder before it answered (it had been idle too long): nothing was received."""
        conn = channel.conn
        done = False
        try:
            bulk = self._bulk
            try:
                await conn.send(self.codec.encode(FetchObject(object_id, copy.offset, bulk)))
                header = self.codec.decode(await self._next(conn))
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
                if pooled:
                    return False
                raise
            if type(header) is ObjectMissing:
                done = True  # a whole answer: the connection serves the next request
                raise ObjectLostError(header.reason)
            if type(header) is not ObjectHeader:
                raise RemoteProtocolError(f"expected an ObjectHeader, got "
                                          f"{type(header).__name__}")
            copy.start(header)
            if header.bulk is None:
                while copy.offset < header.size:
                    chunk = self.codec.decode(await self._next(conn))
                    if type(chunk) is not ObjectChunk:
                        raise RemoteProtocolError(f"expected an ObjectChunk, got "
                                                  f"{type(chunk).__name__}")
                    copy.write(chunk.data)
                    self.bytes_fetched += len(chunk.data)
            elif not bulk:
                raise RemoteProtocolError("offered a bulk channel that was not asked for")
            else:
                await self._receive_bulk(channel, address, header.bulk, copy)
            end = self.codec.decode(await self._next(conn))
            if type(end) is not ObjectEnd or len(end.digest) != CHECKSUM_SIZE:
                raise RemoteProtocolError(f"expected an ObjectEnd, got {type(end).__name__}")
            copy.digest = end.digest
            done = True
        except ProtocolError as exc:
            log_dropped(address, f"transfer of object {object_id.hex()[:12]}: {exc}", holder)
            raise
        finally:
            if not (done and self._keep_idle(holder, channel)):
                await channel.aclose()
        return True

    async def _take_idle(self, holder: NodeId) -> _Channel | None:
        """A kept connection to `holder` still well inside the holder's idle timeout;
        expired ones (to any holder) are closed on the way."""
        fresh_after = trio.current_time() - self.idle_timeout / 2
        expired = []
        for node, kept in list(self._idle.items()):
            expired += [channel for since, channel in kept if since < fresh_after]
            kept[:] = [(since, channel) for since, channel in kept if since >= fresh_after]
            if not kept:
                del self._idle[node]
        kept = self._idle.get(holder)
        channel = kept.pop()[1] if kept else None
        for old in expired:
            await old.aclose()
        return channel

    def _keep_idle(self, holder: NodeId, channel: _Channel) -> bool:
        """Keep `channel` for the next fetch from `holder`, unless enough are kept."""
        kept = self._idle.setdefault(holder, [])
        if len(kept) >= IDLE_PER_HOLDER:
            return False
        kept.append((trio.current_time(), channel))
        return True

    async def _receive_bulk(self, channel: _Channel, address: tuple[str, int],
                            offer: BulkOffer, copy: _Copy) -> None:
        """Fill `copy` from the bulk channel (opened for the connection's first offer, to
        `address`, and kept with it): each frame is read whole into one buffer, checked and
        decrypted into another, and written to the segment."""
        assert isinstance(self.transport, BulkTransport) and copy.header is not None
        offer.check()
        size = copy.header.size
        cipher = BulkCipher(offer)
        most = min(offer.frame_size, max(1, size - copy.offset))  # the largest frame
        if channel.bulk is None:
            channel.bulk = await self.transport.connect_bulk(address, offer.ticket)
        stream = channel.bulk
        with (self._buffers.lend(most + TAG_SIZE) as sealed,
              self._buffers.lend(most) as plain):
            while copy.offset < size:
                n = min(offer.frame_size, size - copy.offset)
                frame = sealed[:n + TAG_SIZE]
                with trio.move_on_after(self.stall_timeout) as scope:
                    await receive_exactly(stream, frame)
                if scope.cancelled_caught:
                    raise TimeoutError(f"the holder sent no whole frame within "
                                       f"{self.stall_timeout:g} s")
                data = plain[:n]
                cipher.open_into(copy.offset, frame, data)
                copy.write(data)
                self.bytes_fetched += n

    async def _next(self, conn: Connection) -> bytes:
        """The holder's next message; `TimeoutError` if it stalls."""
        with trio.move_on_after(self.stall_timeout):
            return await conn.receive()
        raise TimeoutError(f"the holder sent nothing for {self.stall_timeout:g} s")


class Checksum:
    """A running CRC-32 with hashlib's `update`/`digest` (see the module doc for why)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(CHECKSUM_SIZE, "big")


def _read_chunks(fd: int, start: int, end: int, buffer: memoryview) -> Iterator[memoryview]:
    """Bytes `start..end` of the file, read into `buffer` a buffer's worth at a time (each
    view is valid until the next is read)."""
    while start < end:
        view = buffer[:min(len(buffer), end - start)]
        if os.preadv(fd, [view], start) != len(view):
            raise OSError(f"the segment ends before byte {end}")
        yield view
        start += len(view)


@dataclass(slots=True)
class _Channel:
    """A transfer connection and, once its first bulk offer opened one, its bulk channel,
    which carries every later offer on the connection (each under its own key): a fetch
    after the first costs no connection setup, and the holder writes the frames right
    after the header. A transfer that fails closes both, so neither end ever reads a frame
    boundary the other did not write."""

    conn: Connection
    bulk: BulkStream | None = None

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            if self.bulk is not None:
                await self.bulk.aclose()
            await self.conn.aclose()


class _Buffers:
    """Frame buffers of one size, kept between transfers (see KEPT_BUFFERS)."""

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self._keep = keep
        self._free: list[bytearray] = []

    @contextmanager
    def lend(self, size: int) -> Iterator[memoryview]:
        """`size` bytes of a kept buffer while the context lasts; of a fresh one, not kept,
        if `size` is larger than the kept ones (a peer's offer of larger frames)."""
        if size > self.size:
            yield memoryview(bytearray(size))
            return
        buffer = self._free.pop() if self._free else bytearray(self.size)
        try:
            yield memoryview(buffer)[:size]
        finally:
            if len(self._free) < self._keep:
                self._free.append(buffer)


class _Copy:
    """The segment a fetch writes into, possibly from several holders in turn."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fd: int | None = None
        self.header: ObjectHeader | None = None
        self.offset = 0
        self.hasher = Checksum()
        self.digest: bytes | None = None
        """The holder's checksum of the whole object, from its ObjectEnd."""

    @property
    def complete(self) -> bool:
        return self.digest is not None

    def start(self, header: ObjectHeader) -> None:
        """A holder announced the object: the first one sizes the segment; the others
        must describe the same content."""
        if header.size < 0:
            raise RemoteProtocolError(f"bad object header (size {header.size})")
        if self.header is None:
            self.fd = os.open(os.path.join(shm.segment_dir(), self.name),
                              os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(self.fd, max(header.size, 1))
            self.header = header
        elif header.layout != self.header.layout:
            raise RemoteProtocolError("this holder's copy differs from the first holder's")

    def write(self, data: bytes | memoryview) -> None:
        assert self.header is not None and self.fd is not None
        if self.offset + len(data) > self.header.size:
            raise RemoteProtocolError("the holder sent more bytes than it announced")
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.pwrite(self.fd, view[written:], self.offset + written)
        self.hasher.update(data)
        self.offset += len(data)

    def restart(self) -> None:
        """Bad content: start over (from the next holder, from byte 0)."""
        self.discard()
        self.header, self.offset, self.hasher, self.digest = None, 0, Checksum(), None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        self.close()
        shm.unlink(self.name)
