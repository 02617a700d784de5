"""The Ray-style API: remote functions and actors, objects and futures.

The same code runs in a driver (the runtime is an embedded node on a background thread)
and inside workers (the runtime is the worker's link to its node), so tasks can submit
tasks, create actors and wait on results exactly as drivers do.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import math
import os
import pickle
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from p2pexec.errors import GetTimeoutError, LocalUsageError, NodeNotRunning, SerializationError
from p2pexec.exec import context, serialization
from p2pexec.exec import refs as refs_module
from p2pexec.exec.gpus import gpu_demand
from p2pexec.exec.protocol import INLINE
from p2pexec.exec.refs import (
    TASK_ID_SIZE,
    ObjectRef,
    return_id,
    stream_item,
    stream_link,
    task_of,
)
from p2pexec.exec.resources import CPU, GPU
from p2pexec.exec.runner import is_async_class
from p2pexec.exec.runtime_env import RuntimeEnv
from p2pexec.exec.task import (
    ACTOR_CALL,
    ACTOR_CREATE,
    DYNAMIC,
    NOT_GENERATOR,
    STREAMING,
    TASK,
    TaskSpec,
)
from p2pexec.ids import NodeId
from p2pexec.runtime_env import RuntimeEnvOption
from p2pexec.runtime_env import effective as effective_runtime_env
from p2pexec.scheduling import spec_fields

_runtime_lock = threading.Lock()

PUT_INDEX = return_id(b"", 0)
"""How the id of an object made by `put` ends (a task's results count from 1)."""

_EMPTY_ARGS = [INLINE, cloudpickle.dumps(((), {}), protocol=5), []]

TASK_OPTIONS = {"num_cpus", "num_gpus", "resources", "max_retries", "num_returns",
                "retry_exceptions", "name", "scheduling_strategy", "runtime_env"}
ACTOR_OPTIONS = {"num_cpus", "num_gpus", "resources", "max_restarts", "max_task_retries",
                 "name", "namespace", "lifetime", "get_if_exists", "max_concurrency",
                 "scheduling_strategy", "runtime_env"}

ASYNC_ACTOR_CONCURRENCY = 1000
"""Calls an async actor runs at once unless told otherwise (Ray's default)."""


# ---- runtime ----
def init(num_cpus: float | None = None, resources: dict[str, float] | None = None, *,
         num_gpus: int | None = None, address: str | os.PathLike[str] | None = None,
         cluster: Any = None, object_store_memory: int | None = None,
         namespace: str | None = None, runtime_env: dict[str, Any] | None = None,
         ignore_reinit_error: bool = False, log_to_driver: bool = True) -> None:
    """Connect this program to a node: attach to one running on this machine, or embed one.

    `address` (Ray's rule):
    - None: attach to the node whose data dir is `$P2PEXEC_DATA_DIR` (default
      ~/.local/share/p2pexec) if one runs there (`p2pexec join`), else embed a node.
    - "local": always embed a private node in this process.
    - "auto": attach to that node, and fail if none runs.
    - a path: attach to the node using that data dir (or that control socket); fails
      with `NodeNotRunning` when nothing answers there.
    An embedded node has `num_cpus` CPUs (default: the machine's), `num_gpus` GPUs
    (default: those `nvidia-smi` lists, none without it) and the custom `resources`,
    e.g. {"tpu": 1}; with `cluster` (a `px.ClusterConfig`) it also joins that
    cluster, as `p2pexec join` does; `object_store_memory` caps the bytes of shared memory
    its objects take before the least recently used spill to disk (default: 30% of
    RAM). Those settings describe a new node, so they are refused when attaching.
    `runtime_env` (Ray's; see `p2pexec.runtime_env`) is the environment every task and
    actor of this driver runs in unless its own option says otherwise; its directories
    are packed and stored with the node here, before init returns.
    `log_to_driver` (Ray's): what this driver's tasks and actors print appears in its
    stdout and stderr, each line prefixed `(name pid=...)`, with `node=` when it ran on
    another node; False shows none of it.
    Called implicitly, with no arguments, by the first API call.
    """
    if namespace is not None:
        _check_namespace(namespace)
    env_option = RuntimeEnvOption.parse(runtime_env)
    with _runtime_lock:
        current = context.runtime
        if current is not None and (context.in_worker or current.alive):
            if ignore_reinit_error or context.in_worker:
                return
            raise LocalUsageError("p2pexec is already initialised in this process; "
                                  "call px.shutdown() first or pass ignore_reinit_error=True")
        context.namespace = namespace or ""
        runtime = _connect(address, num_cpus, resources, cluster, object_store_memory,
                           num_gpus, log_to_driver)
        if env_option is not None:
            try:
                runtime.runtime_env = env_option.resolve(runtime)
            except BaseException:
                runtime.shutdown()
                raise
        context.runtime = runtime


def _connect(address: str | os.PathLike[str] | None, num_cpus: float | None,
             resources: dict[str, float] | None, cluster: Any,
             object_store_memory: int | None, num_gpus: int | None,
             log_to_driver: bool) -> Any:
    """The runtime `init` asks for: attached to a running node, or an embedded one."""
    from p2pexec import client
    from p2pexec.config import NodeConfig, control_socket_path, default_data_dir

    configures = (num_cpus is not None or num_gpus is not None or bool(resources)
                  or cluster is not None or object_store_memory is not None)
    if address is None and not configures:
        socket_path = control_socket_path(default_data_dir())
        if socket_path.exists():
            try:
                return client.AttachedRuntime(socket_path, log_to_driver)
            except NodeNotRunning:  # a socket left by a node that is gone
                pass
    elif address is not None and address != "local":
        if configures:
            raise LocalUsageError(
                "num_cpus, num_gpus, resources, cluster and object_store_memory "
                "configure a new node; they cannot be given when attaching to a running "
                "one (its `p2pexec join` options set them); use address='local' for a "
                "private node")
        socket_path = (control_socket_path(default_data_dir()) if address == "auto"
                       else client.socket_path_of(address))
        return client.AttachedRuntime(socket_path, log_to_driver)
    return client.DriverRuntime(NodeConfig.embedded(
        num_cpus, resources, cluster, object_store_memory, num_gpus), log_to_driver)


def shutdown() -> None:
    """Stop the embedded node and every worker process it started, or detach from the
    node this driver attached to (which then drops its refs, queued tasks and actors)."""
    with _runtime_lock:
        if context.runtime is not None and not context.in_worker:
            context.runtime.shutdown()
            context.runtime = None


def is_initialized() -> bool:
    runtime = context.runtime
    return runtime is not None and (context.in_worker or runtime.alive)


def _rt() -> Any:
    runtime = context.runtime
    if runtime is None:
        init(ignore_reinit_error=True)  # Ray's implicit init on first use
        runtime = context.runtime
    elif not (context.in_worker or runtime.alive):
        runtime._check()  # the node died: say so (with its cause) rather than start afresh
    return runtime


# ---- arguments ----
def _serialize_arguments(runtime: Any, task_id: bytes, name: str, args: tuple,
                         kwargs: dict) -> tuple[list, list[bytes], list[bytes]]:
    """Payload of (args, kwargs), the top-level ObjectRef ids, and every ObjectRef id."""
    if not args and not kwargs:
        return _EMPTY_ARGS, [], []
    plain = serialization.is_plain
    if all(plain(a) for a in args) and all(plain(v) for v in kwargs.values()):
        main = pickle.dumps((args, kwargs), protocol=5)  # no refs, no code: skip cloudpickle
        if len(main) <= runtime.inline_limit:
            return [INLINE, main, []], [], []
    deps = [a.id for a in args if type(a) is ObjectRef]
    deps += [v.id for v in kwargs.values() if type(v) is ObjectRef]
    try:
        payload, contained = serialization.to_payload(
            (args, kwargs), runtime.inline_limit, runtime.segment_name(task_id + b"args"),
            pool=runtime.segments)
    except SerializationError:
        raise _name_unpicklable_argument(name, args, kwargs) from None
    return payload, list(dict.fromkeys(deps)), contained


def _name_unpicklable_argument(name: str, args: tuple, kwargs: dict) -> SerializationError:
    labelled = [(f"argument {i}", value) for i, value in enumerate(args)]
    labelled += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    for label, value in labelled:
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            return SerializationError(
                f"{label} of {name} ({type(value).__name__} object) cannot be pickled, so it "
                f"cannot be sent to a worker: {exc}")
    return SerializationError(f"the arguments of {name} cannot be pickled")


def _demand(num_cpus: float, num_gpus: float, resources: dict[str, float] | None
            ) -> dict[str, float]:
    """What a task or actor asks its node for. GPUs are refused in `resources`: the node
    hands them out by index, which only `num_gpus` (Ray's rules for fractions) asks for."""
    demand = {CPU: float(num_cpus)} if num_cpus else {}
    gpus = gpu_demand(num_gpus)
    if gpus:
        demand[GPU] = gpus
    for key, amount in (resources or {}).items():
        if key == CPU:
            raise LocalUsageError("give CPUs with num_cpus=, not resources={'CPU': ...}")
        if key == GPU:
            raise LocalUsageError("give GPUs with num_gpus=, not resources={'GPU': ...}")
        if key.startswith("_"):  # the node's own keys in a holding
            raise LocalUsageError(f"resource names starting with '_' are reserved: {key!r}")
        if amount:
            demand[key] = float(amount)
    return demand


def _check_options(options: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise LocalUsageError(f"unknown option(s) {sorted(unknown)} for {what}; "
                              f"valid options are {sorted(allowed)}")


Shape = tuple[tuple[str, int, bool], ...]
"""A signature's parameters as (name, kind, has a default): all a call's arguments are
checked against, and small and plain enough to travel inside an actor handle."""


def _shape(target: Any) -> Shape | None:
    """The parameters `target` takes (for a class: its constructor's); None when Python
    cannot tell (some builtins), and then calls are not checked."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    return tuple((p.name, int(p.kind), p.default is not inspect.Parameter.empty)
                 for p in signature.parameters.values())


_DEFAULT = object()
_KINDS = type(inspect.Parameter.POSITIONAL_ONLY)


class _Fit:
    """What calls of a function must fit: its signature, and how many positional
    arguments fit it when no keyword is passed (the common call, checked without
    `inspect`'s bind, which costs more than the rest of a submit)."""

    __slots__ = ("fewest", "most", "signature")

    def __init__(self, shape: Shape) -> None:
        self.signature = inspect.Signature([
            inspect.Parameter(name, _KINDS(kind), default=_DEFAULT if has_default
                              else inspect.Parameter.empty)
            for name, kind, has_default in shape])
        positional = [has_default for _, kind, has_default in shape
                      if kind <= _KINDS.POSITIONAL_OR_KEYWORD]
        self.fewest: int | None = positional.count(False)
        self.most = math.inf if any(kind == _KINDS.VAR_POSITIONAL for _, kind, _ in shape) \
            else len(positional)
        if any(kind == _KINDS.KEYWORD_ONLY and not has_default
               for _, kind, has_default in shape):
            self.fewest = None  # a keyword is required: only bind can tell

    def check(self, what: str, args: tuple, kwargs: dict) -> None:
        """Arguments that do not fit raise `TypeError` here, at `.remote()`, as in Ray
        (not later, in the worker)."""
        fewest = self.fewest
        if not kwargs and fewest is not None and fewest <= len(args) <= self.most:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{what}() {exc}") from None


def _check_call(fit: _Fit | None, what: str, args: tuple, kwargs: dict) -> None:
    if fit is not None:
        fit.check(what, args, kwargs)


class _Callable:
    """Pickles a function or class once; each runtime learns it once, by hash."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self._pickled: bytes | None = None
        self._hash: bytes | None = None
        shape = _shape(target)
        self.signature = None if shape is None else _Fit(shape)
        """What calls must fit (for a class, its constructor); None: not checked."""

    def register(self, runtime: Any) -> bytes:
        if self._hash is None:
            self._pickled = serialization.pickle_callable(self.target, repr(self.target))
            self._hash = serialization.callable_hash(self._pickled)
        runtime.register(self._hash, self._pickled)
        return self._hash

    def __reduce__(self):
        return (_Callable, (self.target,))


# ---- tasks ----
class RemoteFunction:
    """A function that runs as a task: `f.remote(...)` returns ObjectRef(s) at once."""

    def __init__(self, function: Callable, options: dict[str, Any],
                 shipped: _Callable | None = None) -> None:
        what = getattr(function, "__name__", type(function).__name__)
        _check_options(options, TASK_OPTIONS, f"remote function {what}")
        self._function = function
        self._options = options
        self._shipped = shipped or _Callable(function)
        self._name = options.get("name") or getattr(function, "__qualname__", "task")
        self._returns = _returns(options.get("num_returns"), function)
        self._resources = _demand(options.get("num_cpus", 1), options.get("num_gpus", 0),
                                  options.get("resources"))
        self._max_retries = int(options.get("max_retries", 3))
        self._retry_exceptions = bool(options.get("retry_exceptions", False))
        self._strategy = spec_fields(options.get("scheduling_strategy"))
        self._env = RuntimeEnvOption.parse(options.get("runtime_env"))
        self.__doc__ = function.__doc__
        self.__wrapped__ = function

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        raise LocalUsageError(f"remote function {self._name} cannot be called directly; "
                              f"use {self._name}.remote(...)")

    def options(self, /, **options: Any) -> RemoteFunction:
        """A copy with some options overridden for the calls made through it."""
        return RemoteFunction(self._function, {**self._options, **options}, self._shipped)

    def remote(self, /, *args: Any, **kwargs: Any) -> Any:
        _check_call(self._shipped.signature, self._name, args, kwargs)
        runtime = _rt()
        code_hash = self._shipped.register(runtime)
        return _submit(runtime, self._name, self._returns, args, kwargs, TASK, code_hash,
                       None, self._resources, self._max_retries, self._retry_exceptions, None,
                       self._strategy, effective_runtime_env(self._env, runtime))


# ---- actors ----
class ActorClass:
    """A class whose instances live in their own worker process: `Cls.remote(...)`."""

    def __init__(self, cls: type, options: dict[str, Any],
                 shipped: _Callable | None = None) -> None:
        _check_options(options, ACTOR_OPTIONS, f"actor class {cls.__name__}")
        self._cls = cls
        self._options = options
        self._shipped = shipped or _Callable(cls)
        self._resources = _demand(options.get("num_cpus", 0), options.get("num_gpus", 0),
                                  options.get("resources"))
        self._methods = _methods_of(cls)
        self._concurrency = _max_concurrency(cls, options.get("max_concurrency"))
        self._strategy = spec_fields(options.get("scheduling_strategy"))
        self._env = RuntimeEnvOption.parse(options.get("runtime_env"))
        self.__doc__ = cls.__doc__

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        raise LocalUsageError(f"actor class {self._cls.__name__} cannot be instantiated "
                              f"directly; use {self._cls.__name__}.remote(...)")

    def options(self, /, **options: Any) -> ActorClass:
        return ActorClass(self._cls, {**self._options, **options}, self._shipped)

    def remote(self, /, *args: Any, **kwargs: Any) -> ActorHandle:
        _check_call(self._shipped.signature, self._cls.__name__, args, kwargs)
        runtime = _rt()
        options = self._options
        name = options.get("name")
        if options.get("get_if_exists") and name is None:
            raise LocalUsageError("get_if_exists=True needs a name= to look for")
        if name is not None:
            name = _actor_key(name, options.get("namespace"))
        if name is not None and runtime.call("actor_exists", name):
            if options.get("get_if_exists"):  # Ray's rule: the live one, as is
                return ActorHandle(runtime.call("get_actor", name), self._cls.__name__, None,
                                   int(options.get("max_task_retries", 0)), self._methods)
            raise LocalUsageError(f"an actor named {name!r} already exists; pick another "
                                  f"name or px.get_actor({name!r})")
        code_hash = self._shipped.register(runtime)
        env = effective_runtime_env(self._env, runtime)
        actor_id = runtime.ids.task_id()
        class_name = self._cls.__name__
        args_payload, deps, contained = _serialize_arguments(runtime, actor_id, class_name,
                                                             args, kwargs)
        created = ObjectRef(return_id(actor_id, 1), runtime.node_id)
        lifetime = options.get("lifetime")
        if lifetime not in (None, "detached"):
            raise LocalUsageError(f"lifetime must be None or 'detached', got {lifetime!r}")
        task_retries = int(options.get("max_task_retries", 0))
        runtime.submit(TaskSpec(  # a creation's max_retries is its calls' max_task_retries
            actor_id, ACTOR_CREATE, code_hash, None, args_payload, tuple(deps),
            tuple(contained), (created.id,), f"{class_name}.__init__",
            self._resources, task_retries,
            False, actor_id, name, int(options.get("max_restarts", 0)),
            lifetime == "detached", self._concurrency, namespace=_current_namespace(),
            runtime_env=env, **self._strategy, job=runtime.job))
        return ActorHandle(actor_id, class_name, created, task_retries, self._methods)


def _max_concurrency(cls: type, option: Any) -> int:
    """How many calls the actor runs at once: `max_concurrency`, else 1000 for an async
    actor (one with an `async def` method) and 1 (in order) for others, as in Ray."""
    if option is None:
        return ASYNC_ACTOR_CONCURRENCY if is_async_class(cls) else 1
    if isinstance(option, bool) or not isinstance(option, int) or option < 1:
        raise LocalUsageError(f"max_concurrency must be an int of at least 1, got {option!r}")
    return option


NUM_RETURNS_ATTRIBUTE = "__p2pexec_num_returns__"


def method(*, num_returns: int | str = 1) -> Callable[[Callable], Callable]:
    """`@px.method(num_returns=2)` on an actor method: each call returns that many refs
    (Ray's `ray.method`; `handle.m.options(num_returns=...)` still overrides it);
    "dynamic" and "streaming" as for tasks."""
    _returns(num_returns, None)

    def mark(function: Callable) -> Callable:
        setattr(function, NUM_RETURNS_ATTRIBUTE, num_returns)
        return function
    return mark


Methods = dict[str, tuple[Shape | None, int | str]]
"""An actor class's public methods: the parameters each takes after self, and how many
refs a call returns (or "dynamic", "streaming")."""


def _methods_of(cls: type) -> Methods:
    methods: Methods = {}
    for name, member in inspect.getmembers(cls, callable):
        if name.startswith("_") or inspect.isclass(member):
            continue
        shape = _shape(member)
        if shape is not None and not isinstance(inspect.getattr_static(cls, name),
                                                (staticmethod, classmethod)):
            shape = shape[1:]  # self
        default = "streaming" if _is_generator(member) else 1
        methods[name] = (shape, getattr(member, NUM_RETURNS_ATTRIBUTE, default))
    return methods


class ActorHandle:
    """A reference to a live actor; pass it to tasks and other actors freely.

    Each handle holds a ref to the actor's creation object, so the node counts handles as
    it counts ObjectRefs: when the last handle anywhere is gone (and no call is pending,
    since pending calls pin that object too), an actor that is neither named nor detached
    stops, as in Ray. Handles from `get_actor` carry no such ref: named actors live until
    killed or until their driver leaves."""

    def __init__(self, actor_id: bytes, class_name: str, created: ObjectRef | None,
                 max_task_retries: int = 0, methods: Methods | None = None) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._created = created
        self._max_task_retries = max_task_retries
        """How often a call is sent again after the actor died running it and restarted
        (`options(max_task_retries=...)`, -1 unlimited); carried by each call."""
        self._methods = methods
        """The class's public methods and their parameters (None: unknown, as for a
        handle from `get_actor`; then calls are checked by the actor only)."""
        self._signatures: dict[str, _Fit | None] = {}

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._methods is None:
            return ActorMethod(self, name, 1)
        if name not in self._methods:
            raise AttributeError(f"actor class {self._class_name} has no method {name!r}")
        return ActorMethod(self, name, self._methods[name][1])

    def _signature(self, method: str) -> _Fit | None:
        if self._methods is None:
            return None
        if method not in self._signatures:
            shape = self._methods[method][0]
            self._signatures[method] = None if shape is None else _Fit(shape)
        return self._signatures[method]

    def __reduce__(self):
        return (ActorHandle, (self._actor_id, self._class_name, self._created,
                              self._max_task_retries, self._methods))

    def __repr__(self) -> str:
        return f"ActorHandle({self._class_name}, {self._actor_id.hex()[:12]})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


class ActorMethod:
    """`handle.method.remote(...)`: calls from one caller run in submission order."""

    def __init__(self, handle: ActorHandle, method: str, num_returns: int | str) -> None:
        self._handle = handle
        self._method = method
        self._num_returns = num_returns
        self._returns = _returns(num_returns, None)

    def options(self, /, *, num_returns: int | str | None = None) -> ActorMethod:
        return ActorMethod(self._handle, self._method,
                           self._num_returns if num_returns is None else num_returns)

    def remote(self, /, *args: Any, **kwargs: Any) -> Any:
        handle = self._handle
        _check_call(handle._signature(self._method), f"{handle._class_name}.{self._method}",
                    args, kwargs)
        return _submit(_rt(), f"{handle._class_name}.{self._method}", self._returns, args,
                       kwargs, ACTOR_CALL, None, self._method, {}, handle._max_task_retries,
                       False, handle._actor_id)


def _submit(runtime: Any, name: str, returns: tuple[int, int], args: tuple, kwargs: dict,
            kind: int, code_hash: bytes | None, method: str | None,
            resources: dict[str, float], max_retries: int, retry_exceptions: bool,
            actor_id: bytes | None, strategy: dict[str, Any] | None = None,
            runtime_env: RuntimeEnv | None = None) -> Any:
    """Serialise the arguments, make the result refs, hand the spec to the runtime;
    `returns`: how many refs and how a generator's values come back (`_returns`);
    `strategy`: the spec's scheduling strategy fields (`scheduling.spec_fields`);
    `runtime_env`: the environment it runs in (`runtime_env.effective`)."""
    num_returns, generator = returns
    task_id = runtime.ids.task_id()
    args_payload, deps, contained = _serialize_arguments(runtime, task_id, name, args, kwargs)
    return_ids = tuple(return_id(task_id, i) for i in range(1, num_returns + 1))
    owner = runtime.node_id
    refs = [ObjectRef(object_id, owner) for object_id in return_ids]
    pins = tuple(contained)
    if actor_id is not None:  # a pending call keeps its actor alive (see ActorHandle)
        pins = (*pins, return_id(actor_id, 1))
    runtime.submit(TaskSpec(task_id, kind, code_hash, method, args_payload, tuple(deps), pins,
                            return_ids, name, resources, max_retries, retry_exceptions,
                            actor_id, generator=generator, namespace=_current_namespace(),
                            runtime_env=runtime_env, **(strategy or {}), job=runtime.job))
    if generator == STREAMING:
        return ObjectRefGenerator(refs[0])
    return refs[0] if num_returns == 1 else refs


def _returns(option: Any, target: Any) -> tuple[int, int]:
    """(refs a call returns, how a generator's values come back) from `num_returns`: a
    count, "dynamic" or "streaming"; a generator function streams unless told (Ray)."""
    if option is None:
        option = "streaming" if target is not None and _is_generator(target) else 1
    if option == "dynamic":
        return 1, DYNAMIC
    if option == "streaming":
        return 1, STREAMING
    if isinstance(option, bool) or not isinstance(option, int) or option < 1:
        raise LocalUsageError(f'num_returns must be an int of at least 1, "dynamic" or '
                              f'"streaming", got {option!r}')
    return option, NOT_GENERATOR


def _is_generator(function: Any) -> bool:
    return inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)


class ObjectRefGenerator:
    """What `.remote()` of a streaming generator returns (Ray's): iterate it, or `async
    for` over it, to get one ObjectRef per value as the task yields them, while it still
    runs. If the task fails part way, the values before stay and the next ref raises
    the error; then iteration stops. It holds only the link it reads next, so dropping
    it early frees what the task made and nobody read."""

    def __init__(self, first_link: ObjectRef) -> None:
        self._link: ObjectRef | None = first_link
        self._index = 0

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        link = self._link
        if link is None:
            raise StopIteration
        try:
            more = get(link)
        except Exception:  # the task's error: this ref raises it
            self._link = None
            return link
        ref = self._step(link, more)
        if ref is None:
            raise StopIteration
        return ref

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        link = self._link
        if link is None:
            raise StopAsyncIteration
        try:
            more = await link
        except Exception:
            self._link = None
            return link
        ref = self._step(link, more)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def _step(self, link: ObjectRef, more: bool) -> ObjectRef | None:
        """Past `link`: the item it says exists (holding it and the next link before the
        old link goes), or None at the end."""
        if not more:
            self._link = None
            return None
        task_id, index = task_of(link.id), self._index
        item = ObjectRef(stream_item(task_id, index), link.owner, announce=True)
        self._link = ObjectRef(stream_link(task_id, index + 1), link.owner, announce=True)
        self._index = index + 1
        return item

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._index} values read)"


def remote(*args: Any, **options: Any) -> Any:
    """`@px.remote` or `@px.remote(num_cpus=..., ...)` on a function or a class."""
    if len(args) == 1 and not options and (inspect.isfunction(args[0])
                                           or inspect.isclass(args[0])
                                           or callable(args[0])):
        return _make_remote(args[0], {})
    if args:
        raise LocalUsageError("px.remote takes a function or class, or only keyword options")
    return lambda target: _make_remote(target, options)


def _make_remote(target: Any, options: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        raise LocalUsageError(
            f"px.remote cannot make a task of async function {target.__qualname__}: a task "
            f"runs a plain function (wrap it: def f(...): return asyncio.run(g(...)))")
    if inspect.isclass(target):
        return ActorClass(target, options)
    if callable(target):
        return RemoteFunction(target, options)
    raise LocalUsageError(f"px.remote needs a function or a class, not {target!r}")


# ---- objects ----
def put(value: Any) -> ObjectRef:
    """Store `value` once; pass the ref to many tasks without copying it again."""
    if isinstance(value, ObjectRef):
        raise LocalUsageError("px.put of an ObjectRef is not allowed; pass the ref itself")
    return serialization.put_value(_rt(), value, "the value given to put")


def get(refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """The value(s) behind `refs`, waiting for them; raises the task's error if it failed."""
    runtime = _rt()
    single = isinstance(refs, ObjectRef)
    ref_list = [refs] if single else list(refs)
    for ref in ref_list:
        if not isinstance(ref, ObjectRef):
            raise LocalUsageError(f"px.get takes ObjectRefs, got {type(ref).__name__}")
    ids = [ref.id for ref in ref_list]
    payloads, timed_out = runtime.get_payloads(ids, timeout)
    if timed_out:
        missing = sum(1 for object_id in ids if object_id not in payloads)
        raise GetTimeoutError(f"{missing} of {len(ids)} objects were not ready after "
                              f"{timeout} s")
    values = [serialization.from_payload(payloads[object_id]) for object_id in ids]
    return values[0] if single else values


def on_ready(ref: ObjectRef, callback: Callable[[bytes], None]) -> None:
    """Driver only: `callback(ref.id)` runs on the node thread when `ref` has a value.
    The callback must be quick and must not call the API (hand the id to a thread)."""
    runtime = _rt()
    if context.in_worker:
        raise LocalUsageError("result callbacks (and so px.Executor) work in drivers only")
    runtime.on_ready(ref.id, callback)


def wait(refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: float | None = None
         ) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split `refs` into (ready, not_ready) once `num_returns` are ready or time is up."""
    ref_list = list(refs)
    if not 0 <= num_returns <= len(ref_list):
        raise LocalUsageError(f"num_returns={num_returns} must be between 0 and "
                              f"{len(ref_list)}, the number of refs")
    if len({ref.id for ref in ref_list}) != len(ref_list):
        raise LocalUsageError("px.wait got the same ObjectRef twice")
    ready_ids = set(_rt().wait([ref.id for ref in ref_list], num_returns, timeout))
    ready = [ref for ref in ref_list if ref.id in ready_ids][:num_returns]
    chosen = {ref.id for ref in ready}
    return ready, [ref for ref in ref_list if ref.id not in chosen]


class _Resolver:
    """Turns refs into futures in drivers (`ref.future()`, `await ref`): the node says
    when an object is ready, and one thread per process gets the value (the node's
    callback may not call the API). Each waiting ref is held until then."""

    def __init__(self) -> None:
        self._waiting: dict[bytes, list[tuple[ObjectRef, concurrent.futures.Future]]] = {}
        self._ready: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def future(self, ref: ObjectRef) -> concurrent.futures.Future:
        if context.in_worker:
            return _rt().future(ref)
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="p2pexec-futures",
                                                daemon=True)
                self._thread.start()
            first = ref.id not in self._waiting
            self._waiting.setdefault(ref.id, []).append((ref, future))
        if first:
            on_ready(ref, self._ready.put)
        return future

    def _run(self) -> None:
        while True:
            object_id = self._ready.get()
            with self._lock:
                waiting = self._waiting.pop(object_id, [])
            if not waiting:
                continue
            try:
                value, error = get(waiting[0][0]), None
            except BaseException as exc:
                value, error = None, exc
            for _ref, future in waiting:
                # one its waiter cancelled (an asyncio timeout does) takes nothing
                if future.set_running_or_notify_cancel():
                    if error is None:
                        future.set_result(value)
                    else:
                        future.set_exception(error)
            del waiting, value, error, future  # nothing of a delivered value stays here


refs_module.future_of = _Resolver().future


async def get_async(refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None
                    ) -> Any:
    """`px.get` for asyncio drivers: awaits the value(s) without blocking the loop."""
    import asyncio  # here: workers, which import this module, start without it

    single = isinstance(refs, ObjectRef)
    ref_list = [refs] if single else list(refs)
    try:
        values = await asyncio.wait_for(asyncio.gather(*ref_list), timeout)
    except asyncio.TimeoutError:
        raise GetTimeoutError(f"the objects were not ready after {timeout} s") from None
    return values[0] if single else values


# ---- actors and cluster ----
def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor created with `options(name=name)`, in `namespace`
    (default: the caller's)."""
    actor_id = _rt().call("get_actor", _actor_key(name, namespace))
    return ActorHandle(actor_id, name, None)


def _current_namespace() -> str:
    """A driver's namespace, or (in a worker) that of the task or actor running."""
    if not context.in_worker:
        return context.namespace
    work, actor = context.runtime.runner.current()
    work = actor or work
    return work.namespace if work is not None else ""


def _check_namespace(namespace: Any) -> None:
    if not isinstance(namespace, str) or ":" in namespace:
        raise LocalUsageError(f"a namespace is a str without ':', got {namespace!r}")


def _actor_key(name: Any, namespace: str | None) -> str:
    """What the cluster knows a named actor by: its name, after its namespace and ':'
    unless that is the default ("")."""
    if not isinstance(name, str) or not name:
        raise LocalUsageError(f"an actor's name is a non-empty str, got {name!r}")
    if namespace is None:
        namespace = _current_namespace()
    else:
        _check_namespace(namespace)
    return f"{namespace}:{name}" if namespace else name


def cancel(ref: ObjectRef | ObjectRefGenerator, *, force: bool = False,
           recursive: bool = True) -> None:
    """Cancel the task that makes `ref` (Ray's `ray.cancel`): if it has not started it
    never runs; if it runs it gets `KeyboardInterrupt` (with `force`, its worker process
    is killed); with `recursive`, the tasks it submitted are cancelled too. A `get` of
    its results raises `px.TaskCancelledError` from now on. An actor call is skipped if
    its actor has not started it, cancelled if it runs on an async actor, and otherwise
    runs to its end (`force` is refused for actor calls, as in Ray). A task already
    finished keeps its result. Like Ray's, it returns once the cancel is on its way: a
    task starting at that moment is interrupted rather than skipped."""
    if isinstance(ref, ObjectRefGenerator):  # Ray's: cancel the generator's task
        if ref._link is None:
            return  # it ended: nothing runs
        ref = ref._link
    if not isinstance(ref, ObjectRef):
        raise LocalUsageError(f"px.cancel takes an ObjectRef, got {type(ref).__name__}")
    if ref.id[TASK_ID_SIZE:] == PUT_INDEX:
        raise LocalUsageError("px.cancel takes the ref of a task's result; this one was "
                              "made by px.put")
    _rt().cancel([ref.id, ref.owner, bool(force), bool(recursive)])


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor now; its pending and future calls fail with ActorDiedError. With
    `no_restart=False` its process is killed instead, and it restarts with fresh state
    as after a crash while its `max_restarts` allows (Ray's rule)."""
    if not isinstance(actor, ActorHandle):
        raise LocalUsageError(f"px.kill takes an actor handle, got {type(actor).__name__}")
    _rt().call("kill" if no_restart else "kill_to_restart", actor._actor_id)


@dataclass(frozen=True)
class RuntimeContext:
    """Where the calling code runs: `px.get_runtime_context()` (Ray's getters)."""

    node_id: str
    """The hex id of the node the caller runs on (a thief's, for a stolen task)."""
    task_id: str | None
    """The hex id of the task or actor call running (None in a driver)."""
    actor_id: str | None
    """The hex id of the actor whose method runs (None outside actors)."""
    assigned_resources: dict[str, float]
    """What the node gave the running task, or what the actor holds for its life."""
    gpu_ids: list[int]
    """The GPU indices among those (what `CUDA_VISIBLE_DEVICES` names); [] in a driver."""
    worker_mode: str
    """"driver", "task" or "actor"."""
    namespace: str = ""
    """Where the names it creates and looks up live ("" is the shared default)."""

    def get_namespace(self) -> str:
        return self.namespace

    def get_node_id(self) -> str:
        return self.node_id

    def get_task_id(self) -> str | None:
        return self.task_id

    def get_actor_id(self) -> str | None:
        return self.actor_id

    def get_assigned_resources(self) -> dict[str, float]:
        return dict(self.assigned_resources)

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """Ray's spelling: {"GPU": ["0", "1"]}."""
        return {GPU: [str(index) for index in self.gpu_ids]}


def get_runtime_context() -> RuntimeContext:
    """The node, task, actor and resources of the code that calls it."""
    runtime = _rt()
    node_id = NodeId(runtime.node_id).hex if runtime.node_id else ""
    namespace = _current_namespace()
    if not context.in_worker:
        return RuntimeContext(node_id, None, None, {}, [], "driver", namespace)
    work, actor = runtime.runner.current()
    if actor is not None:
        return RuntimeContext(node_id, work.task_id.hex() if work is not None else None,
                              actor.task_id.hex(), dict(actor.resources),
                              list(actor.gpu_ids), "actor", namespace)
    return RuntimeContext(node_id, work.task_id.hex() if work is not None else None, None,
                          dict(work.resources) if work is not None else {},
                          list(work.gpu_ids) if work is not None else [], "task", namespace)


def get_gpu_ids() -> list[int]:
    """The GPU indices the running task or actor was given, as in `CUDA_VISIBLE_DEVICES`
    ([] in a driver, or for work that asked for no GPUs)."""
    if not context.in_worker:
        return []
    return get_runtime_context().gpu_ids


def nodes() -> list[dict[str, Any]]:
    """Every node this one knows: id, name, address, state, resources, load."""
    return _rt().call("nodes", None)


def cluster_resources() -> dict[str, float]:
    return _rt().call("cluster_resources", None)


def available_resources() -> dict[str, float]:
    return _rt().call("available_resources", None)
