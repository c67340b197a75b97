"""Functions for code outside the actor system: start a tree, look at it, change it, stop it.

Thespian's ``ask`` returns whatever message arrives next, stale replies included, so every request
here carries a fresh id and waits for the reply that bears it.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

from ._messages import (
    ChildAddress,
    ChildStarted,
    ChildTerminated,
    Failure,
    GetTree,
    StartChild,
    Stop,
    Stopped,
    TerminateChild,
    TreeNode,
    WhereIs,
    _Init,
    _Started,
)
from ._spec import ChildSpec, SupervisorSpec
from ._supervisor import Supervisor

__all__ = [
    "SupervisionError",
    "request",
    "start_child",
    "start_supervisor",
    "stop_supervisor",
    "terminate_child",
    "tree",
    "whereis",
]

_ids = itertools.count(1)
_prefix = uuid.uuid4().hex[:8]


class SupervisionError(RuntimeError):
    """A supervision request failed or got no answer in time."""


def _request_id() -> str:
    return f"{_prefix}-{os.getpid()}-{next(_ids)}"


def request(actor_system: Any, address: Any, message: Any, timeout: float) -> Any:
    """Send ``message`` (which carries ``request_id``) and return the reply bearing the same id.

    A :class:`Failure` reply is returned as is; no reply within ``timeout`` raises
    :class:`SupervisionError`.
    """
    request_id = message.request_id
    deadline = time.monotonic() + timeout
    reply = actor_system.ask(address, message, timeout)
    while True:
        if reply is not None and getattr(reply, "request_id", None) == request_id:
            return reply
        if isinstance(reply, Failure) and (reply.request is message or reply.request == message):
            return reply
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SupervisionError(f"no reply to {type(message).__name__} within {timeout}s")
        # A reply may already wait behind stale ones: simpleSystemBase's listen() would sleep
        # until its next timer before handing it over, so look without waiting first.
        reply = actor_system.listen(0)
        if reply is None:
            reply = actor_system.listen(min(remaining, 0.1))


def start_supervisor(
    actor_system: Any, spec: SupervisorSpec, name: str = "root", timeout: float = 30.0
) -> Any:
    """Start a root supervisor and its children; return its address once every child is started.

    The root is registered under ``name`` as a Thespian global name, so another process attached to
    the same actor system finds it again with ``actor_system.createActor(Supervisor, globalName=name)``.
    """
    address = actor_system.createActor(Supervisor, globalName=name)
    init = _Init(name, spec, None, spec.kind, _request_id())
    reply = request(actor_system, address, init, timeout)
    if isinstance(reply, Failure):
        raise SupervisionError(f"supervisor {name!r} failed to start: {reply}")
    if not isinstance(reply, _Started):
        raise SupervisionError(f"supervisor {name!r} answered {reply!r}")
    return address


def tree(actor_system: Any, root: Any, timeout: float = 5.0) -> dict[str, Any]:
    """The live supervision tree under ``root`` as nested dicts (see the README for the node shape)."""
    reply = request(actor_system, root, GetTree(_request_id(), timeout), timeout + 1.0)
    if not isinstance(reply, TreeNode):
        raise SupervisionError(f"tree request failed: {reply}")
    return reply.node


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a tree from :func:`tree`, ``node`` first, depth first."""
    yield node
    for child in node.get("children", []):
        yield from walk(child)


def whereis(actor_system: Any, supervisor: Any, name: str, timeout: float = 5.0) -> Any:
    """The current address of ``supervisor``'s child ``name``, or None when it is not running."""
    reply = request(actor_system, supervisor, WhereIs(name, _request_id()), timeout)
    if not isinstance(reply, ChildAddress):
        raise SupervisionError(f"whereis {name!r} failed: {reply}")
    return reply.address


def start_child(actor_system: Any, supervisor: Any, spec: ChildSpec, timeout: float = 10.0) -> Any:
    reply = request(actor_system, supervisor, StartChild(spec, _request_id()), timeout)
    if not isinstance(reply, ChildStarted):
        raise SupervisionError(f"cannot start child {spec.name!r}: {reply}")
    return reply.address


def terminate_child(actor_system: Any, supervisor: Any, name: str, timeout: float = 10.0) -> None:
    reply = request(actor_system, supervisor, TerminateChild(name, _request_id()), timeout)
    if not isinstance(reply, ChildTerminated):
        raise SupervisionError(f"cannot terminate child {name!r}: {reply}")


def stop_supervisor(actor_system: Any, supervisor: Any, timeout: float = 30.0) -> None:
    """Orderly shutdown: children stop in reverse start order, each within its ``shutdown`` time."""
    reply = request(actor_system, supervisor, Stop(_request_id()), timeout)
    if not isinstance(reply, Stopped):
        raise SupervisionError(f"stop failed: {reply}")
