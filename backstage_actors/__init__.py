"""Backstage: CQRS & Event Sourcing on Thespian actors, under OTP-style supervision.

Commands go through a router to one actor per aggregate; events land in SQLite; handlers,
projections and process managers follow the store from their own checkpoints; everything runs
under supervisors that restart what crashes.
"""

from .aggregate import Aggregate
from .application import Application, RunningSystem
from .command import DispatchResult
from .errors import (
    AggregateFailed,
    BackstageError,
    CommandRejected,
    ConsistencyTimeout,
    DispatchTimeout,
    InvalidCommand,
    SerializationError,
    StorageError,
    StoredEventError,
    SystemNotRunning,
    UnregisteredCommand,
    WrongExpectedVersion,
)
from .event import register_event, upcaster
from .limits import Limits
from .middleware import Middleware, Pipeline
from .router import Router
from .store import ANY, NO_STREAM, STREAM_EXISTS, EventStore, RecordedEvent, Snapshot

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "Aggregate",
    "AggregateFailed",
    "Application",
    "BackstageError",
    "CommandRejected",
    "ConsistencyTimeout",
    "DispatchResult",
    "DispatchTimeout",
    "EventStore",
    "InvalidCommand",
    "Limits",
    "Middleware",
    "Pipeline",
    "RecordedEvent",
    "Router",
    "RunningSystem",
    "SerializationError",
    "Snapshot",
    "StorageError",
    "StoredEventError",
    "SystemNotRunning",
    "UnregisteredCommand",
    "WrongExpectedVersion",
    "register_event",
    "upcaster",
]
