"""The link between a node and its local clients: worker processes and attached drivers.

Both speak the same messages, registered with `net.codec` in the exec ranges (96-127,
163) and framed like every other p2pexec stream (4-byte big-endian length, msgpack
body). Decoding
checks every field's type and the link's `LINK_LIMITS`, so a worker gone astray or a bad
local client costs only its own link. The same task and object messages are what later
crosses machines.

A client opens with `Hello` (for a worker it also means "ready for work"); the node
answers `Configure` (a worker gets it at once, since the node started it). Then a client
submits, puts, gets and calls; the node sends work (`Execute`, to workers only) and
replies.

Object payloads (what an `ObjectRef` resolves to) are plain msgpack arrays, checked by
`serialization.check_payload` where they enter the node:
  [INLINE, pickle_bytes, [buffer, ...]]              small values, pickle protocol 5
  [SHARED, segment_name, pickle_len, [buffer_len...]] large values in shared memory
  [ERROR, pickled_task_error]                         the task raised
  [SYSTEM_ERROR, error_class_name, message]           p2pexec itself failed the object
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pexec.exec.runtime_env import RuntimeEnv
from p2pexec.exec.task import TaskSpec
from p2pexec.net.codec import message
from p2pexec.net.config import CodecLimits

INLINE, SHARED, ERROR, SYSTEM_ERROR = 0, 1, 2, 3

LINK_PROTOCOL = 1
"""Version of this link; a client speaking another one is refused with a clear error."""

MAX_FRAME = 1 << 30
"""Largest frame on the local link. Large objects travel as shared memory, not in frames,
but a `get` of many inline values returns them in one reply (1,000 x 100 KiB = 100 MiB)."""

LINK_LIMITS = CodecLimits(max_frame_size=MAX_FRAME, max_bin_len=MAX_FRAME,
                          max_str_len=64 << 20, max_collection_len=10_000_000)
"""Decoder limits of the local link: frames up to `MAX_FRAME`, tracebacks up to 64 MiB,
a batch of up to ten million ids; nesting as on the network (32 levels)."""

HELLO_LIMITS = CodecLimits(max_frame_size=1 << 16)
"""What a client may send before the node knows it: one small `Hello`."""

WORKER, DRIVER_ROLE, OUTPUT_ROLE = "worker", "driver", "output"
"""Who says `Hello`: a worker, a driver attaching, or a driver's output stream (a second
connection on which the node sends it what its tasks print: `output.Output` frames, so
that printing never waits behind, or delays, the driver's replies)."""


# ---- either client -> node ----
@message(96)
@dataclass(frozen=True, slots=True)
class Hello:
    """The first message of every client: who it is and which link version it speaks.
    A driver also says where it imports from, so that workers can import the modules its
    functions refer to (cloudpickle ships importable functions by name)."""

    role: str
    pid: int
    protocol: int = LINK_PROTOCOL
    sys_path: list[str] = field(default_factory=list)
    job: bytes = b""
    """An output stream: the job of the driver it belongs to (from its `Configure`)."""


@message(97)
@dataclass(frozen=True, slots=True)
class Submit:
    spec: TaskSpec


@message(98)
@dataclass(frozen=True, slots=True)
class Get:
    """Wait for objects. `num_returns` -1: reply with every value (get); k >= 0: with the
    ids of the first k ready (wait). A worker lists the queued tasks it hands back."""

    request_id: int
    object_ids: list[bytes]
    num_returns: int
    timeout: float | None
    given_back: list[bytes] = field(default_factory=list)


@message(99)
@dataclass(frozen=True, slots=True)
class Put:
    object_id: bytes
    payload: Any
    contained: list[bytes]


@message(100)
@dataclass(frozen=True, slots=True)
class Refs:
    """Reference count changes: {object_id: +1 taken | -1 dropped}, and the owners of
    taken refs the client received from elsewhere (its node borrows those)."""

    deltas: dict[bytes, int]
    owners: dict[bytes, bytes] = field(default_factory=dict)


@message(101)
@dataclass(frozen=True, slots=True)
class Call:
    """A named node operation (get_actor, kill, nodes, ...)."""

    request_id: int
    operation: str
    argument: Any


@message(102)
@dataclass(frozen=True, slots=True)
class Register:
    """A pickled function or class, sent once per client before the first task using it."""

    code_hash: bytes
    pickled: bytes


# ---- worker -> node ----
@message(104)
@dataclass(frozen=True, slots=True)
class Done:
    """A task finished: one payload per return value, the ObjectRef ids inside each
    (empty when there are none), its run time, and whether the worker could unmap the
    argument segment (so the node may recycle it)."""

    task_id: bytes
    payloads: list[Any]
    contained: list[list[bytes]]
    seconds: float
    args_unmapped: bool


@message(105)
@dataclass(frozen=True, slots=True)
class GiveBack:
    """Queued tasks a blocked worker returns unstarted."""

    task_ids: list[bytes]


@message(163)
@dataclass(frozen=True, slots=True)
class Yielded:
    """A streaming task yielded its `index`-th value (`payload`, with the refs inside it),
    or ended (`end`): after `index` values, with `payload` None, or with the error that
    stopped it."""

    task_id: bytes
    index: int
    payload: Any
    contained: list[bytes]
    end: bool


# ---- node -> client ----
@message(106)
@dataclass(frozen=True, slots=True)
class Configure:
    """The node's answer to `Hello`. Workers also take its sys.path and working
    directory, so they import what the driver imports."""

    node_id: bytes
    owner_pid: int
    inline_limit: int
    sys_path: list[str]
    cwd: str
    spill_dir: str = ""
    """Where the node spills objects it evicts from shared memory ("": nowhere)."""
    runtime_env: RuntimeEnv | None = None
    """A worker's: the environment it was started for, taken on before its first task
    (`runtime_env.enter`) and inherited by the work its tasks submit (Ray's rule)."""
    package_dir: str = ""
    """Where the node unpacks packages (`runtime_env.package_path`)."""
    job: bytes = b""
    """A driver's job (`output.job_id`), which it stamps on what it submits."""


@message(107)
@dataclass(frozen=True, slots=True)
class Execute:
    """Run a task, create an actor or call its method (`kind`, as in `TaskSpec`). `code`
    is the pickled callable the first time this worker needs it; `nested` is True when
    the worker blocked in get/wait waits for this very task (it runs on its stack)."""

    kind: int
    task_id: bytes
    code_hash: bytes | None
    code: bytes | None
    method: str | None
    args: Any
    deps: dict[bytes, Any]
    return_ids: list[bytes]
    name: str
    nested: bool
    resources: dict[str, float]
    """What the node gave it (an actor's creation: what the actor holds for its life);
    the runtime context reports it."""
    max_concurrency: int = 1
    """An actor's creation: how many calls its worker may run at once (`TaskSpec`)."""
    generator: int = 0
    """How a generator function's values come back (`TaskSpec.generator`)."""
    namespace: str = ""
    """The namespace it runs in (`TaskSpec.namespace`)."""
    gpu_ids: list[int] = field(default_factory=list)
    """The GPU indices the node that runs it gave it (an actor's creation: the actor's
    for its life; its calls carry none and run with those): the worker sets
    `CUDA_VISIBLE_DEVICES` to them."""
    job: bytes = b""
    """Its spec's job: where its output goes, and the job of what it submits."""


@message(108)
@dataclass(frozen=True, slots=True)
class Values:
    """Reply to `Get`: the payloads (get) or the ready ids (wait), and whether the
    timeout cut the wait short."""

    request_id: int
    payloads: dict[bytes, Any]
    ready: list[bytes]
    timed_out: bool


@message(109)
@dataclass(frozen=True, slots=True)
class Reply:
    """Reply to `Call`: the value, or the error's class name and message."""

    request_id: int
    ok: bool
    value: Any
    error_class: str = ""
    error: str = ""

