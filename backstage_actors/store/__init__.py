"""The event store: an append-only log of events, with the bookkeeping beside it (snapshots,
checkpoints, dead letters, process manager state).

``from backstage_actors.store import EventStore, RecordedEvent, ...`` is the stable way in. The
package is layered as eventsourcing's persistence is: :mod:`.records` (the values), a codec
(``_codec``), recorders that run the statements (:mod:`.recorder`: :mod:`.sqlite`,
:mod:`.postgres`, :mod:`.memory`) and the facade :class:`EventStore` over them.
"""

from __future__ import annotations

from ._facade import EventStore, is_postgres, listen, normalise, redact, store_kind
from .memory import MemoryRecorder
from .recorder import Recorder
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
from .sqlite import SQLiteRecorder

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendRequest",
    "DeadLetter",
    "EventStore",
    "ExpectedVersion",
    "MemoryRecorder",
    "RecordedEvent",
    "Recorder",
    "SQLiteRecorder",
    "Snapshot",
    "is_postgres",
    "listen",
    "normalise",
    "redact",
    "store_kind",
]
