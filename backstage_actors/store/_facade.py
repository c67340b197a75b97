"""The event store's facade: what aggregates, subscribers, the CLI and users call.

:class:`EventStore` encodes and decodes events, applies the rules of expected versions and pages
reads; a recorder (:mod:`.recorder`) runs the statements. ``EventStore(where)`` picks the recorder
by the form of ``where``: a path or ``sqlite:///path`` is SQLite, ``postgresql://...`` (or
``postgres://``) PostgreSQL, ``memory:`` a store in this process's memory.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

from .. import _serialization as ser
from ..errors import BackstageError, StoredEventError, error_text
from . import _appending as ap
from ._codec import decode_event
from .memory import MemoryRecorder
from .recorder import Recorder
from .records import (
    ANY,
    AppendRequest,
    DeadLetter,
    ExpectedVersion,
    RecordedEvent,
    Rejection,
    Snapshot,
)
from .sqlite import SQLiteRecorder

__all__ = ["EventStore", "is_postgres", "listen", "normalise", "redact", "store_kind"]


def store_kind(where: str) -> str:
    """``"sqlite"``, ``"postgres"`` or ``"memory"``: the recorder ``where`` names."""
    text = str(where)
    if text.startswith(("postgresql://", "postgres://")):
        return "postgres"
    if text == "memory:" or text.startswith("memory:"):
        return "memory"
    return "sqlite"


def is_postgres(where: str) -> bool:
    return store_kind(where) == "postgres"


def listen(where: str) -> Any:
    """A :class:`~backstage_actors.store.postgres.Listener` on the PostgreSQL store ``where``
    (wakes on every commit, from any host), or None for stores that cannot tell."""
    if store_kind(where) != "postgres":
        return None
    from .postgres import Listener  # (lazy: psycopg is the optional extra `postgres`)

    return Listener(where)


def normalise(where: str) -> str:
    """``where`` as every process of an application names it: a SQLite path made absolute, a
    URL as it is."""
    if store_kind(where) == "sqlite":
        return os.path.abspath(_sqlite_path(where))
    return str(where)


def redact(where: str) -> str:
    """``where`` fit for a message or a log: a URL's password replaced by ``***``."""
    text = str(where)
    parts = urllib.parse.urlsplit(text) if "://" in text else None
    if parts is None or parts.password is None:
        return text
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _sqlite_path(where: str) -> str:
    text = str(where)
    return text[len("sqlite://") :] if text.startswith("sqlite:///") else text


class EventStore:
    """The event store at ``where``: a SQLite file (created if missing), a PostgreSQL database
    (``postgresql://user@host/db``; the schema is created if missing) or ``memory:``.

    ``synchronous="FULL"`` (default) makes every commit durable before it is acknowledged; on
    SQLite ``"NORMAL"`` fsyncs only at WAL checkpoints (it survives a crash of the process but may
    lose the last commits on a power cut), on PostgreSQL it sets ``synchronous_commit = off``.
    ``shared_flush=True`` (SQLite, many appending processes, as on multiproc) keeps ``FULL``'s
    promise with flushes made outside the write lock and shared between processes.
    ``recorder=`` gives a recorder built elsewhere instead.
    """

    def __init__(
        self,
        where: str = "",
        synchronous: str = "FULL",
        busy_timeout: float = 10.0,
        page_size: int = 1000,
        validate: bool = True,
        shared_flush: bool = False,
        recorder: Recorder | None = None,
    ) -> None:
        self.page_size = page_size
        self.validate = validate
        if recorder is None:
            recorder = _open_recorder(str(where), synchronous, busy_timeout, shared_flush)
        self.recorder = recorder
        self.path = self.location = recorder.location
        #: What other processes open to reach this store (``where`` as given: a PostgreSQL URL
        #: keeps its password here, never in ``location``).
        self.where = str(where) if where else recorder.location
        self.kind = type(recorder).__name__.removesuffix("Recorder").lower()

    @property
    def conn(self) -> Any:
        """The SQLite connection (SQLite stores only): for tests and tools that read the file."""
        return self.recorder.conn  # type: ignore[attr-defined]

    @property
    def db(self) -> Any:
        """The ``sqlite_utils.Database`` on the file (SQLite stores only)."""
        return self.recorder.db  # type: ignore[attr-defined]

    def close(self) -> None:
        self.recorder.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self, flush: bool = True) -> Iterator[EventStore]:
        """A write transaction: commit on success, roll back on error; nested use joins it.

        ``flush=False`` (SQLite with ``shared_flush``) leaves the commit's flush to disk to a
        later :meth:`flush`, made once the caller let go of its own locks."""
        with self.recorder.transaction(flush):
            yield self

    def flush(self) -> None:
        self.recorder.flush()

    def snapshot(self) -> AbstractContextManager[None]:
        """``with store.snapshot():`` this thread's reads see one state of the store, whatever
        other writers commit meanwhile (a read transaction: on SQLite and PostgreSQL they are
        not held up; a store in memory makes them wait)."""
        return self.recorder.snapshot()

    # -- projections ------------------------------------------------------------------------

    @property
    def handle(self) -> Any:
        """What projections and handlers write their own tables through: the
        ``sqlite_utils.Database`` of a SQLite store (or of an SQLite database in memory beside a
        ``memory:`` store), a :class:`~backstage_actors.store.postgres.PostgresHandle` on
        PostgreSQL. Writes made in :meth:`transaction` commit with it."""
        return self.recorder.handle

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside :meth:`transaction`: undo only what the block wrote if it raises."""
        with self.recorder.savepoint():
            yield

    def drop_tables(self, tables: Sequence[str]) -> None:
        """Drop a projection's tables, if they exist (a rebuild)."""
        self.recorder.drop_tables(tables)

    # -- appending --------------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        events: Sequence[Any],
        expected_version: ExpectedVersion | int = ANY,
        metadata: Mapping[str, Any] | None = None,
        event_ids: Sequence[str] | None = None,
    ) -> list[RecordedEvent]:
        """Append ``events`` to ``stream_id`` atomically and return them as recorded.

        ``expected_version`` is ``ANY``, ``NO_STREAM``, ``STREAM_EXISTS`` or the version the
        stream must be at. Appending again with the same ``event_ids`` after an uncertain outcome
        returns the events stored the first time instead of storing them twice.
        """
        request = AppendRequest(stream_id, list(events), expected_version, metadata, event_ids)
        [result] = self.append_batches([request])
        if isinstance(result, BaseException):
            raise result
        return result

    def append_batches(
        self, requests: Sequence[AppendRequest]
    ) -> list[list[RecordedEvent] | BackstageError]:
        """Group commit: every request in one transaction, each with its own outcome.

        A request that fails (wrong version, unserializable event, an event id stored elsewhere)
        writes nothing and its slot holds the error; so does a later request to the same stream
        that names an exact version, since it counted on the failed one. The others are
        committed together.
        """
        prepared, results = ap.prepare(requests, self.validate)
        if all(p is None for p in prepared):
            return results
        recorded_at = datetime.now(UTC)
        self.recorder.write(prepared, results, recorded_at, recorded_at.isoformat())
        return results

    # -- reading ----------------------------------------------------------------------------

    def stream_version(self, stream_id: str) -> int:
        """The stream's version: 0 for a stream that was never written."""
        return self.recorder.stream_version(stream_id)

    def last_position(self) -> int:
        return self.recorder.last_position()

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
        backward: bool = False,
        on_unreadable: Callable[[StoredEventError], None] | None = None,
    ) -> Iterator[RecordedEvent]:
        """Events of ``stream_id`` with ``from_version <= version <= to_version``, paged.

        Backward reads go from the highest version in that range down, so
        ``read_stream(s, backward=True, limit=1)`` is the stream's last event. An unreadable
        event raises :class:`StoredEventError`, or with ``on_unreadable`` is passed to it and
        skipped (tools that show what they can).
        """
        if limit is not None and limit <= 0:
            return
        low, high = max(1, from_version), to_version if to_version is not None else 2**62
        remaining = limit
        while low <= high:
            page = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self.recorder.stream_page(stream_id, low, high, page, backward)
            for row in rows:
                yield from _decoded(row, on_unreadable)
            if len(rows) < page:
                return
            if remaining is not None:
                remaining -= len(rows)
                if remaining <= 0:
                    return
            if backward:
                high = rows[-1][3] - 1
            else:
                low = rows[-1][3] + 1

    def read_all(
        self,
        from_position: int = 1,
        limit: int | None = None,
        on_unreadable: Callable[[StoredEventError], None] | None = None,
    ) -> Iterator[RecordedEvent]:
        """Every event from ``from_position`` on, in commit order, paged (``on_unreadable``: as
        for :meth:`read_stream`)."""
        if limit is not None and limit <= 0:
            return
        position, remaining = from_position, limit
        while True:
            page = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self.recorder.events_page(position, page)
            for row in rows:
                yield from _decoded(row, on_unreadable)
            if len(rows) < page:
                return
            position = rows[-1][0] + 1
            if remaining is not None:
                remaining -= len(rows)
                if remaining <= 0:
                    return

    def wait_for_events(self, after_position: int, timeout: float) -> bool:
        """Block until an event past ``after_position`` is stored, at most ``timeout`` seconds;
        True if there is one. PostgreSQL wakes the caller by LISTEN/NOTIFY (an append on any
        host); the other stores look every 10 ms."""
        wait = getattr(self.recorder, "wait", None)
        if wait is not None:
            return bool(wait(after_position, timeout))
        deadline = time.monotonic() + timeout
        while self.recorder.last_position() <= after_position:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def read_page(self, from_position: int, limit: int) -> list[tuple[Any, ...]]:
        """Raw rows from ``from_position`` on (decode each with :meth:`decode_row`): subscribers
        decode row by row so that one unreadable event is dealt with on its own."""
        return self.recorder.events_page(from_position, limit)

    def stream_events(self, stream_id: str, after_version: int = 0) -> Iterator[tuple[int, Any]]:
        """``(version, event)`` of a stream after ``after_version``, paged: the rebuild fast path."""
        low = after_version + 1
        while True:
            rows = self.recorder.payload_page(stream_id, low, self.page_size)
            for version, type_name, schema_version, topic, data, position in rows:
                yield version, decode_event(type_name, schema_version, topic, data, position)
            if len(rows) < self.page_size:
                return
            low = rows[-1][0] + 1

    def event_version(self, event_id: str, stream_id: str) -> int | None:
        """The version at which ``stream_id`` holds the event ``event_id``, if it does."""
        return self.recorder.event_version(event_id, stream_id)

    def decode_row(self, row: tuple[Any, ...]) -> RecordedEvent:
        """A raw ``events`` row as a RecordedEvent; :class:`StoredEventError` if it is unreadable."""
        return ap.decode_row(row)

    def event_at(self, position: int) -> RecordedEvent | None:
        row = self.recorder.event_row(position)
        return ap.decode_row(row) if row else None

    def truncate_stream(self, stream_id: str, before_version: int) -> int:
        """Delete the stream's events below ``before_version``; its version stays. Returns the count."""
        return self.recorder.truncate_stream(stream_id, before_version)

    # -- snapshots --------------------------------------------------------------------------

    def save_snapshot(
        self, stream_id: str, version: int, state: Any, schema_version: int = 1, type: str = ""
    ) -> None:
        """Store the latest snapshot of ``stream_id`` (replacing an older one) and keep it in the
        stream's snapshot history (:meth:`load_snapshot_at`)."""
        text = ser.dumps(state, f"snapshot of {stream_id}")
        self.recorder.save_snapshot(stream_id, version, schema_version, type, text, _now())

    def load_snapshot(self, stream_id: str, schema_version: int | None = None) -> Snapshot | None:
        """The latest snapshot, or None (also when it was taken with another ``schema_version``)."""
        row = self.recorder.snapshot_row(stream_id)
        if row is None or (schema_version is not None and row[1] != schema_version):
            return None
        return _snapshot(stream_id, row)

    def load_snapshot_at(
        self, stream_id: str, version: int, schema_version: int | None = None
    ) -> Snapshot | None:
        """The latest snapshot of ``stream_id`` at or before ``version`` in the stream's
        snapshot history (of ``schema_version`` when given: one taken with another is passed
        over), or None. What rebuilding a past state starts from (``history.state_of``)."""
        row = self.recorder.snapshot_row_at(stream_id, version, schema_version)
        return None if row is None else _snapshot(stream_id, row)

    # -- history ----------------------------------------------------------------------------

    def record_rejection(
        self, stream_id: str, metadata: Mapping[str, Any], error: BaseException
    ) -> None:
        """Keep a command of ``stream_id`` that was refused or failed with ``error``
        (``metadata``: the command's, with its command, correlation and causation ids), so that
        ``backstage trace`` shows it beside the events of its request."""
        command_id = str(metadata.get("command_id", ""))
        self.recorder.record_rejection(
            Rejection(
                0,
                command_id,
                str(metadata.get("correlation_id") or command_id),
                str(metadata.get("causation_id") or command_id),
                stream_id,
                str(metadata.get("command", "")),
                type(error).__name__,
                _storable(error_text(error)),
                json.dumps(dict(metadata), default=str),
                _now(),
            )
        )

    # -- checkpoints, dead letters, process managers ----------------------------------------

    def checkpoint(self, name: str) -> int:
        """The last position ``name`` processed (0 if none)."""
        return self.recorder.checkpoint(name)

    def has_checkpoint(self, name: str) -> bool:
        """Whether ``name`` saved a checkpoint (0 saved is not the same as none)."""
        return self.recorder.has_checkpoint(name)

    def save_checkpoint(self, name: str, position: int) -> None:
        self.recorder.save_checkpoint(name, position, _now())

    def move_checkpoint(self, name: str, position: int, expected: int) -> bool:
        """Move ``name``'s checkpoint from ``expected`` (none counts as 0) to ``position``;
        False, and nothing changed, if it is elsewhere (someone else moved it)."""
        return self.recorder.move_checkpoint(name, position, expected, _now())

    def delete_checkpoint(self, name: str) -> None:
        self.recorder.delete_checkpoint(name)

    def park(
        self,
        subscriber: str,
        event: RecordedEvent,
        error_type: str,
        error: str,
        traceback: str,
        failures: int,
        status: str = "parked",
    ) -> None:
        """Record that ``subscriber`` gave up on ``event`` (a dead letter)."""
        self.recorder.park(
            DeadLetter(
                0,
                subscriber,
                event.position,
                event.event_id,
                event.stream_id,
                event.version,
                event.type,
                error_type,
                _storable(error),
                _storable(traceback),
                failures,
                status,
                _now(),
            )
        )

    def dead_letters(
        self, subscriber: str | None = None, status: str | None = "parked"
    ) -> list[DeadLetter]:
        return self.recorder.dead_letters(subscriber, status)

    def set_dead_letter_status(self, letter_id: int, status: str) -> None:
        self.recorder.set_dead_letter_status(letter_id, status)

    def load_process(self, name: str, process_id: str) -> dict[str, Any] | None:
        text = self.recorder.process_state(name, process_id)
        return None if text is None else dict(json.loads(text))

    def save_process(self, name: str, process_id: str, state: dict[str, Any] | str | None) -> None:
        """Save an instance's state (None deletes it: the process stopped). A ``str`` is the
        state already encoded as JSON (by ``_serialization.dumps``, as a process manager does
        once per step to check it)."""
        text = (
            state if state is None or isinstance(state, str) else ser.dumps(state, f"{name} state")
        )
        self.recorder.save_process(name, process_id, text, _now())


def _open_recorder(where: str, synchronous: str, busy_timeout: float, shared: bool) -> Recorder:
    kind = store_kind(where)
    if kind == "postgres":
        from .postgres import PostgresRecorder  # (lazy: psycopg is the optional extra `postgres`)

        return PostgresRecorder(where, synchronous=synchronous, lock_timeout=busy_timeout)
    if kind == "memory":
        return MemoryRecorder(where)
    return SQLiteRecorder(_sqlite_path(where), synchronous, busy_timeout, shared)


def _storable(text: str) -> str:
    """Free text of the framework's own (an error message, a traceback) as every store holds
    it: a NUL (PostgreSQL's text refuses it) and lone surrogates (not UTF-8) escaped."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _decoded(
    row: tuple[Any, ...], on_unreadable: Callable[[StoredEventError], None] | None
) -> Iterator[RecordedEvent]:
    """The row's event; an unreadable one raises, or goes to ``on_unreadable`` and is skipped."""
    if on_unreadable is None:
        yield ap.decode_row(row)
        return
    try:
        event = ap.decode_row(row)
    except StoredEventError as exc:
        on_unreadable(exc)
        return
    yield event


def _snapshot(stream_id: str, row: tuple[int, int, str, str, str]) -> Snapshot | None:
    try:
        state = json.loads(row[3])
    except ValueError:
        return None  # a broken snapshot is only a lost shortcut: rebuild from the events
    return Snapshot(stream_id, row[0], row[1], row[2], state, _datetime(row[4]))
