"""A client's end of the local link (worker processes and attached drivers): blocking
sockets, typed frames, and the order in which reference changes ride along."""

from __future__ import annotations

import select
import socket
from typing import Any

from p2pexec.exec.protocol import LINK_LIMITS, Refs
from p2pexec.exec.refs import owners_of
from p2pexec.net.codec import Codec, FrameDecoder

RECEIVE_SIZE = 1 << 18


def split_changes(changes: dict[bytes, int]) -> tuple[dict[bytes, int], dict[bytes, int]]:
    """(refs taken, refs dropped): taken ones must count before a message that may unpin
    their objects, dropped ones after a message that may pin them."""
    taken = {oid: delta for oid, delta in changes.items() if delta > 0}
    dropped = {oid: delta for oid, delta in changes.items() if delta < 0}
    return taken, dropped


class LinkEnd:
    """Encodes messages for the node and decodes what it sends, on a blocking socket.
    Not thread-safe by itself: callers serialise sends and receives as they need."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.codec = Codec(LINK_LIMITS)
        self._decoder = FrameDecoder(LINK_LIMITS.max_frame_size)
        self._buffer = bytearray(RECEIVE_SIZE)
        self._view = memoryview(self._buffer)
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self.waiting = False
        """In the wait for input, where nothing has been read: a signal handler may raise
        here without losing part of a frame."""

    def frame(self, message: Any, ref_changes: dict[bytes, int] | None = None) -> bytes:
        """One message as bytes to send, with the reference changes made since the last
        one: refs taken go first (they must count before the message can unpin their
        objects), refs dropped go after (the message may pin them first, e.g. a result
        that contains them)."""
        data = self.codec.frame(message)
        if ref_changes:
            taken, dropped = split_changes(ref_changes)
            if taken:
                data = self.codec.frame(Refs(taken, owners_of(taken))) + data
            if dropped:
                data += self.codec.frame(Refs(dropped))
        return data

    def _wait_readable(self) -> None:
        """Sleep until data (or end-of-file) arrives. Blocking in poll rather than in
        recv matters: a reader blocked in a Unix socket's recv is also woken each time the
        node reads what this end sent (the kernel signals write space on the same wait
        queue), a wasted wake-up per round trip; poll waits for input alone. The socket's
        timeout, if it has one, still applies."""
        timeout = self.sock.gettimeout()
        self.waiting = True
        try:
            ready = self._poll.poll(None if timeout is None else timeout * 1000)
        finally:
            self.waiting = False
        if not ready:
            raise TimeoutError(f"nothing received within {timeout} s")

    def receive(self) -> list[Any]:
        """Block until at least one whole message arrived; return them in order.
        `EOFError` when the node closed the link."""
        while True:
            self._wait_readable()
            size = self.sock.recv_into(self._buffer)
            if not size:
                raise EOFError("the node closed the link")
            bodies = self._decoder.feed(self._view[:size])
            if bodies:
                decode = self.codec.decode
                return [decode(body) for body in bodies]
