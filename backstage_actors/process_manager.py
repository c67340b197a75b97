"""Process managers (sagas): long-running processes that turn events into commands.

For each event, :meth:`ProcessManager.interested` says whether it starts, continues or stops a
process instance, and which one. The instance (its state rebuilt from the last time) ``handle``s the
event, returning commands to dispatch, then ``apply``s it. The runtime dispatches the commands
with the event's id as their causation id and its correlation id, then saves the instance's state
together with the checkpoint. Command ids are derived from the event, so redelivering an event
after a crash never executes its commands twice.
"""

from __future__ import annotations

from typing import Any, ClassVar

from . import _serialization as ser
from .handler import Subscriber

__all__ = ["ProcessManager"]


class ProcessManager(Subscriber):
    """Subclass it for a process that spans aggregates (a transfer: withdraw here, deposit there,
    refund if the deposit is refused): it reacts to events with commands.

    Override :meth:`interested`, :meth:`handle` and :meth:`apply`; the instance's public
    attributes are its state, saved after each event. ``dispatch_timeout`` bounds the wait for
    the answers to its commands before the error policy applies.
    """

    kind: ClassVar[str] = "process_manager"
    dispatch_timeout: ClassVar[float] = 10.0
    # Events whose commands may be in flight at once, for different instances (an instance's
    # events are always handled one after the other); 1: one event at a time.
    max_in_flight: ClassVar[int] = 64

    process_id: str

    def interested(self, event: Any) -> tuple[str, str] | None:
        """``("start" | "continue" | "stop", process_id)`` for events of interest, else None."""
        return None

    def handle(self, event: Any) -> Any:
        """Commands to dispatch for ``event``: None, one command, or a list."""
        return None

    def apply(self, event: Any) -> None:
        """Mutate the instance's state for ``event``."""

    def state(self) -> dict[str, Any]:
        """The instance state to persist: its public attributes, unstructured."""
        return ser.attributes_state(self, ("process_id",))

    def restore(self, state: dict[str, Any]) -> None:
        """Set the attributes from :meth:`state`'s output (before the instance's next event)."""
        ser.restore_attributes(self, state)
