"""OTP-style supervision trees for Thespian actors.

Thespian never restarts a crashed actor; this package does: :class:`SupervisedActor` turns an
exception into a clean crash, and a supervisor restarts its children by strategy, restart type,
restart intensity and backoff. It imports nothing from ``backstage_actors``.
"""

from ._actor import SupervisedActor
from ._api import (
    SupervisionError,
    request,
    start_child,
    start_supervisor,
    stop_supervisor,
    terminate_child,
    tree,
    walk,
    whereis,
)
from ._messages import (
    ChildAddress,
    ChildStarted,
    ChildTerminated,
    Envelope,
    Failure,
    Forward,
    GetTree,
    StartChild,
    Stop,
    Stopped,
    TerminateChild,
    TreeNode,
    WatchChildren,
    WhereIs,
)
from ._spec import Backoff, ChildSpec, SupervisorSpec
from ._supervisor import Child, Supervisor

__all__ = [
    "Backoff",
    "Child",
    "ChildAddress",
    "ChildSpec",
    "ChildStarted",
    "ChildTerminated",
    "Envelope",
    "Failure",
    "Forward",
    "GetTree",
    "StartChild",
    "Stop",
    "Stopped",
    "SupervisedActor",
    "SupervisionError",
    "Supervisor",
    "SupervisorSpec",
    "TerminateChild",
    "TreeNode",
    "WatchChildren",
    "WhereIs",
    "request",
    "start_child",
    "start_supervisor",
    "stop_supervisor",
    "terminate_child",
    "tree",
    "walk",
    "whereis",
]
