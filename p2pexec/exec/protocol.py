"""Frames between a node and its local worker processes (and attached local drivers).

The link is a private socketpair, so there is no handshake here; it still uses hard size
limits because a worker runs arbitrary user code that may go astray. A frame is a 4-byte
little-endian length then one msgpack array whose first item is the message kind.

Object payloads (what an `ObjectRef` resolves to) are msgpack arrays too:
  [INLINE, pickle_bytes, [buffer, ...]]              small values, pickle protocol 5
  [SHARED, segment_name, pickle_len, [buffer_len...]] large values in shared memory
  [ERROR, pickled_task_error]                         the task raised
  [SYSTEM_ERROR, error_class_name, message]           p2pexec itself failed the object
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from p2pexec.errors import RemoteProtocolError

# node -> worker. Work messages end with `nested`: True when sent to a worker blocked in
# get/wait because it waits for this very task (it runs on that worker's stack).
EXEC = 1            # [EXEC, task_id, func_hash, func_bytes|None, args, deps, returns, name, nested]
CREATE_ACTOR = 2    # [CREATE_ACTOR, task_id, class_hash, class_bytes|None, args, deps, ..., False]
ACTOR_CALL = 3      # [ACTOR_CALL, task_id, method, None, args, deps, return_ids, name, False]
VALUES = 4          # [VALUES, request_id, {object_id: payload} | [ready ids], timed_out]
REPLY = 5           # [REPLY, request_id, ok, value | [error_class, message]]
CONFIGURE = 6       # [CONFIGURE, sys_path, owner_pid, inline_limit, cwd]
# worker -> node
READY = 10          # [READY, pid]
DONE = 11           # [DONE, task_id, payloads, [[contained ids] per payload], seconds, args_freed]
SUBMIT = 12         # [SUBMIT, *TaskSpec.to_wire()]
GET = 13            # [GET, request_id, object_ids, num_returns (-1: values), timeout, given_back]
PUT = 14            # [PUT, object_id, payload, contained_ids]
REFS = 15           # [REFS, {object_id: +1 acquired | -1 released}]
CALL = 16           # [CALL, request_id, operation, argument]
REGISTER = 17       # [REGISTER, callable_hash, pickled_callable]
GIVE_BACK = 18      # [GIVE_BACK, [task_id, ...]] queued work returned by a blocked worker

INLINE, SHARED, ERROR, SYSTEM_ERROR = 0, 1, 2, 3

HEADER = struct.Struct("<I")
MAX_FRAME = 1 << 30
"""Largest frame on the local link. Large objects travel as shared memory, not frames."""


def encode_frame(message: list[Any]) -> bytes:
    """One message as a length-prefixed frame."""
    body = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into decoded messages; no I/O, fed by whoever reads."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        """Add received bytes; return every message now complete, in order."""
        buffer = self._buffer
        buffer += data
        messages = []
        offset = 0
        size = len(buffer)
        while size - offset >= 4:
            (length,) = HEADER.unpack_from(buffer, offset)
            if length > MAX_FRAME:
                raise RemoteProtocolError(f"local frame of {length} bytes exceeds {MAX_FRAME}")
            end = offset + 4 + length
            if end > size:
                break
            messages.append(msgpack.unpackb(buffer[offset + 4:end], raw=False,
                                            strict_map_key=False))
            offset = end
        if offset:
            del buffer[:offset]
        return messages
