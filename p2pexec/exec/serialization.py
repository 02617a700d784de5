"""Values to payloads and back: pickle protocol 5, out-of-band buffers, shared memory.

Small values travel inline in frames. Large ones (over `inline_limit` bytes) are written
once into a shared-memory segment; readers on this machine map it and hand its slices to
pickle as protocol-5 buffers, so numpy arrays and bytes-like buffers are not copied again.
Remote exceptions keep their type: `px.get` raises an instance of both `TaskError` and
the original class, carrying the worker's traceback.
"""

from __future__ import annotations

import hashlib
import pickle
import traceback
from typing import Any

import cloudpickle

from p2pexec import errors
from p2pexec.errors import SerializationError, TaskError
from p2pexec.exec import shm
from p2pexec.exec.protocol import ERROR, INLINE, SHARED, SYSTEM_ERROR
from p2pexec.exec.refs import ObjectRef, collector, return_id

OUT_OF_BAND_MIN = 64 * 1024
"""Buffers at least this large are kept out of the pickle stream (no copy into it)."""
ALIGN = 64


def dumps_with_refs(value: Any) -> tuple[bytes, list[pickle.PickleBuffer], list[bytes]]:
    """Pickle `value`; returns the stream, its large buffers and the ObjectRef ids inside."""
    buffers: list[pickle.PickleBuffer] = []

    def keep_large(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes >= OUT_OF_BAND_MIN:
            buffers.append(buffer)
            return False
        return True

    outer = collector.ids
    collector.ids = ids = []
    try:
        main = cloudpickle.dumps(value, protocol=5, buffer_callback=keep_large)
    finally:
        collector.ids = outer
    if outer is not None:
        outer.extend(ids)
    return main, buffers, ids


PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None)})
"""Values of these types hold no code and no ObjectRef: the C pickler alone is enough."""
PLAIN_SCAN = 4096
"""Longest list or tuple looked through for plain items (a chunk of a `Pool.map`, a row
of numbers); a longer one goes to cloudpickle without the look."""


def is_plain(value: Any) -> bool:
    """A plain value, or a list or tuple of plain values: no code or ObjectRef inside."""
    kind = type(value)
    if kind in PLAIN_TYPES:
        return True
    if (kind is not list and kind is not tuple) or len(value) > PLAIN_SCAN:
        return False
    return PLAIN_TYPES.issuperset(map(type, value))


def to_payload(value: Any, inline_limit: int, segment: str, what: str = "value",
               pool: shm.SegmentPool | None = None) -> tuple[list, list[bytes]]:
    """Serialise `value` into a payload; large ones go to shared memory named `segment`
    (or to a free segment of `pool`)."""
    if is_plain(value):
        main = pickle.dumps(value, protocol=5)
        if len(main) <= inline_limit:
            return [INLINE, main, []], []
    try:
        main, buffers, ids = dumps_with_refs(value)
    except Exception as exc:
        raise SerializationError(f"could not pickle {what}: {exc!r}") from exc
    sizes = [buffer.raw().nbytes for buffer in buffers]
    if len(main) + sum(sizes) <= inline_limit:
        return [INLINE, main, [buffer.raw() for buffer in buffers]], ids
    offsets, total = _layout(len(main), sizes)
    reused = pool.take(total) if pool is not None else None
    segment = reused or segment
    shm.write(segment, total, [(0, main)] + [
        (offset, buffer.raw()) for buffer, offset in zip(buffers, offsets, strict=True)],
        reuse=reused is not None)
    return [SHARED, segment, len(main), sizes], ids


def _layout(main_size: int, sizes: list[int]) -> tuple[list[int], int]:
    """Offsets of each buffer after the pickle stream, aligned for vectorised readers."""
    offsets = []
    position = main_size
    for size in sizes:
        position = (position + ALIGN - 1) // ALIGN * ALIGN
        offsets.append(position)
        position += size
    return offsets, position


def from_payload(payload: list, mappings: list | None = None) -> Any:
    """The value a payload holds; raises the task's error for error payloads.

    A shared-memory mapping opened for it is appended to `mappings` when given, so the
    caller can later check that nothing still uses it (see `close_mapping`)."""
    kind = payload[0]
    if kind == INLINE:
        return pickle.loads(payload[1], buffers=payload[2])
    if kind == SHARED:
        _, name, main_size, sizes = payload
        try:
            view = shm.attach(name)
        except FileNotFoundError:
            raise errors.ObjectLostError(
                f"shared-memory segment {name} is gone (the object was freed)") from None
        if mappings is not None:
            mappings.append(view.obj)
        offsets, _ = _layout(main_size, sizes)
        buffers = [view[offset:offset + size] for offset, size in zip(offsets, sizes,
                                                                       strict=True)]
        return pickle.loads(view[:main_size], buffers=buffers)
    if kind == ERROR:
        raise rebuild_task_error(payload[1])
    if kind == SYSTEM_ERROR:
        raise system_error(payload[1], payload[2])
    raise errors.RemoteProtocolError(f"unknown payload kind {kind!r}")


def check_payload(payload: Any) -> None:
    """Refuse a payload a local client made up: the node stores payloads, hands them to
    other processes and unlinks their segments, so each must have one of the four shapes
    and name only a segment of ours (never a path). `RemoteProtocolError` otherwise."""
    if type(payload) not in (list, tuple) or not payload:
        raise errors.RemoteProtocolError("an object payload must be a non-empty array")
    kind, fields = payload[0], tuple(payload[1:])
    if kind == INLINE:
        ok = (len(fields) == 2 and type(fields[0]) is bytes
              and type(fields[1]) in (list, tuple) and all(type(b) is bytes for b in fields[1]))
    elif kind == SHARED:
        ok = (len(fields) == 3 and type(fields[0]) is str and shm.is_segment_name(fields[0])
              and type(fields[1]) is int and fields[1] >= 0
              and type(fields[2]) in (list, tuple)
              and all(type(n) is int and n >= 0 for n in fields[2]))
    elif kind == ERROR:
        ok = len(fields) == 1 and type(fields[0]) is bytes
    elif kind == SYSTEM_ERROR:
        ok = len(fields) == 2 and type(fields[0]) is str and type(fields[1]) is str
    else:
        ok = False
    if not ok:
        raise errors.RemoteProtocolError(f"malformed object payload of kind {kind!r}")


def payload_segment(payload: list) -> str | None:
    """The shared-memory segment behind a payload, if any (to unlink when freed)."""
    return payload[1] if payload[0] == SHARED else None


def payload_size(payload: list) -> int:
    """Bytes of a shared-memory payload's segment (0 for the other kinds)."""
    if payload[0] != SHARED:
        return 0
    return _layout(payload[2], payload[3])[1]


def system_error_payload(error: errors.P2PExecError) -> list:
    """A payload that makes `get` raise `error` (built by the node, no pickling)."""
    return [SYSTEM_ERROR, type(error).__name__, str(error)]


def system_error(class_name: str, message: str) -> errors.P2PExecError:
    cls = getattr(errors, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.P2PExecError)):
        cls = errors.P2PExecError
    return cls(message)


def task_error_payload(exc: BaseException, task_name: str) -> list:
    """Capture an exception raised by user code, with its traceback, for the caller.
    Never raises: an exception whose repr or str itself fails is still reported."""
    try:
        remote_tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        remote_tb = "".join(traceback.format_tb(exc.__traceback__)) + type(exc).__name__
    try:
        exc_repr = repr(exc)
    except Exception:
        exc_repr = f"<{type(exc).__name__} whose repr() failed>"
    exc.__traceback__ = None
    try:
        pickled_exc = cloudpickle.dumps(exc)
        pickle.loads(pickled_exc)
    except Exception:
        pickled_exc = None
    envelope = (pickled_exc, f"{type(exc).__module__}.{type(exc).__qualname__}",
                exc_repr, remote_tb, task_name)
    return [ERROR, cloudpickle.dumps(envelope)]


def rebuild_task_error(blob: bytes) -> TaskError:
    pickled_exc, type_name, exc_repr, remote_tb, task_name = pickle.loads(blob)
    cause = pickle.loads(pickled_exc) if pickled_exc is not None else None
    return as_task_error(cause, type_name, exc_repr, remote_tb, task_name)


def as_task_error(cause: BaseException | None, type_name: str, exc_repr: str,
                  remote_tb: str, task_name: str) -> TaskError:
    """An exception that is both a TaskError and (when possible) the original type."""
    message = (f"task {task_name} raised {exc_repr}\n\n"
               f"Remote traceback (most recent call last):\n{remote_tb.rstrip()}")
    while isinstance(cause, TaskError) and cause.cause is not None:
        cause = cause.cause  # a child's error re-raised by its parent keeps its own type
    if cause is None or isinstance(cause, TaskError):
        return TaskError(message, cause, remote_tb, task_name)
    cls = type(cause)
    try:
        dual = type(f"TaskError({cls.__name__})", (TaskError, cls),
                    {"__str__": lambda self: self.args[0] if self.args else message,
                     "__reduce__": TaskError.__reduce__})
        error = BaseException.__new__(dual)
        BaseException.__init__(error, message)
        error.__dict__.update(getattr(cause, "__dict__", {}))
        error.cause = cause
        error.remote_traceback = remote_tb
        error.task_name = task_name
    except TypeError:
        error = TaskError(message, cause, remote_tb, task_name)
    error.__cause__ = cause
    return error


def put_value(runtime: Any, value: Any, what: str) -> ObjectRef:
    """Store `value` as a new object of this process's node (`px.put`, and what a
    dynamic generator yields); `runtime` is the driver's or the worker's."""
    object_id = return_id(runtime.ids.task_id(), 0)
    payload, contained = to_payload(value, runtime.inline_limit,
                                    runtime.segment_name(object_id), what)
    return _new_object(runtime, object_id, payload, contained)


def put_error(runtime: Any, exc: BaseException, task_name: str) -> ObjectRef:
    """A new object whose `get` raises `exc` as the task's error."""
    return _new_object(runtime, return_id(runtime.ids.task_id(), 0),
                       task_error_payload(exc, task_name), [])


def _new_object(runtime: Any, object_id: bytes, payload: list, contained: list[bytes]
                ) -> ObjectRef:
    ref = ObjectRef(object_id, runtime.node_id)
    runtime.put(object_id, payload, contained)
    return ref


def callable_hash(pickled: bytes) -> bytes:
    """Functions and classes are shipped once per worker and cached by this hash."""
    return hashlib.blake2b(pickled, digest_size=16).digest()


def pickle_callable(fn: Any, what: str) -> bytes:
    try:
        return cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        raise SerializationError(f"could not pickle {what}: {exc!r}") from exc


def close_mapping(mapping: Any) -> bool:
    """Unmap a segment if no value built from it is alive any more; True when unmapped."""
    try:
        mapping.close()
    except BufferError:  # an array still views it (kept by an actor, a global...)
        return False
    return True
