"""Every exception p2pexec raises, in one small hierarchy.

Two roots say whose fault an error is: `ProtocolError` when a peer sent something we
cannot accept (drop that peer, carry on) and `LocalUsageError` when our own caller used an
API wrongly. The rest describe what happened to a task, an object, an actor or a node.
"""

from __future__ import annotations


class P2PExecError(Exception):
    """Base class of every p2pexec error."""


class LocalUsageError(P2PExecError, ValueError):
    """Our own caller used an API wrongly: a bug on this side, never the network's fault."""


class ProtocolError(P2PExecError):
    """A peer sent something we cannot accept. Drop that peer; the node carries on."""


class RemoteProtocolError(ProtocolError):
    """The remote side broke the protocol (bad frame, unknown type, limit exceeded)."""


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids (e.g. a frame over the limit)."""


class AuthenticationError(ProtocolError):
    """A peer did not prove its identity or the cluster token; its connection was dropped."""


class TaskError(P2PExecError):
    """A task raised. `px.get` raises an instance of both this and the original type.

    `cause` is the original exception (when it could be unpickled here) and
    `remote_traceback` the formatted traceback from the worker that ran the task.
    """

    def __init__(self, message: str, cause: BaseException | None = None,
                 remote_traceback: str = "", task_name: str = "") -> None:
        super().__init__(message)
        self.cause = cause
        self.remote_traceback = remote_traceback
        self.task_name = task_name

    def __reduce__(self):  # keep the extra fields across pickling
        return (TaskError, (self.args[0] if self.args else "", self.cause,
                            self.remote_traceback, self.task_name))


class WorkerCrashedError(P2PExecError):
    """The worker process running a task died and the task ran out of retries."""


class NodeDiedError(P2PExecError):
    """The machine that ran a task left the cluster before the task finished."""


class ResourcesUnavailableError(P2PExecError):
    """No live member of the cluster could ever give a task the resources it asks for."""


class TaskUnschedulableError(P2PExecError):
    """A task's hard node affinity cannot be honoured: its node is not a live member (or
    died or left while it held the task), lacks the resources it asks for, or cannot be
    sent its arguments. It never runs elsewhere (Ray's error of the same name)."""


class ActorDiedError(P2PExecError):
    """The actor's process died or the actor was killed; its pending calls fail with this."""


class ActorExit(BaseException):
    """Raised by `px.actor.exit_actor()` inside an actor to end it; a BaseException so
    that the method's own `except Exception` does not stop it."""


class CodeUnavailableError(P2PExecError):
    """A node given a task whose function or class it has never seen could not get its
    pickled code from the node that gave it, nor from any holder the DHT knows."""


class RuntimeEnvSetupError(P2PExecError):
    """A task's or actor's `runtime_env` could not be set up on the node that was to run
    it: a package of its directories could not be fetched from the node that gave the
    work, failed its hash check, or could not be unpacked (Ray's error of the same name)."""


class ObjectLostError(P2PExecError):
    """Every copy of an object is gone and it could not be rebuilt from lineage."""


class OwnerDiedError(ObjectLostError):
    """The peer that owned an object's metadata died, so the object can no longer be found."""


class NodeNotRunning(LocalUsageError):
    """Nothing answers on the control socket a tool or driver was pointed at."""


class ControlError(P2PExecError):
    """The node refused or failed a control request; the message is the node's reason."""


class TaskCancelledError(P2PExecError):
    """The task was cancelled (px.cancel, or its driver went away before it started): a
    get of its results raises this."""


class GetTimeoutError(P2PExecError, TimeoutError):
    """`get` or `wait` ran out of time before the objects were ready."""


class SerializationError(LocalUsageError):
    """A value given to p2pexec could not be pickled; the message names which one."""


class DhtLookupError(P2PExecError):
    """A DHT lookup found no record under its key (none stored, or no node answered
    before the lookup deadline); the message says which."""
