"""What the store holds and hands out, apart from how any recorder keeps it: recorded events,
append requests and expected versions, snapshots and dead letters.

Plain frozen values with no storage behind them, so that the command, protocol and testing layers
can name them without importing a store.
"""

from __future__ import annotations

import enum
import pickle
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendRequest",
    "DeadLetter",
    "EventQuery",
    "ExpectedVersion",
    "RecordedEvent",
    "Rejection",
    "Snapshot",
    "UnloadedEvent",
]


class ExpectedVersion(enum.Enum):
    """What an append expects of its stream besides an exact version (an ``int``)."""

    ANY = "any"
    NO_STREAM = "no stream"
    STREAM_EXISTS = "stream exists"


ANY = ExpectedVersion.ANY
NO_STREAM = ExpectedVersion.NO_STREAM
STREAM_EXISTS = ExpectedVersion.STREAM_EXISTS


@attrs.frozen
class RecordedEvent:
    """An event as stored: ``data`` is the event object (upcast and structured), or an
    :class:`UnloadedEvent` in a process that received it but cannot load its class."""

    event_id: str
    stream_id: str
    version: int
    position: int
    type: str
    data: Any
    metadata: dict[str, Any]
    recorded_at: datetime

    def __reduce__(self) -> Any:
        # The event object travels as a pickle of its own: a caller that cannot load its class
        # (a client older than the running system) still gets its answer (the command was
        # stored), instead of losing the whole message and timing out.
        data = pickle.dumps(self.data, pickle.HIGHEST_PROTOCOL)
        fields = (self.event_id, self.stream_id, self.version, self.position, self.type)
        return (_load_recorded, (*fields, data, self.metadata, self.recorded_at))


@attrs.frozen
class UnloadedEvent:
    """A received event's ``data`` whose class this process cannot load (``error`` says why):
    the event is stored; import its class to read it (``EventStore.read_stream`` does)."""

    type: str
    error: str


def _load_recorded(
    event_id: str,
    stream_id: str,
    version: int,
    position: int,
    type_name: str,
    data: bytes,
    metadata: dict[str, Any],
    recorded_at: datetime,
) -> RecordedEvent:
    try:
        event = pickle.loads(data)
    except Exception as exc:
        event = UnloadedEvent(type_name, f"{type(exc).__name__}: {exc}")
    return RecordedEvent(
        event_id, stream_id, version, position, type_name, event, metadata, recorded_at
    )


@attrs.frozen
class AppendRequest:
    """One atomic append: all of ``events`` are stored, or none."""

    stream_id: str
    events: Sequence[Any]
    expected_version: ExpectedVersion | int = ANY
    metadata: Mapping[str, Any] | None = None
    event_ids: Sequence[str] | None = None

    def answered_elsewhere(self, recorded: Sequence[RecordedEvent]) -> bool:
        """Whether ``recorded``, this append's answer, holds events an earlier attempt of it
        stored at other versions than this one expected (it stored nothing itself)."""
        expected = self.expected_version
        return bool(recorded) and isinstance(expected, int) and recorded[0].version != expected + 1


@attrs.frozen
class Snapshot:
    """The state of an aggregate at ``version``, kept to skip replaying the events before it."""

    stream_id: str
    version: int
    schema_version: int
    type: str
    state: Any
    taken_at: datetime


@attrs.frozen
class DeadLetter:
    """An event a subscriber gave up on (parked or skipped), with the error and how often."""

    id: int
    subscriber: str
    position: int
    event_id: str
    stream_id: str
    version: int
    type: str
    error_type: str
    error: str
    traceback: str
    failures: int
    status: str
    parked_at: str


@attrs.frozen
class EventQuery:
    """Which events a history query (``backstage events --where``, ``export``) wants; every
    condition given must hold. ``since`` is an ISO 8601 UTC time (``recorded_at >= since``),
    ``metadata`` pairs of a metadata field and the value it must have (compared as text)."""

    since: str | None = None
    types: tuple[str, ...] = ()
    stream_prefix: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Rejection:
    """A command that was refused (its aggregate raised) or failed, kept so that a trace of its
    request can show it: the events of a request say what happened, this says what did not."""

    id: int
    command_id: str
    correlation_id: str
    causation_id: str
    stream_id: str
    command: str
    error_type: str
    error: str
    metadata: str
    recorded_at: str
