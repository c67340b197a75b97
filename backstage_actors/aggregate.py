"""The aggregate: a consistency boundary that decides (``execute``) and remembers (``apply``).

Aggregates are plain classes, as in Commanded: ``execute(command)`` returns None, one event or a
list of events, and raises to reject; ``apply(event)`` mutates the state and never raises for an
event that was stored. The runtime sets ``self.id`` and ``self.version`` and runs each instance
inside its own actor, so commands to one aggregate never run concurrently.
"""

from __future__ import annotations

from typing import Any, ClassVar

from . import _serialization as ser

__all__ = ["Aggregate", "events_of"]

_RUNTIME_FIELDS = ("id", "version")


class Aggregate:
    """Base class of aggregates.

    ``snapshot_every = N`` stores a snapshot every N events so a restart replays at most N events;
    bump ``snapshot_version`` when the state's shape changes and older snapshots are ignored.
    """

    snapshot_every: ClassVar[int | None] = None
    snapshot_version: ClassVar[int] = 1

    id: str
    version: int

    def __init__(self) -> None:
        pass

    def execute(self, command: Any) -> Any:
        """Decide: return None, an event, or a list of events. Raise to reject the command."""
        raise NotImplementedError(
            f"{type(self).__name__}.execute does not handle {type(command).__name__}"
        )

    def apply(self, event: Any) -> None:
        """Mutate the state for ``event``."""

    # -- snapshots --------------------------------------------------------------------------

    def snapshot_state(self) -> dict[str, Any]:
        """The state to snapshot: every public attribute but ``id`` and ``version``, unstructured."""
        return ser.attributes_state(self, _RUNTIME_FIELDS)

    def restore_snapshot(self, state: dict[str, Any]) -> None:
        """Set the attributes from :meth:`snapshot_state`'s output (typed by annotations or by
        the values a fresh instance holds)."""
        ser.restore_attributes(self, state)


def events_of(result: Any) -> list[Any]:
    """``execute``'s return value as a list of events."""
    if result is None:
        return []
    if isinstance(result, (list, tuple)):
        return list(result)
    return [result]
