"""The recorder interface: what :class:`~backstage_actors.store.EventStore` needs of a storage
engine, and nothing more.

A recorder runs statements; the facade above it encodes and decodes events, applies the rules of
expected versions (:mod:`._appending`) and pages reads. Three recorders ship: ``sqlite`` (one file,
:mod:`.sqlite`), ``postgres`` (a PostgreSQL server, :mod:`.postgres`) and ``memory`` (a dict, for
fast unit tests, :mod:`.memory`). All three pass the same conformance suite
(``tests/store_conformance.py``).

Every method is one short transaction of its own, unless it runs inside :meth:`transaction`, which
it then joins. Timestamps are ISO 8601 strings; event data, metadata, snapshots and process state
are JSON text.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from ._appending import Prepared, Results, Row
from .records import DeadLetter, EventQuery, Rejection

__all__ = ["TABLES", "Recorder"]

# The tables of a store, in the order a copy writes them, with their columns.
TABLES: dict[str, tuple[str, ...]] = {
    "events": (
        "position",
        "event_id",
        "stream_id",
        "version",
        "type",
        "schema_version",
        "topic",
        "data",
        "metadata",
        "recorded_at",
    ),
    "streams": ("stream_id", "version", "truncated_before"),
    "snapshots": ("stream_id", "version", "schema_version", "type", "data", "taken_at"),
    "snapshot_history": ("stream_id", "version", "schema_version", "type", "data", "taken_at"),
    "checkpoints": ("name", "position", "updated_at"),
    "dead_letters": (
        "id",
        "subscriber",
        "position",
        "event_id",
        "stream_id",
        "version",
        "type",
        "error_type",
        "error",
        "traceback",
        "failures",
        "status",
        "parked_at",
    ),
    "process_managers": ("name", "process_id", "state", "updated_at"),
    "rejections": (
        "id",
        "command_id",
        "correlation_id",
        "causation_id",
        "stream_id",
        "command",
        "error_type",
        "error",
        "metadata",
        "recorded_at",
    ),
}

#: The columns that name a row of each table in an error (a broken row named by ``copy``, a
#: row read back as bytes by the SQLite store).
KEYS: dict[str, tuple[str, ...]] = {
    "events": ("position", "stream_id", "version"),
    "streams": ("stream_id",),
    "snapshots": ("stream_id", "version"),
    "snapshot_history": ("stream_id", "version"),
    "checkpoints": ("name",),
    "dead_letters": ("id", "subscriber", "position"),
    "process_managers": ("name", "process_id"),
    "rejections": ("id", "command_id", "stream_id"),
}


class Recorder(abc.ABC):
    """A storage engine for one store. ``location`` names it in messages (never a password)."""

    location: str

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def transaction(self, flush: bool = True) -> AbstractContextManager[Any]:
        """One write transaction: commit on success, roll back on error; nested use joins it."""

    @abc.abstractmethod
    def savepoint(self) -> AbstractContextManager[Any]:
        """Inside :meth:`transaction`: undo only what the block wrote if it raises."""

    @property
    @abc.abstractmethod
    def handle(self) -> Any:
        """What projections and handlers write their own tables through: a
        ``sqlite_utils.Database`` (SQLite, memory) or a
        :class:`~backstage_actors.store.postgres.PostgresHandle`."""

    @abc.abstractmethod
    def drop_tables(self, tables: Sequence[str]) -> None:
        """Drop a projection's tables (if they exist), inside :meth:`transaction`."""

    def flush(self) -> None:
        """Make commits left unflushed (``transaction(flush=False)``) durable; most recorders
        flush at commit and have nothing to do."""
        return None

    # -- events -----------------------------------------------------------------------------

    @abc.abstractmethod
    def write(
        self, prepared: Prepared, results: Results, recorded_at: datetime, stamp: str
    ) -> None:
        """Store the prepared appends in one transaction, each with its own outcome in
        ``results``: its recorded events, or the error that made it store nothing. Raises
        :class:`~backstage_actors.errors.StorageError` when nothing could be stored."""

    @abc.abstractmethod
    def stream_version(self, stream_id: str) -> int: ...

    @abc.abstractmethod
    def last_position(self) -> int: ...

    @abc.abstractmethod
    def stream_page(
        self, stream_id: str, low: int, high: int, limit: int, backward: bool
    ) -> list[Row]:
        """Rows of ``stream_id`` with ``low <= version <= high``, by version, at most ``limit``."""

    @abc.abstractmethod
    def payload_page(self, stream_id: str, low: int, limit: int) -> list[tuple[Any, ...]]:
        """``(version, type, schema_version, topic, data, position)`` of the stream's events
        from version ``low`` on, at most ``limit``: only what rebuilding an aggregate reads."""

    @abc.abstractmethod
    def events_page(self, from_position: int, limit: int) -> list[Row]:
        """Rows from ``from_position`` on, by position, at most ``limit``."""

    @abc.abstractmethod
    def event_row(self, position: int) -> Row | None: ...

    @abc.abstractmethod
    def event_version(self, event_id: str, stream_id: str) -> int | None:
        """The version of the event ``event_id`` if ``stream_id`` holds it."""

    @abc.abstractmethod
    def truncate_stream(self, stream_id: str, before_version: int) -> int: ...

    # -- bookkeeping ------------------------------------------------------------------------

    @abc.abstractmethod
    def save_snapshot(
        self, stream_id: str, version: int, schema_version: int, type: str, data: str, at: str
    ) -> None:
        """Replace the stream's snapshot unless the stored one is of a later version, and keep
        it in the stream's snapshot history (replacing one of the same version), in one
        transaction."""

    @abc.abstractmethod
    def snapshot_row(self, stream_id: str) -> tuple[int, int, str, str, str] | None:
        """``(version, schema_version, type, data, taken_at)``."""

    @abc.abstractmethod
    def snapshot_row_at(
        self, stream_id: str, version: int, schema_version: int | None
    ) -> tuple[int, int, str, str, str] | None:
        """The snapshot history's latest row of ``stream_id`` at or before ``version`` (of
        ``schema_version`` when given), as :meth:`snapshot_row`; one index seek."""

    @abc.abstractmethod
    def checkpoint(self, name: str) -> int: ...

    @abc.abstractmethod
    def has_checkpoint(self, name: str) -> bool: ...

    @abc.abstractmethod
    def save_checkpoint(self, name: str, position: int, at: str) -> None: ...

    @abc.abstractmethod
    def move_checkpoint(self, name: str, position: int, expected: int, at: str) -> bool:
        """Save ``position`` only if the checkpoint is at ``expected`` (none counts as 0); False,
        and nothing changed, otherwise. On PostgreSQL a transaction moving it meanwhile is
        waited for, then decides."""

    @abc.abstractmethod
    def delete_checkpoint(self, name: str) -> None: ...

    @abc.abstractmethod
    def park(self, letter: DeadLetter) -> None:
        """Keep ``letter`` (its ``id`` is ignored): a new dead letter, or the one of the same
        subscriber and position updated."""

    @abc.abstractmethod
    def dead_letters(self, subscriber: str | None, status: str | None) -> list[DeadLetter]: ...

    @abc.abstractmethod
    def set_dead_letter_status(self, letter_id: int, status: str) -> None: ...

    @abc.abstractmethod
    def process_state(self, name: str, process_id: str) -> str | None: ...

    @abc.abstractmethod
    def save_process(self, name: str, process_id: str, state: str | None, at: str) -> None:
        """Save an instance's JSON state; None deletes it."""

    # -- history (``backstage_actors.history``) ---------------------------------------------

    @abc.abstractmethod
    def query_page(self, after: int, limit: int, query: EventQuery) -> list[Row]:
        """Rows with ``position > after`` that match ``query``, by position, at most ``limit``.
        A filter on ``correlation_id`` or ``causation_id`` uses an index; other metadata fields
        are read row by row."""

    def checked_page(self, after: int, limit: int, query: EventQuery) -> list[Row]:
        """:meth:`query_page`'s rows, each with one more column that says whether its stored
        JSON can be read: bit 1 set when ``data`` is valid JSON, bit 2 when ``metadata`` is
        (3: both). The SQL recorders ask the database (cheap); this scan parses each row."""
        return [
            (*row, _valid_json(row[7]) | 2 * _valid_json(row[8]))
            for row in self.query_page(after, limit, query)
        ]

    @abc.abstractmethod
    def version_at(self, stream_id: str, at: str) -> int:
        """The stream's last version recorded at or before ``at`` (ISO 8601, UTC); 0 if none."""

    @abc.abstractmethod
    def event_by_id(self, event_id: str) -> Row | None: ...

    @abc.abstractmethod
    def record_rejection(self, rejection: Rejection) -> None:
        """Keep a refused or failed command (its ``id`` is ignored; its own short
        transaction)."""

    @abc.abstractmethod
    def rejections(self, field: str, value: str) -> list[Rejection]:
        """Rejections whose ``field`` (``correlation_id`` or ``command_id``) is ``value``, in
        the order they were recorded."""

    # -- copying a whole store --------------------------------------------------------------

    @abc.abstractmethod
    def snapshot(self) -> AbstractContextManager[None]:
        """Reads in this thread inside see one state of the store, whatever is committed
        meanwhile (a read transaction; writers are not held up, except in memory)."""

    @abc.abstractmethod
    def count(self, table: str) -> int: ...

    @abc.abstractmethod
    def export(self, table: str) -> Iterator[list[tuple[Any, ...]]]:
        """Every row of ``table`` (columns as in :data:`TABLES`), in pages, in key order."""

    @abc.abstractmethod
    def import_rows(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        """Insert rows as exported (keeping positions and ids), inside :meth:`transaction`."""

    @abc.abstractmethod
    def next_position(self) -> int:
        """The position the next appended event gets: past every position ever handed out,
        also those of events deleted since (truncated streams)."""

    @abc.abstractmethod
    def reserve_positions(self, next_position: int) -> None:
        """Inside :meth:`transaction`: no event appended later gets a position below
        ``next_position`` (a copy goes on where its source stopped)."""


def _valid_json(text: Any) -> int:
    """1 when ``text`` is JSON text (as SQLite's ``json_valid`` and PostgreSQL's cast say),
    else 0. NaN and Infinity are not: Python's parser takes them, the databases do not."""
    try:
        json.loads(text, parse_constant=_not_json)
    except (ValueError, TypeError):
        return 0
    return 1


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
