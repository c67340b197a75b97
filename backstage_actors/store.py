"""The event store: an append-only log of events in one SQLite file, through sqlite-utils.

Appends take the write lock first (``BEGIN IMMEDIATE``), check the stream's version, insert, and
commit; several appends can share one transaction and one fsync (:meth:`EventStore.append_batches`,
the group commit the store actor uses), each keeping its own outcome. Reads are paged generators:
a stream of a million events is never in memory at once.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import attrs

from . import _serialization as ser
from ._bookkeeping import Bookkeeping, DeadLetter, Snapshot
from ._codec import decode_event, encode_event
from ._durability import Turns, WalSync
from ._ids import event_id, new_id
from ._schema import open_database
from .errors import BackstageError, StorageError, StoredEventError, WrongExpectedVersion
from .limits import check_request, unstorable

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


class ExpectedVersion(enum.Enum):
    ANY = "any"
    NO_STREAM = "no stream"
    STREAM_EXISTS = "stream exists"


ANY = ExpectedVersion.ANY
NO_STREAM = ExpectedVersion.NO_STREAM
STREAM_EXISTS = ExpectedVersion.STREAM_EXISTS


@attrs.frozen
class RecordedEvent:
    """An event as stored: ``data`` is the event object (upcast and structured)."""

    event_id: str
    stream_id: str
    version: int
    position: int
    type: str
    data: Any
    metadata: dict[str, Any]
    recorded_at: datetime


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


_SCALARS = (str, int, bool, type(None))
# The same for many streams at once (a JSON array of stream ids).
_VERSIONS = (
    "SELECT ids.value,"
    " (SELECT max(version) FROM events WHERE stream_id = ids.value),"
    " (SELECT version FROM streams WHERE stream_id = ids.value)"
    " FROM json_each(?) AS ids"
)
_COLUMNS = "position, event_id, stream_id, version, type, schema_version, topic, data, metadata, recorded_at"
_INSERT = (
    "INSERT INTO events (event_id, stream_id, version, type, schema_version, topic, data, metadata,"
    " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A stream's version is its last event's, found in the (stream_id, version) index; the streams
# table keeps it only for a stream whose events were truncated (``truncate_stream``).
_VERSION = (
    "SELECT (SELECT max(version) FROM events WHERE stream_id = ?1),"
    " (SELECT version FROM streams WHERE stream_id = ?1)"
)


# What fails one append alone (a value the driver cannot store, say); anything else (a read-only
# or full database) fails the whole group commit as a StorageError.
_APPEND_ERRORS = (
    BackstageError,
    ValueError,
    OverflowError,
    TypeError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
)

# What append_batches works with: each request with its encoded events (None: refused before
# writing), and each request's outcome.
_Prepared = list[tuple[AppendRequest, list[Any]] | None]
_Results = list[list[RecordedEvent] | BackstageError]
_Failed = dict[str, int]  # stream id -> the version a failed append of the batch was to reach


class EventStore(Bookkeeping):
    """The event store on ``path`` (created if missing).

    ``synchronous="FULL"`` (default) fsyncs every commit: an acknowledged event survives a power
    cut. ``"NORMAL"`` fsyncs only at WAL checkpoints: it survives a crash of the process but may
    lose the last commits on a power cut, for several times the single-append throughput.
    ``shared_flush=True`` (for many appending processes, as on multiproc) keeps ``FULL``'s
    promise with flushes made outside the write lock and shared between processes
    (``_durability``).
    """

    def __init__(
        self,
        path: str,
        synchronous: str = "FULL",
        busy_timeout: float = 10.0,
        page_size: int = 1000,
        validate: bool = True,
        shared_flush: bool = False,
    ) -> None:
        self.path = str(path)
        self.page_size = page_size
        self.validate = validate
        own_flush = shared_flush and synchronous.upper() == "FULL" and self.path != ":memory:"
        try:
            self.db = open_database(self.path, "NORMAL" if own_flush else synchronous, busy_timeout)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the event store {self.path!r}: {exc}") from None
        self.conn = self.db.conn
        self._turns = Turns(self.path)
        self._wal = WalSync(self.path) if own_flush else None
        self._unflushed = False

    def close(self) -> None:
        self.conn.close()
        self._turns.close()
        if self._wal is not None:
            self._wal.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def transaction(self, flush: bool = True) -> Iterator[EventStore]:
        """A write transaction (``BEGIN IMMEDIATE``): commit on success, roll back on error.

        Nested use joins the outer transaction. The write lock is taken up front, so a busy
        database is waited for (``busy_timeout``) instead of failing halfway through.
        ``flush=False`` leaves the commit's flush to disk to a later :meth:`flush`, made once
        the caller let go of its own locks (with ``shared_flush``; SQLite flushes otherwise).
        """
        if self.conn.in_transaction:
            yield self
            return
        self._begin()
        try:
            yield self
        except BaseException:
            self._rollback()
            raise
        self._commit()
        if flush:
            self.flush()

    def _commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StorageError(f"cannot commit to {self.path!r}: {exc}") from None
        self._unflushed = self._wal is not None

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def flush(self, commit: int = 0) -> None:
        """Make the commits so far durable; ``commit`` is the number :class:`Turns` gave the
        last one, if any (an earlier flush of another process may have covered it)."""
        if not self._unflushed or self._wal is None:
            return
        self._unflushed = False
        try:
            if commit:
                self._turns.flush(commit, self._wal)
            else:
                self._wal()
        except OSError as exc:
            raise StorageError(f"cannot flush {self.path!r} to disk: {exc}") from None

    def _begin_turn(self) -> None:
        try:
            self._turns.begin_turn()
        except OSError as exc:
            raise StorageError(f"cannot open the lock file beside {self.path!r}: {exc}") from None

    def _begin(self) -> None:
        for attempt in range(5):
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or attempt == 4:
                    raise StorageError(f"cannot write to {self.path!r}: {exc}") from None
                time.sleep(0.05 * (attempt + 1))

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
        results: _Results = []
        prepared: _Prepared = []
        failed: _Failed = {}
        for request in requests:
            if _counted_on(failed, request):
                prepared.append(None)
                results.append(_after_failure(failed, request))
                continue
            try:
                _check_expected(request.expected_version)
                check_request(request.stream_id, request.metadata)
                prepared.append((request, [encode_event(e, self.validate) for e in request.events]))
                results.append([])
            except BackstageError as exc:
                prepared.append(None)
                results.append(exc)
                _note_failure(failed, request)
        if all(p is None for p in prepared):
            return results
        recorded_at = datetime.now(UTC)
        stamp = recorded_at.isoformat()
        try:
            self._write_batches(prepared, results, recorded_at, stamp)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot append to {self.path!r}: {exc}") from None
        return results

    def _write_batches(
        self,
        prepared: _Prepared,
        results: _Results,
        recorded_at: datetime,
        stamp: str,
    ) -> None:
        # Written in full rather than with the context managers: this runs for every command.
        commit = 0
        self._begin_turn()
        try:
            committing = not self.conn.in_transaction
            if committing:
                self._begin()
            try:
                self._write_each(prepared, results, recorded_at, stamp)
            except BaseException:
                if committing:
                    self._rollback()
                raise
            if committing:
                self._commit()
                if self._unflushed:
                    commit = self._turns.committed()
        finally:
            self._turns.end_turn()
        # Flushed once the turn is over: other processes commit while this one waits on the disk.
        self.flush(commit)

    def _write_each(
        self,
        prepared: _Prepared,
        results: _Results,
        recorded_at: datetime,
        stamp: str,
    ) -> None:
        live = [(index, item) for index, item in enumerate(prepared) if item is not None]
        if len(live) > 1 and self._write_together(live, results, recorded_at, stamp):
            return
        failed: _Failed = {}
        for index, (request, encoded) in live:
            if _counted_on(failed, request):
                results[index] = _after_failure(failed, request)
                continue
            if len(encoded) == 1:
                # One event: its INSERT is the append's only write, and SQLite undoes a
                # statement that fails; the version check comes before it. No savepoint needed.
                try:
                    results[index] = self._append_one(request, encoded, recorded_at, stamp, False)
                except _APPEND_ERRORS as exc:  # this append alone fails
                    results[index] = unstorable(request.stream_id, exc)
                    _note_failure(failed, request)
                else:
                    _note_repeat(failed, request, results[index])
                continue
            # Several events: a savepoint of their own, so that a failing append is undone alone.
            self.conn.execute("SAVEPOINT append")
            try:
                results[index] = self._append_one(request, encoded, recorded_at, stamp)
            except _APPEND_ERRORS as exc:  # this append alone fails
                results[index] = unstorable(request.stream_id, exc)
                _note_failure(failed, request)
                self.conn.execute("ROLLBACK TO append")
            else:
                _note_repeat(failed, request, results[index])
            self.conn.execute("RELEASE append")

    def _write_together(
        self,
        live: list[tuple[int, tuple[AppendRequest, list[Any]]]],
        results: _Results,
        recorded_at: datetime,
        stamp: str,
    ) -> bool:
        """A group commit's appends in three statements: every stream's version in one query,
        every row in one ``executemany``. Returns False, having written nothing, when an append
        needs the careful way (one at a time): a version that does not match for an append that
        names its event ids (it may be a repeat), or an event id that is already stored."""
        versions = self._versions([request.stream_id for _, (request, _) in live])
        rows: list[tuple[Any, ...]] = []
        planned: list[tuple[int, str, list[Any], list[str], int, dict[str, Any]]] = []
        failed: _Failed = {}
        for index, (request, encoded) in live:
            stream_id = request.stream_id
            if _counted_on(failed, request):
                results[index] = _after_failure(failed, request)
                continue
            exists, current = versions.get(stream_id, (False, 0))
            if not _version_matches(request.expected_version, exists, current):
                if request.event_ids:
                    return False
                results[index] = WrongExpectedVersion(stream_id, request.expected_version, current)
                _note_failure(failed, request)
                continue
            if not encoded:
                results[index] = []
                continue
            ids = _event_ids(request, len(encoded))
            try:
                metadata, meta_text = _metadata(request)
            except BackstageError as exc:
                results[index] = exc
                _note_failure(failed, request)
                continue
            rows.extend(_rows(ids, stream_id, current, encoded, meta_text, stamp))
            planned.append((index, stream_id, encoded, ids, current, metadata))
            versions[stream_id] = (True, current + len(encoded))
        if rows:
            self.conn.execute("SAVEPOINT together")
            try:
                self.conn.executemany(_INSERT, rows)
            except (sqlite3.IntegrityError, ValueError, OverflowError, TypeError):  # one at a time
                self.conn.execute("ROLLBACK TO together")
                return False
            finally:
                self.conn.execute("RELEASE together")
            position = self.conn.execute("SELECT last_insert_rowid()").fetchone()[0] - len(rows)
            for index, stream_id, encoded, ids, current, metadata in planned:
                results[index] = _recorded(
                    ids, stream_id, current, position + 1, encoded, metadata, recorded_at
                )
                position += len(encoded)
        return True

    def _versions(self, stream_ids: list[str]) -> dict[str, tuple[bool, int]]:
        """``(exists, version)`` of each of ``stream_ids``, in one query."""
        rows = self.conn.execute(_VERSIONS, (json.dumps(list(dict.fromkeys(stream_ids))),))
        return {stream_id: _stream_state(last_event, kept) for stream_id, last_event, kept in rows}

    def _append_one(
        self,
        request: AppendRequest,
        encoded: list[Any],
        recorded_at: datetime,
        stamp: str,
        savepoint: bool = True,
    ) -> list[RecordedEvent]:
        stream_id = request.stream_id
        exists, current = _stream_state(*self.conn.execute(_VERSION, (stream_id,)).fetchone())
        expected = request.expected_version
        if not _version_matches(expected, exists, current):
            if request.event_ids:
                existing = self._already_stored(stream_id, request.event_ids)
                if existing is not None:
                    return existing
            raise WrongExpectedVersion(stream_id, expected, current)
        if not encoded:
            return []
        ids = _event_ids(request, len(encoded))
        metadata, meta_text = _metadata(request)
        rows = _rows(ids, stream_id, current, encoded, meta_text, stamp)
        try:
            if len(rows) == 1:
                last = int(self.conn.execute(_INSERT, rows[0]).lastrowid or 0)
            else:
                self.conn.executemany(_INSERT, rows)
                last = self.conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        except sqlite3.IntegrityError:
            # Undo this append's rows before looking: they must not pass for an earlier attempt.
            if savepoint:
                self.conn.execute("ROLLBACK TO append")
            existing = self._already_stored(stream_id, ids) if request.event_ids else None
            if existing is not None:
                return existing
            raise BackstageError(
                f"stream {stream_id!r}: an event id of this append is already stored elsewhere"
            ) from None
        return _recorded(
            ids, stream_id, current, last - len(rows) + 1, encoded, metadata, recorded_at
        )

    def _already_stored(
        self, stream_id: str, event_ids: Sequence[str]
    ) -> list[RecordedEvent] | None:
        marks = ",".join("?" * len(event_ids))
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE event_id IN ({marks}) ORDER BY position",
            list(event_ids),
        ).fetchall()
        if len(rows) == len(event_ids) and all(r[2] == stream_id for r in rows):
            return [self.decode_row(r) for r in rows]
        return None

    # -- reading ----------------------------------------------------------------------------

    def stream_version(self, stream_id: str) -> int:
        """The stream's version: 0 for a stream that was never written."""
        return _stream_state(*self.conn.execute(_VERSION, (stream_id,)).fetchone())[1]

    def last_position(self) -> int:
        row = self.conn.execute("SELECT max(position) FROM events").fetchone()
        return int(row[0] or 0)

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
        order = "DESC" if backward else "ASC"
        while low <= high:
            page = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE stream_id = ? AND version BETWEEN ? AND ?"
                f" ORDER BY version {order} LIMIT ?",
                (stream_id, low, high, page),
            ).fetchall()
            for row in rows:
                yield from self._decoded(row, on_unreadable)
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
        for row in self._rows_from(from_position, limit):
            yield from self._decoded(row, on_unreadable)

    def _decoded(
        self, row: tuple[Any, ...], on_unreadable: Callable[[StoredEventError], None] | None
    ) -> Iterator[RecordedEvent]:
        if on_unreadable is None:
            yield self.decode_row(row)
            return
        try:
            event = self.decode_row(row)
        except StoredEventError as exc:
            on_unreadable(exc)
            return
        yield event

    def read_page(self, from_position: int, limit: int) -> list[tuple[Any, ...]]:
        """Raw rows from ``from_position`` on (decode each with :meth:`decode_row`): subscribers
        decode row by row so that one unreadable event is dealt with on its own."""
        return self.conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE position >= ? ORDER BY position LIMIT ?",
            (from_position, limit),
        ).fetchall()

    def _rows_from(self, from_position: int, limit: int | None) -> Iterator[tuple[Any, ...]]:
        if limit is not None and limit <= 0:
            return
        position, remaining = from_position, limit
        while True:
            page = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE position >= ? ORDER BY position LIMIT ?",
                (position, page),
            ).fetchall()
            yield from rows
            if len(rows) < page:
                return
            position = rows[-1][0] + 1
            if remaining is not None:
                remaining -= len(rows)
                if remaining <= 0:
                    return

    def stream_events(self, stream_id: str, after_version: int = 0) -> Iterator[tuple[int, Any]]:
        """``(version, event)`` of a stream after ``after_version``, paged: the rebuild fast path."""
        low = after_version + 1
        while True:
            rows = self.conn.execute(
                "SELECT version, type, schema_version, topic, data, position FROM events"
                " WHERE stream_id = ? AND version >= ? ORDER BY version LIMIT ?",
                (stream_id, low, self.page_size),
            ).fetchall()
            for version, type_name, schema_version, topic, data, position in rows:
                yield version, decode_event(type_name, schema_version, topic, data, position)
            if len(rows) < self.page_size:
                return
            low = rows[-1][0] + 1

    def decode_row(self, row: tuple[Any, ...]) -> RecordedEvent:
        """A raw ``events`` row as a RecordedEvent; :class:`StoredEventError` if it is unreadable."""
        position, event_id, stream_id, version, type_name, schema_version, topic, data, meta, at = (
            row
        )
        event = decode_event(type_name, schema_version, topic, data, position)
        try:
            metadata = json.loads(meta)
        except ValueError as exc:
            raise StoredEventError(
                f"event at position {position}: its JSON metadata is broken: {exc}", position
            ) from None
        return RecordedEvent(
            event_id,
            stream_id,
            version,
            position,
            type_name,
            event,
            metadata,
            datetime.fromisoformat(at),
        )

    # -- truncation -------------------------------------------------------------------------

    def truncate_stream(self, stream_id: str, before_version: int) -> int:
        """Delete the stream's events below ``before_version``; its version stays. Returns the count."""
        with self.transaction():
            version = self.stream_version(stream_id)
            deleted = self.conn.execute(
                "DELETE FROM events WHERE stream_id = ? AND version < ?",
                (stream_id, before_version),
            ).rowcount
            if version:  # the version must outlive the events
                self.conn.execute(
                    "INSERT INTO streams (stream_id, version, truncated_before) VALUES (?, ?, ?)"
                    " ON CONFLICT (stream_id) DO UPDATE SET version = max(version, excluded.version),"
                    " truncated_before = max(truncated_before, excluded.truncated_before)",
                    (stream_id, version, before_version),
                )
        return int(deleted)

    def event_at(self, position: int) -> RecordedEvent | None:
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE position = ?", (position,)
        ).fetchone()
        return self.decode_row(row) if row else None


def _stream_state(last_event: int | None, kept: int | None) -> tuple[bool, int]:
    """``(exists, version)`` of a stream from its last event's version and its streams row."""
    return (last_event is not None or kept is not None), max(last_event or 0, kept or 0)


def _event_ids(request: AppendRequest, count: int) -> list[str]:
    """The ids the caller gave, or new ones (derived from one time-ordered id)."""
    ids = list(request.event_ids or [])
    if len(ids) != count:
        base = new_id()
        ids = [event_id(base, i) for i in range(count)]
    return ids


def _metadata(request: AppendRequest) -> tuple[dict[str, Any], str]:
    """The metadata readers will get back, and its JSON."""
    metadata = dict(request.metadata or {})
    if not metadata:
        return metadata, "{}"
    if all(type(k) is str and type(v) in _SCALARS for k, v in metadata.items()):
        return metadata, ser.dumps(metadata, "metadata")  # JSON gives back the same values
    text = ser.dumps(ser.unstructure(metadata), "metadata")  # UUIDs, datetimes... as strings
    return json.loads(text), text


def _rows(
    ids: list[str], stream_id: str, current: int, encoded: list[Any], meta_text: str, stamp: str
) -> list[tuple[Any, ...]]:
    return [
        (
            ids[i],
            stream_id,
            current + i + 1,
            enc.type,
            enc.schema_version,
            enc.topic,
            enc.data,
            meta_text,
            stamp,
        )
        for i, enc in enumerate(encoded)
    ]


def _recorded(
    ids: list[str],
    stream_id: str,
    current: int,
    first_position: int,
    encoded: list[Any],
    metadata: dict[str, Any],
    recorded_at: datetime,
) -> list[RecordedEvent]:
    return [
        RecordedEvent(
            ids[i],
            stream_id,
            current + i + 1,
            first_position + i,
            enc.type,
            enc.event,
            metadata,
            recorded_at,
        )
        for i, enc in enumerate(encoded)
    ]


def _check_expected(expected: Any) -> None:
    if isinstance(expected, ExpectedVersion):
        return
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
        raise BackstageError(
            f"expected_version must be ANY, NO_STREAM, STREAM_EXISTS or a version >= 0, "
            f"not {expected!r}"
        )


def _note_repeat(failed: _Failed, request: AppendRequest, result: Any) -> None:
    """An append answered with events stored by an earlier attempt at other versions stored
    nothing now: what was decided after it, on its state, must not be stored either."""
    if request.answered_elsewhere(result):
        _note_failure(failed, request)


def _note_failure(failed: _Failed, request: AppendRequest) -> None:
    """Remember the version a failed append would have left its stream at (when it says)."""
    expected = request.expected_version
    if not request.events:  # a look-up: it was to leave the stream where it was
        return
    if isinstance(expected, int):
        failed[request.stream_id] = expected + len(request.events)
    elif expected is NO_STREAM:
        failed[request.stream_id] = len(request.events)


def _counted_on(failed: _Failed, request: AppendRequest) -> bool:
    """Whether ``request`` expects the version an earlier failed append of the same batch would
    have left: its writer decided on a state that is not stored, so it must fail too (even if
    another writer's events happen to bring the stream to that version)."""
    expected = request.expected_version
    return isinstance(expected, int) and failed.get(request.stream_id) == expected


def _after_failure(failed: _Failed, request: AppendRequest) -> WrongExpectedVersion:
    _note_failure(failed, request)
    return WrongExpectedVersion.refusal(
        request.stream_id,
        request.expected_version,
        "counting on an earlier append of the same batch, which failed",
    )


def _version_matches(expected: ExpectedVersion | int, exists: bool, current: int) -> bool:
    if expected is ANY:
        return True
    if expected is NO_STREAM:
        return not exists
    if expected is STREAM_EXISTS:
        return exists
    return expected == current
