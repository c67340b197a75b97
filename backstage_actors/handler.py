"""Event handlers: what reacts to events after they are stored.

Every subscriber (:class:`EventHandler`, :class:`~backstage_actors.projection.Projection`,
:class:`~backstage_actors.process_manager.ProcessManager`) reads the store from its own checkpoint,
so a restarted, lagging or newly added one catches up by itself; the event bus only says "there is
more". A handler is at-least-once: its checkpoint moves after it handled the events.

When ``handle`` raises, :meth:`EventHandler.error` decides: :class:`Retry` the event after a
delay, ``SKIP`` it, ``PARK`` it in the dead-letters table and go on, or ``STOP`` this subscriber.
The default tries an event ``max_failures`` (3) times, retrying it with exponential backoff,
then parks it. A failing subscriber never
stops its siblings or the application.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import sqlite_utils

__all__ = [
    "PARK",
    "SKIP",
    "STOP",
    "EventHandler",
    "Metadata",
    "Retry",
    "Subscriber",
]


@attrs.frozen
class Retry:
    """Try the same event again after ``delay`` seconds."""

    delay: float = 0.0


SKIP = "skip"
PARK = "park"
STOP = "stop"


class Metadata(dict[str, Any]):
    """An event's metadata: ``event_id``, ``stream_id``, ``stream_version``, ``position``,
    ``recorded_at``, ``correlation_id``, ``causation_id`` and the user's fields given at dispatch.
    Readable as a mapping or by attribute (``metadata.position``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def of(cls, recorded: Any) -> Metadata:
        """The metadata a subscriber is handed for a :class:`RecordedEvent` (internal)."""
        meta = cls(recorded.metadata)
        meta.update(
            event_id=recorded.event_id,
            stream_id=recorded.stream_id,
            stream_version=recorded.version,
            position=recorded.position,
            recorded_at=recorded.recorded_at,
            type=recorded.type,
        )
        meta.setdefault("correlation_id", None)
        meta.setdefault("causation_id", None)
        return meta


class Subscriber:
    """What handlers, projections and process managers share: a name, a start, an error policy.

    ``name`` is stable: it keys the checkpoint. ``start_from`` is ``"origin"`` (replay everything
    stored) or ``"current"`` (only events stored after the first start). ``consistency`` is
    ``"strong"`` (default: a strongly consistent dispatch waits for this subscriber) or
    ``"eventual"``. ``max_failures`` is how many times in a row the default policy lets one event
    fail before it parks it (3: the first try and two retries).
    """

    name: ClassVar[str] = ""
    start_from: ClassVar[str] = "origin"
    consistency: ClassVar[str] = "strong"
    max_failures: ClassVar[int] = 3
    retry_base: ClassVar[float] = 0.1
    retry_cap: ClassVar[float] = 5.0
    kind: ClassVar[str] = "handler"

    def __init__(self) -> None:
        pass

    def error(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        """What to do about ``exc`` raised for ``event`` (the ``failures``-th time in a row)."""
        if failures < self.max_failures:
            return Retry(min(self.retry_cap, self.retry_base * 2 ** (failures - 1)))
        return PARK

    @classmethod
    def subscriber_name(cls) -> str:
        """``name``, or the class name if it has none: the key of its checkpoint."""
        return cls.name or cls.__name__


class EventHandler(Subscriber):
    """A side effect per event (send a mail, call an API). At-least-once.

    ``self.db`` (a ``sqlite_utils.Database`` on the application's database) is set before the
    first event, for handlers that keep a little state of their own.
    """

    db: sqlite_utils.Database

    def handle(self, event: Any, metadata: Metadata) -> None:
        """React to ``event`` (any stored event: ignore the ones you do not care about). Raise
        and the error policy (:meth:`error`) decides; it may see the same event again."""
        raise NotImplementedError
