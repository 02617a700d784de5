"""Typed messages on the wire: one registry, msgpack bodies, length-prefixed frames, limits.

A message is a frozen dataclass registered under a numeric type code::

    from dataclasses import dataclass
    from p2pexec.net.codec import message

    @message(40)                      # gossip owns codes 32-63
    @dataclass(frozen=True, slots=True)
    class Ping:
        seq: int
        target: NodeId | None = None

Code ranges, one per package, so packages never collide: net 0-31, gossip 32-63,
dht 64-95, exec 96-127 and (once that filled up) 160-191, node/client 128-159,
tests 900-999.

Field types a message may use (checked on decode, so a peer cannot smuggle anything else):
`int`, `float`, `bool`, `str`, `bytes`, `None`, `NodeId`, `X | None`, `tuple[X, ...]`,
fixed `tuple[X, Y]`, `list[X]`, `dict[K, V]`, another registered message class (sent as
its field list), `Message` (any registered message, sent with its code) and `Any` (plain
msgpack data, checked for depth and types only).

A body is the msgpack array `[code, field1, field2, ...]`; a frame is a 4-byte big-endian
length and the body. Nothing here ever unpickles: cloudpickle payloads travel as `bytes`
fields and are loaded by exec after authentication.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, Union

import msgpack

from p2pexec.errors import LocalProtocolError, LocalUsageError, RemoteProtocolError
from p2pexec.ids import NodeId
from p2pexec.net.config import CodecLimits

PROTOCOL_MIN = 1
"""Oldest wire protocol this code speaks."""
PROTOCOL_MAX = 1
"""Newest wire protocol this code speaks. Peers agree on the newest both speak."""

MAX_CODE = 1023
"""Type codes are 0..MAX_CODE; each package owns a range (see the module docstring)."""

HEADER = struct.Struct(">I")
"""Frame header: body length, 4 bytes big-endian."""

log = logging.getLogger("p2pexec.net")


def log_dropped(address: object, reason: object, node: NodeId | None = None) -> None:
    """The one WARNING line for a peer we drop: where it was, who (if known), and why."""
    who = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
    if node is not None:
        who += f" (node {node.short})"
    log.warning("dropped peer %s: %s", who, reason)


class Message:
    """Annotation meaning "any registered message"; sent with its type code.

    Registered classes do not need to inherit from it."""


T = TypeVar("T")
_Decoder = Callable[[Any, int], Any]
_Encoder = Callable[[Any], Any] | None


@dataclasses.dataclass(frozen=True, slots=True)
class _Kind:
    """A registered class and the functions compiled for it (see `_compile`)."""

    cls: type
    code: int
    fields: Callable[[Any], list[Any]]  # message -> its encoded field values
    message: Callable[[Any], list[Any]]  # message -> [code, encoded field values...]
    build: Callable[[tuple[Any, ...], int], Any]  # (field values, depth room) -> message


_BY_CODE: dict[int, _Kind] = {}
_BY_CLASS: dict[type, _Kind] = {}
_PENDING: dict[type, int] = {}  # registered, field types not resolved yet (forward refs)


def message(code: int) -> Callable[[type[T]], type[T]]:
    """Register a frozen dataclass as a wire message under `code` (see module docstring)."""
    if not isinstance(code, int) or not 0 <= code <= MAX_CODE:
        raise LocalUsageError(f"message code must be an int in 0..{MAX_CODE}, got {code!r}")

    def register(cls: type[T]) -> type[T]:
        params = getattr(cls, "__dataclass_params__", None)
        if params is None or not params.frozen:
            raise LocalUsageError(f"{cls.__qualname__} must be a frozen dataclass to be a message")
        old = _BY_CODE.get(code)
        old_cls = old.cls if old else next((c for c, k in _PENDING.items() if k == code), None)
        if old_cls is not None and (old_cls.__module__, old_cls.__qualname__) != (
                cls.__module__, cls.__qualname__):
            raise LocalUsageError(f"message code {code} is taken by {old_cls.__qualname__}; "
                                  f"cannot register {cls.__qualname__}")
        if old_cls is not None:  # the same class re-imported (importlib.reload)
            _BY_CLASS.pop(old_cls, None)
            _PENDING.pop(old_cls, None)
            _BY_CODE.pop(code, None)
        _PENDING[cls] = code
        return cls

    return register


def _kind_of_class(cls: type) -> _Kind | None:
    kind = _BY_CLASS.get(cls)
    if kind is None and cls in _PENDING:
        kind = _resolve(cls, _PENDING[cls])
    return kind


def _kind_of_code(code: int) -> _Kind | None:
    kind = _BY_CODE.get(code)
    if kind is None:
        for cls, c in list(_PENDING.items()):
            if c == code:
                return _resolve(cls, code)
    return kind


def _resolve(cls: type, code: int) -> _Kind:
    """Compile the class's encoders and decoder once its type hints can be resolved."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    kind = _compile(cls, code, [f.name for f in fields], [hints[f.name] for f in fields],
                    [f.kw_only is True for f in fields])
    del _PENDING[cls]
    _BY_CODE[code] = kind
    _BY_CLASS[cls] = kind
    return kind


_EXACT = (int, bool, str, bytes)
"""Field types checked inline by type identity (msgpack decodes exactly these types)."""


def _compile(cls: type, code: int, names: list[str], types_: list[Any],
             kw_only: list[bool]) -> _Kind:
    """Generate straight-line encode/decode functions for one message class, as
    `dataclasses` does for `__init__`: the codec runs per message, so no per-field loops
    or lookups. Field names are Python identifiers, so the generated source is safe."""
    ns: dict[str, Any] = {"cls": cls, "_fail": _fail, "RemoteProtocolError": RemoteProtocolError}
    encoded: list[str] = []
    checks: list[str] = []
    for i, (name, tp) in enumerate(zip(names, types_, strict=True)):
        enc = _encoder_for(tp)
        if enc is None:
            encoded.append(f"m.{name}")
        else:
            ns[f"e{i}"] = enc
            encoded.append(f"e{i}(m.{name})")
        where = f"{cls.__qualname__}.{name}"
        if tp in _EXACT:
            ns[f"t{i}"] = tp
            checks.append(f"    if type(v{i}) is not t{i}:\n"
                          f"        raise _fail({where!r}, {tp.__name__!r}, v{i})\n")
        else:
            ns[f"d{i}"] = _decoder_for(tp, where)
            checks.append(f"    v{i} = d{i}(v{i}, room)\n")
    values = "".join(f"v{i}, " for i in range(len(names)))
    arguments = ", ".join(f"{n}=v{i}" if kw else f"v{i}"
                          for i, (n, kw) in enumerate(zip(names, kw_only, strict=True)))
    count_error = (f"message {cls.__qualname__} has {len(names)} fields, got ")
    src = (f"def fields(m):\n    return [{', '.join(encoded)}]\n"
           f"def message(m):\n    return [{code}, {', '.join(encoded)}]\n"
           f"def build(values, room):\n"
           f"    if len(values) != {len(names)}:\n"
           f"        raise RemoteProtocolError({count_error!r} + str(len(values)))\n"
           f"    ({values}) = values\n" + "".join(checks) +
           f"    try:\n        return cls({arguments})\n"
           f"    except (TypeError, ValueError) as exc:  # the class's own __post_init__\n"
           f"        raise RemoteProtocolError("
           f"{'message ' + cls.__qualname__ + ' rejected: '!r} + str(exc)) from None\n")
    exec(compile(src, f"<p2pexec codec {cls.__qualname__}>", "exec"), ns)
    return _Kind(cls, code, ns["fields"], ns["message"], ns["build"])


def code_of(msg: Any) -> int:
    """The type code of a registered message (what stream routers dispatch on)."""
    return _kind_of_message(msg).code


def registered() -> dict[int, type]:
    """Every registered message class by code (for docs and tests)."""
    out = {k.code: k.cls for k in _BY_CODE.values()}
    out.update({code: cls for cls, code in _PENDING.items()})
    return dict(sorted(out.items()))


# ---- field encoders: Python value -> msgpack-ready value (None = send as is) --------------

def _encoder_for(tp: Any) -> _Encoder:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is NodeId:
        return lambda v: v.raw
    if tp is Message:
        return _encode_any_message
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise LocalUsageError(f"only `X | None` unions are supported, not {tp}")
        enc = _encoder_for(inner[0])
        return None if enc is None else (lambda v: None if v is None else enc(v))
    if origin in (tuple, list):
        elem_types = args[:1] if origin is list or (len(args) == 2 and args[1] is ...) else args
        encs = [_encoder_for(a) for a in elem_types]
        if all(e is None for e in encs):
            return None
        if origin is list or (len(args) == 2 and args[1] is ...):
            enc = encs[0] or (lambda v: v)
            return lambda v: [enc(x) for x in v]
        return lambda v: [x if e is None else e(x) for e, x in zip(encs, v, strict=True)]
    if origin is dict:
        kenc, venc = _encoder_for(args[0]), _encoder_for(args[1])
        if kenc is None and venc is None:
            return None
        kf = kenc or (lambda k: k)
        vf = venc or (lambda v: v)
        return lambda d: {kf(k): vf(v) for k, v in d.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _fields_of
    if tp in (int, float, bool, str, bytes, type(None)) or tp is Any:
        return None
    raise LocalUsageError(f"unsupported message field type {tp!r}")


def _kind_of_message(msg: Any) -> _Kind:
    """The registered kind of an outgoing message; `LocalProtocolError` if it has none."""
    kind = _BY_CLASS.get(type(msg)) or _kind_of_class(type(msg))
    if kind is None:
        raise LocalProtocolError(f"{type(msg).__qualname__} is not a registered message")
    return kind


def _fields_of(msg: Any) -> list[Any]:
    """A nested message's field list (its class is known from the field's type)."""
    return _kind_of_message(msg).fields(msg)


def _encode_any_message(msg: Any) -> list[Any]:
    """A message with its type code in front (a `Message` field, or a whole body)."""
    return _kind_of_message(msg).message(msg)


# ---- field decoders: msgpack value -> checked Python value -------------------------------

def _fail(where: str, want: str, got: Any) -> RemoteProtocolError:
    return RemoteProtocolError(f"field {where}: expected {want}, got {type(got).__name__}")


def _check_depth(room: int, where: str) -> None:
    """`room` is how many more container levels the depth limit allows."""
    if room <= 0:
        raise RemoteProtocolError(f"field {where}: nested deeper than the depth limit")


def _decoder_for(tp: Any, where: str) -> _Decoder:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is float:
        def dec_float(v: Any, room: int) -> float:
            if type(v) is float:
                return v
            if type(v) is int:
                return float(v)
            raise _fail(where, "float", v)
        return dec_float
    if tp in (int, bool, str, bytes, type(None)):
        name = "None" if tp is type(None) else tp.__name__

        def dec_exact(v: Any, room: int, tp: type = tp) -> Any:
            if type(v) is not tp:
                raise _fail(where, name, v)
            return v
        return dec_exact
    if tp is NodeId:
        def dec_node(v: Any, room: int) -> NodeId:
            if type(v) is not bytes or len(v) != 32:
                raise _fail(where, "32-byte node id", v)
            return NodeId(v)
        return dec_node
    if tp is Message:
        def dec_message(v: Any, room: int) -> Any:
            if type(v) is not tuple or not v:
                raise _fail(where, "a message", v)
            _check_depth(room, where)
            kind = _BY_CODE.get(v[0]) if type(v[0]) is int else None
            if kind is None:  # not yet compiled, or an error to report
                return _decode_fields(v[0], v[1:], room - 1)
            return kind.build(v[1:], room - 1)
        return dec_message
    if tp is Any:
        def dec_any(v: Any, room: int) -> Any:
            _check_plain(v, room, where)
            return v
        return dec_any
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        dec = _decoder_for(inner[0], where)
        return lambda v, room: None if v is None else dec(v, room)
    if origin in (tuple, list):
        homogeneous = origin is list or (len(args) == 2 and args[1] is ...)
        decs = [_decoder_for(a, f"{where}[]") for a in (args[:1] if homogeneous else args)]
        make = tuple if origin is tuple else list

        def dec_seq(v: Any, room: int) -> Any:
            _check_depth(room, where)
            if type(v) is not tuple:
                raise _fail(where, "an array", v)
            if homogeneous:
                d = decs[0]
                return make([d(x, room - 1) for x in v])
            if len(v) != len(decs):
                raise RemoteProtocolError(f"field {where}: expected {len(decs)} items, "
                                          f"got {len(v)}")
            return make([d(x, room - 1) for d, x in zip(decs, v, strict=True)])
        return dec_seq
    if origin is dict:
        kdec = _decoder_for(args[0], f"{where}{{key}}")
        vdec = _decoder_for(args[1], f"{where}{{}}")

        def dec_map(v: Any, room: int) -> dict[Any, Any]:
            _check_depth(room, where)
            if type(v) is not dict:
                raise _fail(where, "a map", v)
            return {kdec(k, room - 1): vdec(x, room - 1) for k, x in v.items()}
        return dec_map
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        def dec_nested(v: Any, room: int) -> Any:
            _check_depth(room, where)
            if type(v) is not tuple:
                raise _fail(where, f"{tp.__qualname__} fields", v)
            kind = _kind_of_class(tp)
            if kind is None:
                raise LocalUsageError(f"{tp.__qualname__} is not a registered message")
            return kind.build(v, room - 1)
        return dec_nested
    raise LocalUsageError(f"unsupported message field type {tp!r}")


def _check_plain(v: Any, room: int, where: str) -> None:
    """An `Any` field: plain msgpack data within the depth limit (no ext types)."""
    t = type(v)
    if t in (int, float, bool, str, bytes) or v is None:
        return
    _check_depth(room, where)
    if t is tuple:
        for x in v:
            _check_plain(x, room - 1, where)
    elif t is dict:
        for k, x in v.items():
            _check_plain(k, room - 1, where)
            _check_plain(x, room - 1, where)
    else:
        raise _fail(where, "plain msgpack data", v)


def _decode_fields(code: Any, values: tuple[Any, ...], room: int) -> Any:
    if type(code) is not int:
        raise RemoteProtocolError(f"message type code must be an int, got {type(code).__name__}")
    kind = _BY_CODE.get(code) or _kind_of_code(code)
    if kind is None:
        raise RemoteProtocolError(f"unknown message type {code}")
    return kind.build(values, room)


# ---- the codec ---------------------------------------------------------------------------

class Codec:
    """Encodes registered messages to bodies and frames, decodes them under `limits`."""

    def __init__(self, limits: CodecLimits | None = None) -> None:
        self.limits = limits or CodecLimits()
        lim = self.limits
        self._unpack_opts = dict(
            raw=False, use_list=False, strict_map_key=False,
            max_str_len=lim.max_str_len, max_bin_len=lim.max_bin_len, max_ext_len=0,
            max_array_len=lim.max_collection_len, max_map_len=lim.max_collection_len)
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)

    def encode(self, msg: Any) -> bytes:
        """Message -> msgpack body. Raises `LocalProtocolError` if it is not registered,
        holds something msgpack cannot send, or is larger than a frame may be."""
        try:
            body = self._packer.pack(_encode_any_message(msg))
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            # OverflowError: an int beyond msgpack's 64 bits
            raise LocalProtocolError(f"cannot encode {type(msg).__qualname__}: {exc}") from None
        if len(body) > self.limits.max_frame_size:
            raise LocalProtocolError(f"{type(msg).__qualname__} is {len(body)} bytes, over the "
                                     f"{self.limits.max_frame_size}-byte frame limit")
        return body

    def decode(self, body: bytes) -> Any:
        """msgpack body -> message. Raises `RemoteProtocolError` on anything malformed,
        unknown or over a limit."""
        if len(body) > self.limits.max_frame_size:
            raise RemoteProtocolError(f"message of {len(body)} bytes is over the "
                                      f"{self.limits.max_frame_size}-byte frame limit")
        try:
            value = msgpack.unpackb(body, **self._unpack_opts)
        except msgpack.StackError:
            raise RemoteProtocolError("malformed message: nested too deeply") from None
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.UnpackException) as exc:  # TypeError: a map key that is a map
            reason = str(exc) or type(exc).__name__
            raise RemoteProtocolError(f"malformed message: {reason}") from None
        if type(value) is not tuple or not value:
            raise RemoteProtocolError(f"malformed message: expected [type, fields...], "
                                      f"got {type(value).__name__}")
        try:
            return _decode_fields(value[0], value[1:], self.limits.max_depth - 1)
        except RecursionError:
            raise RemoteProtocolError("malformed message: nested too deeply") from None

    def frame(self, msg: Any) -> bytes:
        """Message -> header + body, ready for a byte stream."""
        body = self.encode(msg)
        return HEADER.pack(len(body)) + body


def frame_bytes(body: bytes, max_frame_size: int) -> bytes:
    """Prefix an opaque body with its length. Raises `LocalProtocolError` when too large."""
    if len(body) > max_frame_size:
        raise LocalProtocolError(f"message of {len(body)} bytes is over the "
                                 f"{max_frame_size}-byte frame limit")
    return HEADER.pack(len(body)) + body


LARGE_FRAME = 1 << 16
"""A frame body at least this big is collected in a buffer of its own exact size, not by
growing the shared one: growing a bytearray a read at a time copies it over and over."""


class FrameDecoder:
    """Sans-IO splitter of a byte stream into frame bodies.

    The header is checked before any body byte is buffered, so a frame claiming 4 GiB
    costs nothing but the error. Memory held is at most one frame plus one read."""

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._need = -1  # body length of the frame being read, -1 while reading a header
        self._large: bytearray | None = None
        """The large frame being filled (its header already consumed), if any."""
        self._filled = 0

    @property
    def partial(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return bool(self._buf) or self._need >= 0

    def feed(self, data: bytes, max_frames: int | None = None) -> list[bytes]:
        """Add received bytes; return every frame body now complete, in order, or at most
        `max_frames` of them (the rest stays buffered, its headers not yet checked, so the
        caller may change `max_frame_size` before the next `feed`)."""
        out: list[bytes] = []
        if self._large is not None:
            data = self._fill_large(data, out)
            if self._large is not None or (max_frames is not None and len(out) >= max_frames):
                self._buf += data
                return out
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        while max_frames is None or len(out) < max_frames:
            if self._need < 0:
                if n - pos < 4:
                    break
                (size,) = HEADER.unpack_from(buf, pos)
                if size > self.max_frame_size:
                    self._buf = bytearray()
                    raise RemoteProtocolError(f"frame of {size} bytes announced, over the "
                                              f"{self.max_frame_size}-byte limit")
                self._need = size
                pos += 4
            if n - pos < self._need:
                if self._need >= LARGE_FRAME:
                    self._large = bytearray(self._need)
                    self._filled = 0
                    self._fill_large(memoryview(buf)[pos:], out)
                    pos = n
                break
            out.append(bytes(buf[pos:pos + self._need]))
            pos += self._need
            self._need = -1
        if pos:
            del buf[:pos]
        return out

    def _fill_large(self, data: bytes | memoryview, out: list[bytes]) -> memoryview:
        """Copy what belongs to the large frame into it; when it is whole, append it to
        `out`. Returns the bytes left over (the next frames)."""
        assert self._large is not None
        view = memoryview(data)
        take = min(len(view), len(self._large) - self._filled)
        self._large[self._filled:self._filled + take] = view[:take]
        self._filled += take
        if self._filled == len(self._large):
            out.append(bytes(self._large))
            self._large = None
            self._need = -1
        return view[take:]


def negotiate(our_min: int, our_max: int, their_min: int, their_max: int) -> int:
    """The newest protocol version both sides speak; `RemoteProtocolError` if none."""
    version = min(our_max, their_max)
    if version < max(our_min, their_min):
        raise RemoteProtocolError(f"incompatible protocol versions: peer speaks "
                                  f"{their_min}-{their_max}, we speak {our_min}-{our_max} "
                                  f"(upgrade the older p2pexec)")
    return version
