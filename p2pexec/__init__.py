"""p2pexec: Ray's programming model on a peer-to-peer mesh with no head node."""

from p2pexec import actor
from p2pexec.api import (
    ActorClass,
    ActorHandle,
    ObjectRefGenerator,
    RemoteFunction,
    RuntimeContext,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_async,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    method,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from p2pexec.errors import (
    ActorDiedError,
    AuthenticationError,
    CodeUnavailableError,
    GetTimeoutError,
    LocalUsageError,
    NodeDiedError,
    ObjectLostError,
    OwnerDiedError,
    P2PExecError,
    ProtocolError,
    ResourcesUnavailableError,
    RuntimeEnvSetupError,
    SerializationError,
    TaskCancelledError,
    TaskError,
    TaskUnschedulableError,
    WorkerCrashedError,
)
from p2pexec.exec.refs import DynamicObjectRefGenerator, ObjectRef
from p2pexec.executor import Executor

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`ClusterConfig` is re-exported lazily: it pulls in the network and gossip layers,
    which worker processes (they import this package) must not pay for at start."""
    if name == "ClusterConfig":
        from p2pexec.config import ClusterConfig

        return ClusterConfig
    raise AttributeError(f"module 'p2pexec' has no attribute {name!r}")


__all__ = [
    "ActorClass",
    "ActorDiedError",
    "ActorHandle",
    "AuthenticationError",
    "ClusterConfig",
    "CodeUnavailableError",
    "DynamicObjectRefGenerator",
    "Executor",
    "GetTimeoutError",
    "LocalUsageError",
    "NodeDiedError",
    "ObjectLostError",
    "ObjectRef",
    "ObjectRefGenerator",
    "OwnerDiedError",
    "P2PExecError",
    "ProtocolError",
    "RemoteFunction",
    "ResourcesUnavailableError",
    "RuntimeContext",
    "RuntimeEnvSetupError",
    "SerializationError",
    "TaskCancelledError",
    "TaskError",
    "TaskUnschedulableError",
    "WorkerCrashedError",
    "actor",
    "available_resources",
    "cancel",
    "cluster_resources",
    "get",
    "get_actor",
    "get_async",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "wait",
]
