"""Backstage: CQRS & Event Sourcing on Thespian actors, under OTP-style supervision.

Commands go through a router to one actor per aggregate; events land in SQLite; handlers,
projections and process managers follow the store from their own checkpoints; everything runs
under supervisors that restart what crashes.

Everything an application needs comes from here::

    from backstage_actors import Aggregate, Application, EventHandler, Projection, Router

The domain side (aggregates, routers, subscribers, errors, the event store) imports no actor
system; :class:`Application` and :class:`RunningSystem`, which do, load on first use, so that
domain modules and ``backstage_actors.testing.given`` stay free of the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .aggregate import Aggregate
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
    UnhandledCommand,
    UnregisteredCommand,
    WrongExpectedVersion,
)
from .event import register_event, upcaster
from .handler import PARK, SKIP, STOP, EventHandler, Metadata, Retry, Subscriber
from .limits import Limits
from .middleware import Middleware, Pipeline
from .process_manager import ProcessManager
from .projection import Projection
from .router import Router
from .store import ANY, NO_STREAM, STREAM_EXISTS, EventStore, RecordedEvent, Snapshot

if TYPE_CHECKING:
    from .application import Application
    from .client import RunningSystem

__all__ = [
    "ANY",
    "NO_STREAM",
    "PARK",
    "SKIP",
    "STOP",
    "STREAM_EXISTS",
    "Aggregate",
    "AggregateFailed",
    "Application",
    "BackstageError",
    "CommandRejected",
    "ConsistencyTimeout",
    "DispatchResult",
    "DispatchTimeout",
    "EventHandler",
    "EventStore",
    "InvalidCommand",
    "Limits",
    "Metadata",
    "Middleware",
    "Pipeline",
    "ProcessManager",
    "Projection",
    "RecordedEvent",
    "Retry",
    "Router",
    "RunningSystem",
    "SerializationError",
    "Snapshot",
    "StorageError",
    "StoredEventError",
    "Subscriber",
    "SystemNotRunning",
    "UnhandledCommand",
    "UnregisteredCommand",
    "WrongExpectedVersion",
    "register_event",
    "upcaster",
]

#: The names whose modules import Thespian: loaded when first used (PEP 562), not at import.
_RUNTIME = {"Application": ".application", "RunningSystem": ".client"}


def __getattr__(name: str) -> Any:
    module = _RUNTIME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
