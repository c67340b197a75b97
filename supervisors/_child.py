"""What a supervisor knows of each of its children."""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs

from ._messages import Failure
from ._spec import ChildSpec, SupervisorSpec

__all__ = ["LIVE", "Child"]

LIVE = ("starting", "running")


@attrs.define(eq=False)
class Child:
    """What a supervisor knows of one child."""

    spec: ChildSpec
    dynamic: bool = False
    address: Any = None
    pid: int | None = None
    forked: bool = False  # its process is a child of ours (not a remote or the same process)
    status: str = "new"  # new starting running exiting stopping restarting stopped
    restarts: int = 0
    generation: int = 0
    failure: Failure | None = None
    last_failure: Failure | None = None
    pending: list[tuple[Any, Any]] = attrs.Factory(list)
    bounced: list[tuple[Any, Any]] = attrs.Factory(list)
    recent: deque[float] = attrs.Factory(deque)
    waiters: list[tuple[Any, Any, str]] = attrs.Factory(list)  # (who, request_id, what)
    # Crashes in a row before reaching "running" (reset once it runs); a dynamic child that
    # fails to start twice in a row is not restarted: it would fail the same way forever.
    failed_starts: int = 0
    gave_up: bool = False  # stopped for failing to start (``last_failure`` says why)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_supervisor(self) -> bool:
        actor = self.spec.actor
        return isinstance(actor, SupervisorSpec) or bool(getattr(actor, "supervises", False))

    @property
    def kind(self) -> str:
        if self.spec.kind:
            return self.spec.kind
        if isinstance(self.spec.actor, SupervisorSpec):
            return self.spec.actor.kind
        if isinstance(self.spec.args, SupervisorSpec) and self.is_supervisor:
            return str(getattr(self.spec.actor, "kind", None) or self.spec.args.kind)
        return str(getattr(self.spec.actor, "kind", "worker"))
