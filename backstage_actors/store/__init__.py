"""The event store: an append-only log of events, with the bookkeeping beside it (snapshots,
checkpoints, dead letters, process manager state).

``from backstage_actors.store import EventStore, RecordedEvent, ...`` is the stable way in; the
modules of this package are how it is built.
"""

from __future__ import annotations

from .records import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendRequest,
    DeadLetter,
    ExpectedVersion,
    RecordedEvent,
    Snapshot,
)
from .sqlite import EventStore

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendRequest",
    "DeadLetter",
    "EventStore",
    "ExpectedVersion",
    "RecordedEvent",
    "Snapshot",
]
