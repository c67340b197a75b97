"""The messages supervisors and their children exchange.

The public ones are what a user sends to a supervisor (or receives back); the underscored ones are the
private protocol between a supervisor and a :class:`~supervisors.SupervisedActor`. All are picklable
values: on the multiproc bases they cross process boundaries.
"""

from __future__ import annotations

from typing import Any

import attrs

from ._spec import ChildSpec

__all__ = [
    "ChildAddress",
    "ChildStarted",
    "ChildTerminated",
    "Envelope",
    "Failure",
    "Forward",
    "GetTree",
    "StartChild",
    "Stop",
    "Stopped",
    "TerminateChild",
    "TreeNode",
    "WatchChildren",
    "WhereIs",
]


@attrs.frozen
class Failure:
    """Reply to the sender of a message that crashed the actor, or of a request that failed.

    ``error_type`` and ``message`` are the exception's class name and text; ``traceback`` the
    formatted traceback (empty when there was no exception, e.g. the child was stopped).
    """

    actor: str
    error_type: str
    message: str
    traceback: str = ""
    request: Any = None
    request_id: Any = None

    def __str__(self) -> str:
        return f"{self.actor}: {self.error_type}: {self.message}"


@attrs.frozen
class Envelope:
    """A message delivered on behalf of ``reply_to``: the child sees ``receive(message, reply_to)``."""

    message: Any
    reply_to: Any


@attrs.frozen
class Forward:
    """Deliver ``message`` to the supervisor's child ``name``, wherever it lives now.

    While the child is restarting the message waits in the supervisor and is delivered to the new
    instance; the child sees the original sender as ``sender``.
    """

    name: str
    message: Any


@attrs.frozen
class WhereIs:
    name: str
    request_id: Any = None


@attrs.frozen
class ChildAddress:
    name: str
    address: Any
    request_id: Any = None


@attrs.frozen
class WatchChildren:
    """Ask to be told (:class:`ChildAddress`) every time one of the supervisor's children (re)starts."""


@attrs.frozen
class StartChild:
    spec: ChildSpec
    request_id: Any = None


@attrs.frozen
class ChildStarted:
    name: str
    address: Any
    request_id: Any = None


@attrs.frozen
class TerminateChild:
    name: str
    request_id: Any = None


@attrs.frozen
class ChildTerminated:
    name: str
    request_id: Any = None


@attrs.frozen
class GetTree:
    request_id: Any = None
    timeout: float = 5.0


@attrs.frozen
class TreeNode:
    node: dict[str, Any]
    request_id: Any = None


@attrs.frozen
class Stop:
    """Orderly shutdown of a supervisor: children stop in reverse start order, then the supervisor."""

    request_id: Any = None


@attrs.frozen
class Stopped:
    request_id: Any = None


# -- private protocol -------------------------------------------------------------------------


@attrs.frozen
class _Init:
    name: str
    args: Any
    supervisor: Any
    kind: str | None = None
    request_id: Any = None


@attrs.frozen
class _Started:
    name: str
    pid: int
    request_id: Any = None


@attrs.frozen
class _Exiting:
    """A child asks its supervisor to end it: ``crash`` carries the failure, else a normal exit."""

    name: str
    crash: Failure | None = None


@attrs.frozen
class _Undelivered:
    """A message that reached a child after it had asked to exit: the supervisor re-routes it."""

    message: Any
    sender: Any
    name: str = ""


@attrs.frozen
class _Describe:
    request_id: Any
    timeout: float


@attrs.frozen
class _RestartDue:
    name: str
    generation: int


@attrs.frozen
class _StopDue:
    name: str
    generation: int


@attrs.frozen
class _GatherDue:
    request_id: Any
