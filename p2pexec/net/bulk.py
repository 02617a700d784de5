"""Bulk channels: large payloads beside a TLS connection, sealed with AES-256-GCM.

trio's `SSLStream` hands over one 16 KiB TLS record per `receive_some`, so a MiB through
it costs 64 passes through trio and the connection's receive loop, which caps a transfer
at a few hundred MiB/s. A bulk channel is a second, plain TCP connection to the same
port that carries large frames sealed under a key used for one transfer only:

1. Over an authenticated connection the sending side makes a `BulkOffer` (a random
   16-byte ticket, a random 32-byte key and the plaintext bytes per frame) and hands it
   to the receiving side, so both ends of the offer are peers that passed the handshake.
2. The receiving side opens a TCP connection to the sender's listening port and writes
   `hello(ticket)` (32 bytes: `BULK_MAGIC` and the ticket). The listener tells it from a
   TLS ClientHello by peeking at the magic and hands the socket to whoever offered that ticket
   (`BulkTransport`); an unknown ticket is one log line and a closed socket. Nothing on
   this connection is decoded before it authenticates, except that fixed-size hello.
3. The sender writes frames of `frame_size` plaintext bytes (the last one shorter), each
   `seal`ed: the nonce is the frame's index, the associated data the ticket and the
   frame's byte offset, so a frame that was altered, replayed, reordered or moved to
   another transfer fails its tag. Frame lengths follow from the offer and the size the
   receiver expects, so no length field is ever read from the wire.
4. The two sides may keep the connection for later offers between the same peers (each
   under its own key and ticket, nonces counting from 0 again), as long as every offer
   was read to its last frame: a transfer that fails closes it.

The ticket crosses the bulk connection in clear; an on-path attacker who copies it can
take the connection's place and so stall the transfer, but never read or alter the data
(the key never leaves TLS). A stalled transfer is the fetcher's `stall_timeout`.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pexec.errors import AuthenticationError, RemoteProtocolError
from p2pexec.net.codec import message
from p2pexec.net.transport import Address, Transport

BULK_MAGIC = b"p2pexec-bulk/1\r\n"
"""First bytes of a bulk connection. A TLS record starts with 0x16, so a listener tells
the two apart by peeking."""

TICKET_SIZE = 16
KEY_SIZE = 32
HELLO_SIZE = len(BULK_MAGIC) + TICKET_SIZE
TAG_SIZE = 16
"""AES-GCM's authentication tag, appended to each frame's ciphertext."""

MIN_FRAME_SIZE = 4096
MAX_FRAME_SIZE = 16 << 20
"""Largest plaintext frame a receiver accepts in an offer: the receiver holds two
frame-sized buffers per channel, so the offer cannot make it allocate more than 32 MiB."""


def hello(ticket: bytes) -> bytes:
    """What the receiving side writes first on a bulk connection."""
    return BULK_MAGIC + ticket


def ticket_of(data: bytes) -> bytes:
    """The ticket in a bulk hello (`HELLO_SIZE` bytes); `RemoteProtocolError` if it is not
    one."""
    if len(data) != HELLO_SIZE or not data.startswith(BULK_MAGIC):
        raise RemoteProtocolError("sent a malformed bulk hello")
    return data[len(BULK_MAGIC):]


@message(6)
@dataclass(frozen=True, slots=True)
class BulkOffer:
    """What the sender hands the receiver over the authenticated connection (a field of
    the protocol's own message)."""

    ticket: bytes
    key: bytes
    frame_size: int

    @classmethod
    def new(cls, frame_size: int) -> BulkOffer:
        """A fresh ticket and key: one offer per transfer, never reused."""
        return cls(os.urandom(TICKET_SIZE), AESGCM.generate_key(bit_length=8 * KEY_SIZE),
                   frame_size)

    def check(self) -> None:
        """`RemoteProtocolError` unless a peer's offer has the sizes this side accepts."""
        if len(self.ticket) != TICKET_SIZE or len(self.key) != KEY_SIZE:
            raise RemoteProtocolError("sent a bulk offer with a bad ticket or key size")
        if not MIN_FRAME_SIZE <= self.frame_size <= MAX_FRAME_SIZE:
            raise RemoteProtocolError(f"offered bulk frames of {self.frame_size} bytes "
                                      f"(accepted: {MIN_FRAME_SIZE}..{MAX_FRAME_SIZE})")


class BulkCipher:
    """Seals (sender) or opens (receiver) the frames of one offer, in order. No I/O."""

    def __init__(self, offer: BulkOffer) -> None:
        self._aead = AESGCM(offer.key)
        self._ticket = offer.ticket
        self._index = 0

    def _nonce_and_aad(self, offset: int) -> tuple[bytes, bytes]:
        nonce = self._index.to_bytes(12, "big")
        self._index += 1
        return nonce, self._ticket + offset.to_bytes(8, "big")

    def seal_into(self, offset: int, plaintext: memoryview, out: bytearray) -> memoryview:
        """Seal the frame for bytes `offset..` into `out` (at least len + TAG_SIZE bytes);
        the sealed frame, a view of `out`."""
        nonce, aad = self._nonce_and_aad(offset)
        size = len(plaintext) + TAG_SIZE
        view = memoryview(out)[:size]
        self._aead.encrypt_into(nonce, plaintext, aad, view)
        return view

    def open_into(self, offset: int, frame: memoryview, out: memoryview) -> None:
        """Check and decrypt the next frame, which must hold the bytes from `offset`, into
        `out` (len(frame) - TAG_SIZE bytes). `AuthenticationError` if it fails its tag."""
        nonce, aad = self._nonce_and_aad(offset)
        try:
            self._aead.decrypt_into(nonce, frame, aad, out)
        except InvalidTag:
            raise AuthenticationError(f"sent a bulk frame (bytes from {offset}) that failed "
                                      f"authentication") from None


class BulkStream(Protocol):
    """A plain byte connection of a bulk channel: the data is sealed, not the stream."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def receive_into(self, buffer: memoryview) -> int:
        """Read up to len(buffer) bytes into it; 0 at end of stream."""

    async def aclose(self) -> None: ...


@runtime_checkable
class BulkTransport(Transport, Protocol):
    """A transport that can also carry bulk channels (TCP: on its listening port). Where
    a transport is not one (SimNetwork), payloads travel as messages on a connection."""

    def expect_bulk(self, ticket: bytes
                    ) -> AbstractContextManager[trio.MemoryReceiveChannel[BulkStream]]:
        """While the context lasts, the bulk connection that presents `ticket` is handed
        to the channel it yields (once; the receiver closes that stream)."""

    async def connect_bulk(self, address: Address, ticket: bytes) -> BulkStream:
        """Open a bulk connection to `address` and present `ticket`."""


async def receive_exactly(stream: BulkStream, view: memoryview) -> None:
    """Fill `view` from `stream`; `trio.BrokenResourceError` if the stream ends first (a
    peer that died looks the same as one that hung up)."""
    got = 0
    while got < len(view):
        n = await stream.receive_into(view[got:])
        if not n:
            raise trio.BrokenResourceError("the bulk connection ended before a whole frame")
        got += n
