"""The SQLite recorder: the events in one SQLite file, through sqlite-utils.

Appends take the write lock first (``BEGIN IMMEDIATE``), check the stream's version, insert, and
commit; several appends can share one transaction and one fsync (the group commit the store actor
uses), each keeping its own outcome. Positions are SQLite's AUTOINCREMENT rowids: one writer at a
time, so a position is never handed out to a transaction that commits after a later one.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from ..errors import BackstageError, StorageError, StoredEventError, WrongExpectedVersion
from ..limits import unstorable
from . import _appending as ap
from ._appending import COLUMNS as _COLUMNS
from ._appending import Failed as _Failed
from ._appending import Prepared as _Prepared
from ._appending import Results as _Results
from ._appending import Row, UnreadablePage, UnreadableRow
from ._durability import Turns, WalSync
from ._sql_bookkeeping import SQLITE, SQLBookkeeping
from ._sqlite_schema import ensure_history_schema, open_database
from .recorder import KEYS, TABLES, Recorder
from .records import AppendRequest, RecordedEvent

__all__ = ["SQLiteRecorder"]

# The same for many streams at once (a JSON array of stream ids).
_VERSIONS = (
    "SELECT ids.value,"
    " (SELECT max(version) FROM events WHERE stream_id = ids.value),"
    " (SELECT version FROM streams WHERE stream_id = ids.value)"
    " FROM json_each(?) AS ids"
)
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


def _sync(wal: WalSync) -> bool:
    wal()
    return True


#: A commit number past any: a flush asked for it covers every commit written so far.
_EVERY_COMMIT = 2**63 - 1

# Stored text that is not UTF-8 (SQLite keeps any bytes another program writes as TEXT) fails a
# whole fetch with this OperationalError, naming no row. Only then are the rows read again as
# bytes (:func:`_checked`), to name each such row and column: a healthy read costs nothing more.
_NOT_UTF8 = "Could not decode to UTF-8"
_FROM = re.compile(r"\bFROM (\w+)")
_NAMED = 10  # unreadable rows named in the error of one page; the others are counted


class SQLiteRecorder(SQLBookkeeping, Recorder):
    """The store in the SQLite file ``path`` (created if missing).

    ``synchronous="FULL"`` (default) fsyncs every commit: an acknowledged event survives a power
    cut. ``"NORMAL"`` fsyncs only at WAL checkpoints: it survives a crash of the process but may
    lose the last commits on a power cut, for several times the single-append throughput.
    ``shared_flush=True`` (for many appending processes, as on multiproc) keeps ``FULL``'s
    promise with flushes made outside the write lock and shared between processes
    (``_durability``).
    """

    sql = SQLITE
    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        synchronous: str = "FULL",
        busy_timeout: float = 10.0,
        shared_flush: bool = False,
    ) -> None:
        self.path = self.location = str(path)
        own_flush = shared_flush and synchronous.upper() == "FULL" and self.path != ":memory:"
        try:
            self.db = open_database(self.path, "NORMAL" if own_flush else synchronous, busy_timeout)
            ensure_history_schema(self.db.conn)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the event store {self.path!r}: {exc}") from None
        self.conn = self.db.conn
        self._turns = Turns(self.path)
        self._wal = WalSync(self.path) if own_flush else None
        self._unflushed = False
        # Set by an in-process shard (see _writer): an append's commit is flushed later, by
        # the caller waiting for it, outside the lock other callers wait on (flush_through).
        self.defer_flush = False
        self.deferred = 0  # the number of the last commit left to flush_through
        self.flushes = 0  # fdatasyncs this connection made (shared flushes skipped count none)
        # flush_through: one thread flushes at a time; the others wait for its end, not for
        # their turn at the lock, and return at once if that flush covered their commit.
        self._flush_ended = threading.Condition(threading.Lock())
        self._flush_running = False
        self._closed = False
        # A failed fdatasync may have dropped pages the kernel then forgets about, and the next
        # one succeeds: once one failed, no flush runs again (known_flushed stays where the last
        # good one left it), so no later commit is acknowledged.
        self._failed: str | None = None

    def close(self) -> None:
        """Close the connection and the files; with shared flushes, once no flush runs and after
        a last one, so that a caller still waiting in :meth:`flush_through` finds its commit
        flushed (its file descriptors are never closed under a running fdatasync)."""
        if self._wal is not None:
            with self._flush_ended:
                while self._flush_running:
                    self._flush_ended.wait()
                self._flush_running = True  # no flush starts on what is closing
            try:
                if self._turns.fd is not None and self._failed is None:
                    with contextlib.suppress(OSError):
                        self._turns.flush(_EVERY_COMMIT, self._wal)
            finally:
                with self._flush_ended:
                    self._closed = True
                    self._flush_running = False
                    self._flush_ended.notify_all()
        self.conn.close()
        self._turns.close()
        if self._wal is not None:
            self._wal.close()

    # -- the primitives of the shared bookkeeping (_sql_bookkeeping) --------------------------

    def _all(self, what: str, query: str, params: Any = None) -> list[Row]:
        return self._fetch(query, params or ())

    def _one(self, what: str, query: str, params: Any = None) -> Row | None:
        return self._fetch_one(query, params or ())

    def _fetch(self, query: str, params: Any, known: dict[str, Any] | None = None) -> list[Row]:
        """The rows of ``query``; a row holding text that is not UTF-8 comes as an
        :class:`UnreadableRow` in an :class:`UnreadablePage` (``known``: keys naming the rows
        that the query does not return, such as the stream it reads)."""
        try:
            return self.conn.execute(query, params).fetchall()
        except sqlite3.OperationalError as exc:
            if _NOT_UTF8 not in str(exc) or not query.startswith("SELECT"):
                raise  # (a write is never run twice: RETURNING gives no text here anyway)
        return self._fetch_bytes(query, params, None, known)

    def _fetch_one(self, query: str, params: Any) -> Row | None:
        """The first row of ``query`` (None if none), as :meth:`_fetch` gives rows."""
        try:
            row: Row | None = self.conn.execute(query, params).fetchone()
            return row
        except sqlite3.OperationalError as exc:
            if _NOT_UTF8 not in str(exc) or not query.startswith("SELECT"):
                raise
        rows = self._fetch_bytes(query, params, 1)
        return rows[0] if rows else None

    def _fetch_bytes(
        self, query: str, params: Any, size: int | None, known: dict[str, Any] | None = None
    ) -> list[Row]:
        """:meth:`_fetch` once a row did not decode: the rows read again as bytes (in the same
        transaction, if one is open), each column decoded on its own to find what does not."""
        conn, factory = self.conn, self.conn.text_factory
        conn.text_factory = bytes
        try:
            cursor = conn.execute(query, params)
            raw = cursor.fetchall() if size is None else cursor.fetchmany(size)
        finally:
            conn.text_factory = factory
        table = m.group(1) if (m := _FROM.search(query)) else "?"
        names = [column[0] for column in cursor.description]
        return _checked(table, names, raw, known or {}, params)

    def _change(self, what: str, *statements: tuple[str, Any]) -> None:
        with self.transaction():
            for query, params in statements:
                self.conn.execute(query, params)

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def transaction(self, flush: bool = True) -> Iterator[SQLiteRecorder]:
        """A write transaction (``BEGIN IMMEDIATE``): commit on success, roll back on error.

        Nested use joins the outer transaction. The write lock is taken up front, so a busy
        database is waited for (``busy_timeout``) instead of failing halfway through.
        ``flush=False`` leaves the commit's flush to disk to a later :meth:`flush`, made once
        the caller let go of its own locks (with ``shared_flush``; SQLite flushes otherwise).
        """
        if self.conn.in_transaction:
            yield self
            return
        try:  # (BEGIN and COMMIT inside: whatever is raised, no transaction is left open)
            self._begin()
            yield self
            self._commit()
        except BaseException:
            self._rollback()  # (none once COMMIT ran: the commit stands)
            raise
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
        wal = self._wal
        self._flush_alone(lambda: self._turns.flush(commit, wal) if commit else _sync(wal))

    def _flush_alone(self, flush: Callable[[], bool]) -> None:
        """Run ``flush`` (True if it flushed) as the only flush of this recorder (the actor
        system's thread and callers waiting in :meth:`flush_through` share one WAL handle)."""
        with self._flush_ended:
            while self._flush_running:
                self._flush_ended.wait()
            if self._closed:
                raise StorageError(f"{self.path!r} was closed before its commits were flushed")
            if self._failed is not None:
                raise StorageError(self._failed)
            self._flush_running = True
        try:
            if flush():
                self.flushes += 1
        except OSError as exc:
            self._failed = (
                f"cannot flush {self.path!r} to disk: {exc} (nothing committed since is "
                "acknowledged: reopen the store)"
            )
            raise StorageError(self._failed) from None
        finally:
            with self._flush_ended:
                self._flush_running = False
                self._flush_ended.notify_all()

    def flush_through(self, commit: int) -> None:
        """Return once commit number ``commit`` (see ``deferred``) is on disk; from any thread.
        Callers take turns here: one fdatasync covers every commit written before it began."""
        if self._wal is None or not commit:
            return
        turns = self._turns
        with self._flush_ended:
            while self._flush_running and turns.known_flushed < commit:
                self._flush_ended.wait()
            if turns.known_flushed >= commit:
                return  # a flush that began after this commit has ended
        wal = self._wal
        self._flush_alone(lambda: turns.known_flushed < commit and turns.flush(commit, wal))

    def barrier(self) -> int:
        """A commit number that a flush covers only once every commit written so far is on disk
        (for a caller that cannot tell which of them it counts on); 0 without shared flushes."""
        if self._wal is None:
            return 0
        try:  # (the turn taken inside: see _durability)
            self._begin_turn()
            return self._turns.committed()
        finally:
            self._turns.end_turn()

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: it changes whenever another connection (of any
        process) commits."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

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

    def write(
        self, prepared: _Prepared, results: _Results, recorded_at: datetime, stamp: str
    ) -> None:
        try:
            self._write_batches(prepared, results, recorded_at, stamp)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot append to {self.path!r}: {exc}") from None

    def _write_batches(
        self,
        prepared: _Prepared,
        results: _Results,
        recorded_at: datetime,
        stamp: str,
    ) -> None:
        # Written in full rather than with the context managers: this runs for every command.
        commit = 0
        try:  # (the turn taken inside: see _durability)
            self._begin_turn()
            committing = not self.conn.in_transaction
            # BEGIN and COMMIT inside: whatever is raised between them (an interruption before
            # COMMIT too), the transaction is rolled back, not left open for the next writes to
            # join (they would be answered as stored and never committed).
            try:
                if committing:
                    self._begin()
                self._write_each(prepared, results, recorded_at, stamp)
                if committing:
                    self._commit()
            except BaseException:
                if committing:
                    self._rollback()  # (none once COMMIT ran: the commit stands)
                raise
            if committing and self._unflushed:
                commit = self._turns.committed()
        finally:
            self._turns.end_turn()
        # Flushed once the turn is over: other processes commit while this one waits on the disk.
        if self.defer_flush and commit:
            self.deferred = commit  # (by its caller, once it let go of its locks)
        else:
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
            if ap.counted_on(failed, request):
                results[index] = ap.after_failure(failed, request)
                continue
            if len(encoded) == 1:
                # One event: its INSERT is the append's only write, and SQLite undoes a
                # statement that fails; the version check comes before it. No savepoint needed.
                try:
                    results[index] = self._append_one(request, encoded, recorded_at, stamp, False)
                except _APPEND_ERRORS as exc:  # this append alone fails
                    results[index] = unstorable(request.stream_id, exc)
                    ap.note_failure(failed, request)
                else:
                    ap.note_repeat(failed, request, results[index])
                continue
            # Several events: a savepoint of their own, so that a failing append is undone alone.
            self.conn.execute("SAVEPOINT append")
            try:
                results[index] = self._append_one(request, encoded, recorded_at, stamp)
            except _APPEND_ERRORS as exc:  # this append alone fails
                results[index] = unstorable(request.stream_id, exc)
                ap.note_failure(failed, request)
                self.conn.execute("ROLLBACK TO append")
            else:
                ap.note_repeat(failed, request, results[index])
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
            if ap.counted_on(failed, request):
                results[index] = ap.after_failure(failed, request)
                continue
            exists, current = versions.get(stream_id, (False, 0))
            if not ap.version_matches(request.expected_version, exists, current):
                if request.event_ids:
                    return False
                results[index] = WrongExpectedVersion(stream_id, request.expected_version, current)
                ap.note_failure(failed, request)
                continue
            if not encoded:
                results[index] = []
                continue
            ids = ap.event_ids(request, len(encoded))
            try:
                metadata, meta_text = ap.metadata(request)
            except BackstageError as exc:
                results[index] = exc
                ap.note_failure(failed, request)
                continue
            rows.extend(ap.rows(ids, stream_id, current, encoded, meta_text, stamp))
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
                results[index] = ap.recorded(
                    ids, stream_id, current, position + 1, encoded, metadata, recorded_at
                )
                position += len(encoded)
        return True

    def _versions(self, stream_ids: list[str]) -> dict[str, tuple[bool, int]]:
        """``(exists, version)`` of each of ``stream_ids``, in one query."""
        rows = self.conn.execute(_VERSIONS, (json.dumps(list(dict.fromkeys(stream_ids))),))
        return {
            stream_id: ap.stream_state(last_event, kept) for stream_id, last_event, kept in rows
        }

    def _append_one(
        self,
        request: AppendRequest,
        encoded: list[Any],
        recorded_at: datetime,
        stamp: str,
        savepoint: bool = True,
    ) -> list[RecordedEvent]:
        stream_id = request.stream_id
        exists, current = ap.stream_state(*self.conn.execute(_VERSION, (stream_id,)).fetchone())
        expected = request.expected_version
        if not ap.version_matches(expected, exists, current):
            if request.event_ids:
                existing = self._already_stored(stream_id, request.event_ids)
                if existing is not None:
                    return existing
            raise WrongExpectedVersion(stream_id, expected, current)
        if not encoded:
            return []
        ids = ap.event_ids(request, len(encoded))
        metadata, meta_text = ap.metadata(request)
        rows = ap.rows(ids, stream_id, current, encoded, meta_text, stamp)
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
                f"{ap.reused_name(request)}"
            ) from None
        return ap.recorded(
            ids, stream_id, current, last - len(rows) + 1, encoded, metadata, recorded_at
        )

    def _already_stored(
        self, stream_id: str, event_ids: Sequence[str]
    ) -> list[RecordedEvent] | None:
        marks = ",".join("?" * len(event_ids))
        rows = self._fetch(
            f"SELECT {_COLUMNS} FROM events WHERE event_id IN ({marks}) ORDER BY position",
            list(event_ids),
        )
        if len(rows) == len(event_ids) and all(r[2] == stream_id for r in rows):
            return [ap.decode_row(r) for r in rows]
        return None

    # -- reading ----------------------------------------------------------------------------

    def stream_version(self, stream_id: str) -> int:
        return ap.stream_state(*self.conn.execute(_VERSION, (stream_id,)).fetchone())[1]

    def last_position(self) -> int:
        row = self.conn.execute("SELECT max(position) FROM events").fetchone()
        return int(row[0] or 0)

    def stream_page(
        self, stream_id: str, low: int, high: int, limit: int, backward: bool
    ) -> list[Row]:
        order = "DESC" if backward else "ASC"
        return self._fetch(
            f"SELECT {_COLUMNS} FROM events WHERE stream_id = ? AND version BETWEEN ? AND ?"
            f" ORDER BY version {order} LIMIT ?",
            (stream_id, low, high, limit),
        )

    def payload_page(self, stream_id: str, low: int, limit: int) -> list[tuple[Any, ...]]:
        rows = self._fetch(
            "SELECT version, type, schema_version, topic, data, position FROM events"
            " WHERE stream_id = ? AND version >= ? ORDER BY version LIMIT ?",
            (stream_id, low, limit),
            {"stream_id": stream_id},
        )
        if type(rows) is UnreadablePage:  # (a rebuild cannot skip an event: it fails on it)
            raise rows.error
        return rows

    def events_page(self, from_position: int, limit: int) -> list[Row]:
        return self._fetch(
            f"SELECT {_COLUMNS} FROM events WHERE position >= ? ORDER BY position LIMIT ?",
            (from_position, limit),
        )

    def event_row(self, position: int) -> Row | None:
        return self._fetch_one(f"SELECT {_COLUMNS} FROM events WHERE position = ?", (position,))

    def event_version(self, event_id: str, stream_id: str) -> int | None:
        row = self.conn.execute(
            "SELECT version FROM events WHERE event_id = ? AND stream_id = ?",
            (event_id, stream_id),
        ).fetchone()
        return None if row is None else int(row[0])

    # -- truncation -------------------------------------------------------------------------

    def truncate_stream(self, stream_id: str, before_version: int) -> int:
        """Delete the stream's events below ``before_version``, and the history's snapshots
        below ``before_version - 1``; its version stays. Returns the count of events."""
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
            # What no kept event can follow goes with the events (the latest snapshot stays).
            self.conn.execute(
                "DELETE FROM snapshot_history WHERE stream_id = ? AND version < ?",
                (stream_id, before_version - 1),
            )
        return int(deleted)

    # -- projections --------------------------------------------------------------------------

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self.conn.execute("SAVEPOINT event")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO event")
            self.conn.execute("RELEASE event")
            raise
        self.conn.execute("RELEASE event")

    @property
    def handle(self) -> Any:
        return self.db

    def drop_tables(self, tables: Sequence[str]) -> None:
        for table in tables:
            self.db[table].drop(ignore=True)

    # -- copying ----------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN")
        try:
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the read begins
            yield
        finally:
            self.conn.execute("ROLLBACK")

    def count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {_table(table)}").fetchone()[0])

    def export(self, table: str) -> Iterator[list[tuple[Any, ...]]]:
        columns = TABLES[_table(table)]
        query = f"SELECT {', '.join(columns)} FROM {table} ORDER BY {columns[0]}"
        cursor, done = self.conn.execute(query), 0
        try:
            while rows := cursor.fetchmany(1000):
                yield rows
                done += len(rows)
            return
        except sqlite3.OperationalError as exc:
            if _NOT_UTF8 not in str(exc):
                raise
        # A row holding text that is not UTF-8: the rest read again as bytes (the snapshot()
        # transaction keeps the rows and their order), each page as _fetch gives it.
        conn, factory = self.conn, self.conn.text_factory
        first = True
        while True:
            conn.text_factory = bytes
            try:
                if first:
                    cursor, first = conn.execute(query), False
                    # (given already; in pages: the memory stays bounded)
                    while done and (given := cursor.fetchmany(min(done, 1000))):
                        done -= len(given)
                raw = cursor.fetchmany(1000)
            finally:
                conn.text_factory = factory
            if not raw:
                return
            yield _checked(table, list(columns), raw, {}, ())

    def import_rows(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        columns = TABLES[_table(table)]
        marks = ", ".join("?" * len(columns))
        self.conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def next_position(self) -> int:
        row = self.conn.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),"
            " coalesce((SELECT max(position) FROM events), 0))"
        ).fetchone()
        return int(row[0]) + 1

    def reserve_positions(self, next_position: int) -> None:
        seq = max(next_position, self.next_position()) - 1
        if not self.conn.execute(
            "UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (seq,)
        ).rowcount:
            self.conn.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (seq,)
            )


def _checked(
    table: str, names: list[str], raw: list[tuple[Any, ...]], known: dict[str, Any], params: Any
) -> list[Row]:
    """Rows read with text as bytes, decoded; a row whose text is not all UTF-8 becomes an
    :class:`UnreadableRow` naming the row (``table``, its key) and each such column, and the
    page an :class:`UnreadablePage` whose error names them all."""
    page = UnreadablePage()
    bad: list[UnreadableRow] = []
    for values in raw:
        texts: list[Any] = []
        wrong: list[str] = []
        for name, value in zip(names, values, strict=True):
            if type(value) is bytes:
                try:
                    value = value.decode()
                except UnicodeDecodeError:
                    wrong.append(f"its {name} is not UTF-8 ({value!r:.60})")
                    value = value.decode("utf-8", "backslashreplace")
            texts.append(value)
        if not wrong:
            page.append(tuple(texts))
            continue
        row = UnreadableRow(texts)
        row.what = " and ".join(wrong)
        position = values[names.index("position")] if table == "events" else None
        row.error = StoredEventError(
            f"{table} ({_key(table, names, values, known, params)}): {row.what}", position
        )
        page.append(row)
        bad.append(row)
    if not bad:  # (mended between the two reads)
        return list(page)
    more = f"; and {len(bad) - _NAMED} more" if len(bad) > _NAMED else ""
    page.error = StoredEventError(
        "; ".join(str(row.error) for row in bad[:_NAMED]) + more, bad[0].error.position
    )
    return page


def _key(
    table: str, names: list[str], values: tuple[Any, ...], known: dict[str, Any], params: Any
) -> str:
    """What names a row in an error: ``known`` keys and those of the table the row holds (or,
    with none, the query's parameters)."""
    held = {**known, **{name: value for name, value in zip(names, values, strict=True)}}
    keys = [(name, held[name]) for name in KEYS.get(table, ()) if name in held]
    if not keys:
        return ", ".join(f"{_shown(value)}" for value in params) or "?"
    return ", ".join(f"{name} {_shown(value)}" for name, value in keys)


def _shown(value: Any) -> str:
    if type(value) is bytes:
        with contextlib.suppress(UnicodeDecodeError):
            value = value.decode()
    return str(value) if type(value) is int else f"{value!r:.80}"


def _table(name: str) -> str:
    if name not in TABLES:
        raise ValueError(f"no table {name!r} in a store")
    return name
