"""The aggregate: a consistency boundary that decides (``execute``) and remembers (``apply``).

Aggregates are plain classes, as in Commanded: ``execute(command)`` returns one event or a list of
events (``[]``: explicitly none), and raises to reject; returning None (typically a ``match`` with
no ``case`` for the command) is a mistake, reported as :class:`UnhandledCommand` rather than
passing silently. ``apply(event)`` mutates the state and never raises for an event that was stored. The runtime sets ``self.id`` and ``self.version`` and runs each instance
inside its own actor, so commands to one aggregate never run concurrently.
"""

from __future__ import annotations

from typing import Any, ClassVar

from . import _serialization as ser
from .errors import UnhandledCommand

__all__ = ["Aggregate", "decide", "events_of"]

_RUNTIME_FIELDS = ("id", "version")


class Aggregate:
    """Base class of aggregates: subclass it for each consistency boundary (an account, an order).

    Override ``__init__`` (fresh state, no arguments), :meth:`execute` and :meth:`apply`.
    ``snapshot_every = N`` stores a snapshot every N events so a restart replays at most N events;
    bump ``snapshot_version`` when the state's shape changes and older snapshots are ignored.
    """

    snapshot_every: ClassVar[int | None] = None
    snapshot_version: ClassVar[int] = 1

    id: str
    version: int

    def __init__(self) -> None:
        """Set the fresh state (a new aggregate's, before any event is applied)."""

    def execute(self, command: Any) -> Any:
        """Decide: return an event or a list of events (``[]`` for none); raise to reject.

        Called once per command, never concurrently for one aggregate; it must not change the
        state (``apply`` does, for the events it returns). Returning None means the command was
        not handled: the dispatch fails with :class:`UnhandledCommand`.
        """
        return None

    def apply(self, event: Any) -> None:
        """Mutate the state for ``event``: for the events ``execute`` returned, and for every
        stored event when the aggregate is rebuilt. Never raise for an event that was stored."""

    # -- snapshots --------------------------------------------------------------------------

    def snapshot_state(self) -> dict[str, Any]:
        """The state to snapshot: every public attribute but ``id`` and ``version``, unstructured."""
        return ser.attributes_state(self, _RUNTIME_FIELDS)

    def restore_snapshot(self, state: dict[str, Any]) -> None:
        """Set the attributes from :meth:`snapshot_state`'s output (typed by annotations or by
        the values a fresh instance holds)."""
        ser.restore_attributes(self, state)


def decide(aggregate: Aggregate, command: Any) -> list[Any]:
    """The events ``aggregate`` decides for ``command``; what the runtime and ``given`` call.

    Raises :class:`UnhandledCommand` when ``execute`` returned None, and whatever ``execute``
    raised (a rejection).
    """
    result = aggregate.execute(command)
    if result is None:
        name = type(aggregate).__name__
        identity = getattr(aggregate, "id", "")
        stream = f"{name}-{identity}" if identity else ""
        raise UnhandledCommand(name, type(command).__name__, stream)
    return events_of(result)


def events_of(result: Any) -> list[Any]:
    """One item, a list or tuple of items, or None (nothing) as a list; for event or command
    lists returned by user code."""
    if result is None:
        return []
    if isinstance(result, (list, tuple)):
        return list(result)
    return [result]
