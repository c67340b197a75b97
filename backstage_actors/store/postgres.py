"""The PostgreSQL recorder: the events in a PostgreSQL database, through psycopg 3 and a
``psycopg_pool`` connection pool.

**No reader ever skips an event.** A writer takes ``LOCK TABLE events IN EXCLUSIVE MODE`` before
it reads versions and inserts, and holds it to its commit: positions (an identity column) are
handed out one transaction at a time, and a transaction is visible before the next writer gets
the lock (PostgreSQL marks a commit visible before it releases the commit's locks). A reader that
sees position N therefore sees every position below N that will ever exist. The cost: one writer
at a time per database, each holding the lock through its commit's flush. Group commit pays it
back: every append waiting in this process (the store actor's batch, or threads sharing the
store) goes into one transaction, one lock and one flush (:meth:`PostgresRecorder.write`).
Readers take no lock.

Faults: a statement or lock timeout, or any database error, is a
:class:`~backstage_actors.errors.StorageError` with the driver's error as its cause. A connection
lost to a server restart is replaced, and the operation retried until ``reconnect_timeout``: reads
always, an append only when that is safe (it failed before its commit was sent, or every request
names its event ids, which make a repeat return what the first attempt stored). A server that
cannot be reached when the store opens is an error at once, naming host and user (never the
password); no retry loop.

Every commit that stored events sends ``NOTIFY`` on :attr:`PostgresRecorder.channel` with the last
position: :meth:`PostgresRecorder.wait` wakes on it (any host, any process).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import attrs
import psycopg
import psycopg.conninfo
import psycopg.sql
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from ..errors import BackstageError, StorageError, WrongExpectedVersion
from . import _appending as ap
from ._appending import COLUMNS, Failed, Prepared, Results, Row
from ._pg_schema import SCHEMA
from .recorder import TABLES, Recorder
from .records import AppendRequest, DeadLetter, RecordedEvent

__all__ = ["Listener", "PostgresHandle", "PostgresRecorder", "describe_url"]

T = TypeVar("T")
_log = logging.getLogger("backstage_actors.store.postgres")

_VERSIONS = (
    "SELECT s.id, (SELECT max(version) FROM events WHERE stream_id = s.id),"
    " (SELECT version FROM streams WHERE stream_id = s.id) FROM unnest(%s::text[]) AS s(id)"
)
_VERSION = (
    "SELECT (SELECT max(version) FROM events WHERE stream_id = %(s)s),"
    " (SELECT version FROM streams WHERE stream_id = %(s)s)"
)
# The rows of an append as one JSON array of arrays: one parameter, quoted by the json module
# and libpq (arrays of text would be quoted element by element in Python).
_ROWS = (
    "SELECT r->>0, r->>1, (r->>2)::bigint, r->>3, (r->>4)::int, r->>5, r->>6, r->>7, r->>8"
    " FROM json_array_elements(%s::json) AS r"
)
_INSERT = (
    "INSERT INTO events (event_id, stream_id, version, type, schema_version, topic, data,"
    f" metadata, recorded_at) {_ROWS} RETURNING position, event_id"
)


def describe_url(url: str) -> tuple[str, dict[str, str]]:
    """``user@host:port/dbname`` for messages (no password), and the parsed connection info."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StorageError(f"not a PostgreSQL URL ({_first_line(exc)})") from None
    params = {k: str(v) for k, v in info.items() if v is not None}
    user = params.get("user") or _default_user()
    host = params.get("host") or "localhost (default socket)"
    port = params.get("port") or "5432"
    db = params.get("dbname") or user
    return f"{user}@{host}:{port}/{db}", params


def _default_user() -> str:
    import getpass

    return getpass.getuser()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


class _Waiting:
    """An append waiting for a group commit (:meth:`PostgresRecorder.write`)."""

    def __init__(self, prepared: Prepared, results: Results) -> None:
        self.prepared = prepared
        self.results = results
        self.done = threading.Event()
        self.lead = False
        self.error: BaseException | None = None


class _Local(threading.local):
    conn: psycopg.Connection[Any] | None = None


class PostgresRecorder(Recorder):
    """A recorder on the PostgreSQL database ``url`` (``postgresql://user:pw@host/db``; libpq
    URL parameters such as ``?host=/socket/dir&port=5433`` work too).

    ``lock_timeout`` bounds a wait for a lock (another writer), ``statement_timeout`` any
    statement; ``synchronous="NORMAL"`` commits with ``synchronous_commit = off`` (a crash of the
    server may lose the last commits, never corrupt). ``pool_size`` connections at most.
    """

    def __init__(
        self,
        url: str,
        synchronous: str = "FULL",
        lock_timeout: float = 10.0,
        statement_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 30.0,
        pool_size: int = 4,
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "OFF", "EXTRA"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.url = url
        described, _ = describe_url(url)
        self.location = f"postgresql://{described}"
        self.reconnect_timeout = reconnect_timeout
        self._settings = (
            f"SET lock_timeout = {int(lock_timeout * 1000)};"
            f" SET statement_timeout = {int(statement_timeout * 1000)};"
            + (" SET synchronous_commit = off;" if synchronous.upper() in ("NORMAL", "OFF") else "")
        )
        self._local = _Local()
        self._group_lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._leading = False
        self._listener: psycopg.Connection[Any] | None = None
        # Reach the server once, directly: a wrong address or password is one clear error now.
        try:
            probe = psycopg.connect(url, autocommit=True, connect_timeout=int(connect_timeout))
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot connect to PostgreSQL as {described.split('@')[0]!r} on "
                f"{described.split('@', 1)[1]}: {_first_line(exc)}"
            ) from None
        with probe:
            self._create_schema(probe)
            self.schema = str(probe.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
        self.channel = f"backstage_{self.schema}"[:63]
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": int(connect_timeout)},
            configure=self._configure,
            open=False,
            name=f"backstage {described}",
            num_workers=1,
            reconnect_timeout=reconnect_timeout,
        )
        self.pool.open(wait=False)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self._settings)

    def _create_schema(self, conn: psycopg.Connection[Any]) -> None:
        """The tables, created once even when many processes open the store at the same time."""
        try:
            with conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.events'))"
                )
                conn.execute(SCHEMA)
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot create the event store's tables in {self.location}: {_first_line(exc)}"
            ) from exc

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.pool.close()

    # -- connections, retries, errors -------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._local.conn is not None:
            yield self._local.conn
            return
        with self.pool.connection(timeout=self.reconnect_timeout) as conn:
            yield conn

    def _run(
        self, what: str, work: Callable[[psycopg.Connection[Any]], T], retry: bool = True
    ) -> T:
        """``work(conn)``; retried on a fresh connection while the server is away (outside a
        transaction only), errors as StorageError."""
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.05
        while True:
            try:
                with self._connection() as conn:
                    return work(conn)
            except psycopg.OperationalError as exc:
                if not (retry and self._local.conn is None and _lost(exc)):
                    raise self._error(what, exc) from exc
                if time.monotonic() + delay > deadline:
                    raise self._error(what, exc) from exc
                _log.warning("%s: connection lost (%s); retrying", self.location, _first_line(exc))
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except psycopg.Error as exc:
                raise self._error(what, exc) from exc

    def _error(self, what: str, exc: BaseException) -> StorageError:
        if isinstance(exc, pg_errors.QueryCanceled):
            reason = "a statement ran past statement_timeout"
        elif isinstance(exc, pg_errors.LockNotAvailable):
            reason = "a lock was not granted within lock_timeout"
        else:
            reason = _first_line(exc)
        return StorageError(f"cannot {what} in {self.location}: {reason}")

    @contextmanager
    def transaction(self, flush: bool = True) -> Iterator[PostgresRecorder]:
        if self._local.conn is not None:
            yield self
            return
        try:
            with self.pool.connection(timeout=self.reconnect_timeout) as conn:
                conn.execute("BEGIN")
                self._local.conn = conn
                try:
                    yield self
                except BaseException:
                    self._local.conn = None
                    if not conn.closed:
                        conn.execute("ROLLBACK")
                    raise
                self._local.conn = None
                conn.execute("COMMIT")
        except psycopg.Error as exc:
            self._local.conn = None
            raise self._error("commit a transaction", exc) from exc

    def connection(self) -> psycopg.Connection[Any] | None:
        """The connection of the transaction open in this thread (projections write on it)."""
        return self._local.conn

    # -- projections --------------------------------------------------------------------------

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        conn = self._local.conn
        if conn is None:
            raise StorageError("a savepoint needs an open transaction")
        conn.execute("SAVEPOINT event")
        try:
            yield
        except BaseException:
            if not conn.closed:
                conn.execute("ROLLBACK TO SAVEPOINT event")
                conn.execute("RELEASE SAVEPOINT event")
            raise
        conn.execute("RELEASE SAVEPOINT event")

    @property
    def handle(self) -> PostgresHandle:
        return PostgresHandle(self)

    def drop_tables(self, tables: Sequence[str]) -> None:
        for table in tables:
            self._run(
                "drop a table",
                lambda conn, t=table: conn.execute(  # type: ignore[misc]
                    psycopg.sql.SQL("DROP TABLE IF EXISTS {}").format(psycopg.sql.Identifier(t))
                ),
            )

    # -- appending --------------------------------------------------------------------------

    def write(
        self, prepared: Prepared, results: Results, recorded_at: datetime, stamp: str
    ) -> None:
        """Group commit across threads: appends that arrive while a commit is under way wait,
        and the first of them then commits them all in one transaction (one lock, one flush)."""
        if self._local.conn is not None:  # inside the caller's transaction
            self._write_now(prepared, results, recorded_at, stamp)
            return
        mine = _Waiting(prepared, results)
        with self._group_lock:
            self._waiting.append(mine)
            if self._leading:
                mine.lead = False
            else:
                self._leading = mine.lead = True
        if not mine.lead:
            mine.done.wait()
            if not mine.lead:  # committed by another thread's transaction
                if mine.error is not None:
                    raise mine.error
                return
        with self._group_lock:
            group, self._waiting = self._waiting, []
        try:
            self._write_group(group, recorded_at, stamp)
        finally:
            with self._group_lock:
                if self._waiting:  # the next leader: the first that arrived meanwhile
                    self._waiting[0].lead = True
                    self._waiting[0].done.set()
                else:
                    self._leading = False
        if mine.error is not None:
            raise mine.error

    def _write_group(self, group: list[_Waiting], recorded_at: datetime, stamp: str) -> None:
        prepared = [item for member in group for item in member.prepared]
        results = [result for member in group for result in member.results]
        error: BaseException | None = None
        try:
            self._write_now(prepared, results, recorded_at, stamp)
        except BaseException as exc:
            error = exc
        at = 0
        for member in group:
            member.results[:] = results[at : at + len(member.results)]
            at += len(member.results)
            member.error = error
            if not member.lead:
                member.done.set()

    def _write_now(
        self, prepared: Prepared, results: Results, recorded_at: datetime, stamp: str
    ) -> None:
        live = [(i, item) for i, item in enumerate(prepared) if item is not None]
        # A repeat is harmless when every request names its event ids; otherwise only an
        # attempt that failed before COMMIT was sent is retried.
        idempotent = all(request.event_ids for _, (request, _) in live)
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.05
        while True:
            state = {"committing": False}
            try:
                if self._local.conn is not None:
                    self._write(self._local.conn, live, results, recorded_at, stamp, None)
                    return
                with self.pool.connection(timeout=self.reconnect_timeout) as conn:
                    self._write(conn, live, results, recorded_at, stamp, state)
                return
            except psycopg.OperationalError as exc:
                safe = idempotent or not state["committing"]
                lost = _lost(exc) and self._local.conn is None
                if not (lost and safe) or time.monotonic() + delay > deadline:
                    if lost and not safe:
                        raise StorageError(
                            f"cannot append to {self.location}: the connection was lost during"
                            f" the commit, which may or may not have happened"
                            f" ({_first_line(exc)}); append again with the same event ids"
                        ) from exc
                    raise self._error("append", exc) from exc
                _log.warning(
                    "%s: connection lost (%s); appending again", self.location, _first_line(exc)
                )
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except psycopg.Error as exc:
                raise self._error("append", exc) from exc

    def _write(
        self,
        conn: psycopg.Connection[Any],
        live: list[tuple[int, tuple[AppendRequest, list[Any]]]],
        results: Results,
        recorded_at: datetime,
        stamp: str,
        state: dict[str, bool] | None,
    ) -> None:
        """One round trip when every append names the version it expects (what aggregates
        do), else two: BEGIN, the lock and the streams' state; then, decided here, the rows,
        the NOTIFY and COMMIT. Statements go together as one simple query (client-side
        binding), the cheapest way through psycopg."""
        own = state is not None
        if own and _expects_versions(live):
            assert state is not None
            if self._write_expected(conn, live, results, recorded_at, stamp, state):
                return
            state["committing"] = False
        cursor = psycopg.ClientCursor(conn)
        streams = list(dict.fromkeys(request.stream_id for _, (request, _) in live))
        named = [i for _, (request, _) in live for i in (request.event_ids or [])]
        head = [*(["BEGIN"] if own else []), "LOCK TABLE events IN EXCLUSIVE MODE", _VERSIONS]
        params: list[Any] = [streams]
        if named:
            head.append(f"SELECT {COLUMNS} FROM events WHERE event_id = ANY(%s)")
            params.append(named)
        try:
            cursor.execute("; ".join(head), params)
            sets = _result_sets(cursor)
            stored = {row[1]: row for row in sets[-1]} if named else {}
            version_rows = sets[-2] if named else sets[-1]
            versions = {
                stream_id: ap.stream_state(last_event, kept)
                for stream_id, last_event, kept in version_rows
            }
            planned, rows = self._plan(live, results, versions, stored, stamp)
            tail: list[str] = []
            params = []
            if planned:
                tail += [_INSERT, "SELECT pg_notify(%s, '')"]
                params += [json.dumps(rows), self.channel]
            if own:
                assert state is not None
                state["committing"] = True
                tail.append("COMMIT")
            sets = []
            if tail:
                cursor.execute("; ".join(tail), params)
                sets = _result_sets(cursor)
        except BaseException:
            if own and not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
            raise
        if planned:
            _fill(results, planned, dict((event_id, p) for p, event_id in sets[0]), recorded_at)

    def _write_expected(
        self,
        conn: psycopg.Connection[Any],
        live: list[tuple[int, tuple[AppendRequest, list[Any]]]],
        results: Results,
        recorded_at: datetime,
        stamp: str,
        state: dict[str, bool],
    ) -> bool:
        """Appends that each name their stream's version (streams distinct): one call of the
        schema's ``backstage_append`` function (a prepared statement, its own transaction): the
        lock, then every row inserted only if every stream is at the version its append expects,
        and the NOTIFY.
        False, with nothing stored, when one is not (or an event id exists): then the careful
        way decides each append on its own."""
        planned: list[tuple[int, str, list[Any], list[str], int, dict[str, Any]]] = []
        rows: list[tuple[Any, ...]] = []
        streams: list[str] = []
        expected: list[int] = []
        for index, (request, encoded) in live:
            current = int(request.expected_version)  # type: ignore[arg-type]
            ids = ap.event_ids(request, len(encoded))
            try:
                metadata, meta_text = ap.metadata(request)
            except BackstageError:
                return False
            rows += ap.rows(ids, request.stream_id, current, encoded, meta_text, stamp)
            planned.append((index, request.stream_id, encoded, ids, current, metadata))
            streams.append(request.stream_id)
            expected.append(current)
        state["committing"] = True
        try:
            inserted = conn.execute(
                "SELECT * FROM backstage_append(%s::json, %s::text[], %s::bigint[], %s)",
                (json.dumps(rows), streams, expected, self.channel),
            ).fetchall()
        except pg_errors.UniqueViolation:  # an event id already stored: the careful way
            return False
        if len(inserted) != len(rows):
            return False  # a stream was elsewhere: nothing was stored
        _fill(results, planned, {event_id: p for p, event_id in inserted}, recorded_at)
        return True

    def _plan(
        self,
        live: list[tuple[int, tuple[AppendRequest, list[Any]]]],
        results: Results,
        versions: dict[str, tuple[bool, int]],
        stored: dict[str, Row],
        stamp: str,
    ) -> tuple[
        list[tuple[int, str, list[Any], list[str], int, dict[str, Any]]], list[tuple[Any, ...]]
    ]:
        """Decide every append under the lock: each outcome that needs no row goes to
        ``results``; the others come back planned, with the columns of their rows."""
        failed: Failed = {}
        planned: list[tuple[int, str, list[Any], list[str], int, dict[str, Any]]] = []
        rows: list[tuple[Any, ...]] = []
        taken: set[str] = set()
        for index, (request, encoded) in live:
            stream_id = request.stream_id
            if ap.counted_on(failed, request):
                results[index] = ap.after_failure(failed, request)
                continue
            exists, current = versions.get(stream_id, (False, 0))
            repeat = _already_stored(stored, stream_id, request.event_ids)
            if not ap.version_matches(request.expected_version, exists, current):
                if repeat is not None:
                    results[index] = repeat
                    ap.note_repeat(failed, request, repeat)
                else:
                    results[index] = WrongExpectedVersion(
                        stream_id, request.expected_version, current
                    )
                    ap.note_failure(failed, request)
                continue
            if not encoded:
                results[index] = []
                continue
            ids = ap.event_ids(request, len(encoded))
            if len(set(ids)) != len(ids) or any(i in stored or i in taken for i in ids):
                if repeat is not None:
                    results[index] = repeat
                    ap.note_repeat(failed, request, repeat)
                else:
                    results[index] = BackstageError(
                        f"stream {stream_id!r}: an event id of this append is already stored elsewhere"
                    )
                    ap.note_failure(failed, request)
                continue
            try:
                metadata, meta_text = ap.metadata(request)
            except BackstageError as exc:
                results[index] = exc
                ap.note_failure(failed, request)
                continue
            rows += ap.rows(ids, stream_id, current, encoded, meta_text, stamp)
            taken.update(ids)
            planned.append((index, stream_id, encoded, ids, current, metadata))
            versions[stream_id] = (True, current + len(encoded))
        return planned, rows

    # -- reading ----------------------------------------------------------------------------

    def _all(self, what: str, query: str, params: Any = None) -> list[Row]:
        return self._run(what, lambda conn: conn.execute(query, params).fetchall())

    def _one(self, what: str, query: str, params: Any = None) -> Row | None:
        return self._run(what, lambda conn: conn.execute(query, params).fetchone())

    def stream_version(self, stream_id: str) -> int:
        row = self._one("read a stream's version", _VERSION, {"s": stream_id})
        assert row is not None
        return ap.stream_state(*row)[1]

    def last_position(self) -> int:
        row = self._one("read the last position", "SELECT max(position) FROM events")
        return int(row[0] or 0) if row else 0

    def stream_page(
        self, stream_id: str, low: int, high: int, limit: int, backward: bool
    ) -> list[Row]:
        order = "DESC" if backward else "ASC"
        return self._all(
            "read a stream",
            f"SELECT {COLUMNS} FROM events WHERE stream_id = %s AND version BETWEEN %s AND %s"
            f" ORDER BY version {order} LIMIT %s",
            (stream_id, low, high, limit),
        )

    def payload_page(self, stream_id: str, low: int, limit: int) -> list[tuple[Any, ...]]:
        return self._all(
            "read a stream",
            "SELECT version, type, schema_version, topic, data, position FROM events"
            " WHERE stream_id = %s AND version >= %s ORDER BY version LIMIT %s",
            (stream_id, low, limit),
        )

    def events_page(self, from_position: int, limit: int) -> list[Row]:
        return self._all(
            "read events",
            f"SELECT {COLUMNS} FROM events WHERE position >= %s ORDER BY position LIMIT %s",
            (from_position, limit),
        )

    def event_row(self, position: int) -> Row | None:
        return self._one(
            "read an event", f"SELECT {COLUMNS} FROM events WHERE position = %s", (position,)
        )

    def event_version(self, event_id: str, stream_id: str) -> int | None:
        row = self._one(
            "look up an event",
            "SELECT version FROM events WHERE event_id = %s AND stream_id = %s",
            (event_id, stream_id),
        )
        return None if row is None else int(row[0])

    def truncate_stream(self, stream_id: str, before_version: int) -> int:
        with self.transaction():
            version = self.stream_version(stream_id)

            def work(conn: psycopg.Connection[Any]) -> int:
                deleted = conn.execute(
                    "DELETE FROM events WHERE stream_id = %s AND version < %s",
                    (stream_id, before_version),
                ).rowcount
                if version:
                    conn.execute(
                        "INSERT INTO streams (stream_id, version, truncated_before)"
                        " VALUES (%s, %s, %s) ON CONFLICT (stream_id) DO UPDATE SET"
                        " version = greatest(streams.version, excluded.version),"
                        " truncated_before = greatest(streams.truncated_before,"
                        " excluded.truncated_before)",
                        (stream_id, version, before_version),
                    )
                return int(deleted)

            return self._run("truncate a stream", work)

    def wait(self, after_position: int, timeout: float) -> bool:
        """Block until an event past ``after_position`` is committed (a NOTIFY), at most
        ``timeout`` seconds; True if there is one."""
        if self.last_position() > after_position:
            return True
        try:
            if self._listener is None or self._listener.closed:
                self._listener = psycopg.connect(self.url, autocommit=True)
                self._listener.execute(f'LISTEN "{self.channel}"')
                if self.last_position() > after_position:
                    return True
            for notify in self._listener.notifies(timeout=timeout, stop_after=1):
                return int(notify.payload or 0) > after_position or (
                    self.last_position() > after_position
                )
        except psycopg.OperationalError:
            self._listener = None
        return self.last_position() > after_position

    # -- bookkeeping ------------------------------------------------------------------------

    def _write_one(self, what: str, query: str, params: Any) -> int:
        def work(conn: psycopg.Connection[Any]) -> int:
            return int(conn.execute(query, params).rowcount)

        return self._run(what, work)

    def save_snapshot(
        self, stream_id: str, version: int, schema_version: int, type: str, data: str, at: str
    ) -> None:
        self._write_one(
            "save a snapshot",
            "INSERT INTO snapshots (stream_id, version, schema_version, type, data, taken_at)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (stream_id) DO UPDATE SET"
            " version = excluded.version, schema_version = excluded.schema_version,"
            " type = excluded.type, data = excluded.data, taken_at = excluded.taken_at"
            " WHERE excluded.version >= snapshots.version",
            (stream_id, version, schema_version, type, data, at),
        )

    def snapshot_row(self, stream_id: str) -> tuple[int, int, str, str, str] | None:
        row = self._one(
            "load a snapshot",
            "SELECT version, schema_version, type, data, taken_at FROM snapshots"
            " WHERE stream_id = %s",
            (stream_id,),
        )
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    def checkpoint(self, name: str) -> int:
        row = self._one(
            "read a checkpoint", "SELECT position FROM checkpoints WHERE name = %s", (name,)
        )
        return int(row[0]) if row else 0

    def save_checkpoint(self, name: str, position: int, at: str) -> None:
        self._write_one(
            "save a checkpoint",
            "INSERT INTO checkpoints (name, position, updated_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
            " updated_at = excluded.updated_at",
            (name, position, at),
        )

    def delete_checkpoint(self, name: str) -> None:
        self._write_one("delete a checkpoint", "DELETE FROM checkpoints WHERE name = %s", (name,))

    def park(
        self,
        subscriber: str,
        event: RecordedEvent,
        error_type: str,
        error: str,
        traceback: str,
        failures: int,
        status: str,
        at: str,
    ) -> None:
        self._write_one(
            "park an event",
            "INSERT INTO dead_letters (subscriber, position, event_id, stream_id, version, type,"
            " error_type, error, traceback, failures, status, parked_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (subscriber, position) DO UPDATE SET error_type = excluded.error_type,"
            " error = excluded.error, traceback = excluded.traceback,"
            " failures = excluded.failures, status = excluded.status,"
            " parked_at = excluded.parked_at",
            (
                subscriber,
                event.position,
                event.event_id,
                event.stream_id,
                event.version,
                event.type,
                error_type,
                error,
                traceback,
                failures,
                status,
                at,
            ),
        )

    def dead_letters(self, subscriber: str | None, status: str | None) -> list[DeadLetter]:
        columns = TABLES["dead_letters"]
        query = f"SELECT {', '.join(columns)} FROM dead_letters WHERE true"
        params: list[Any] = []
        if subscriber is not None:
            query += " AND subscriber = %s"
            params.append(subscriber)
        if status is not None:
            query += " AND status = %s"
            params.append(status)
        rows = self._all("read dead letters", query + " ORDER BY id", params)
        return [DeadLetter(*row) for row in rows]

    def set_dead_letter_status(self, letter_id: int, status: str) -> None:
        self._write_one(
            "update a dead letter",
            "UPDATE dead_letters SET status = %s WHERE id = %s",
            (status, letter_id),
        )

    def process_state(self, name: str, process_id: str) -> str | None:
        row = self._one(
            "load a process manager's state",
            "SELECT state FROM process_managers WHERE name = %s AND process_id = %s",
            (name, process_id),
        )
        return str(row[0]) if row else None

    def save_process(self, name: str, process_id: str, state: str | None, at: str) -> None:
        if state is None:
            self._write_one(
                "delete a process manager's state",
                "DELETE FROM process_managers WHERE name = %s AND process_id = %s",
                (name, process_id),
            )
            return
        self._write_one(
            "save a process manager's state",
            "INSERT INTO process_managers (name, process_id, state, updated_at)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (name, process_id) DO UPDATE SET"
            " state = excluded.state, updated_at = excluded.updated_at",
            (name, process_id, state, at),
        )

    # -- copying ----------------------------------------------------------------------------

    def count(self, table: str) -> int:
        row = self._one("count rows", f"SELECT count(*) FROM {_table(table)}")
        return int(row[0]) if row else 0

    def export(self, table: str) -> Iterator[list[tuple[Any, ...]]]:
        columns = TABLES[_table(table)]
        select = f"SELECT {', '.join(columns)} FROM {table}"
        if table == "process_managers":  # one row per running process: small
            yield self._all("export rows", f"{select} ORDER BY name, process_id")
            return
        key = columns[0]
        rows = self._all("export rows", f"{select} ORDER BY {key} LIMIT 1000")
        while rows:
            yield rows
            if len(rows) < 1000:
                return
            rows = self._all(
                "export rows",
                f"{select} WHERE {key} > %s ORDER BY {key} LIMIT 1000",
                (rows[-1][0],),
            )

    def import_rows(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        columns = TABLES[_table(table)]
        marks = ", ".join(["%s"] * len(columns))

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
                )
            if table in ("events", "dead_letters"):
                key = columns[0]
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{key}'),"
                    f" (SELECT coalesce(max({key}), 0) + 1 FROM {table}), false)"
                )

        self._run("import rows", work, retry=False)


class Listener:
    """A connection that LISTENs for the store's commits, for an actor that watches its socket
    (``fileno``) and calls :meth:`drain` when it is readable."""

    def __init__(self, url: str) -> None:
        described, _ = describe_url(url)
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
            schema = self.conn.execute("SELECT current_schema()").fetchone()
            channel = f"backstage_{schema[0] if schema else 'public'}"[:63]
            self.conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot listen for commits on postgresql://{described}: {_first_line(exc)}"
            ) from None

    def fileno(self) -> int:
        return self.conn.pgconn.socket

    def drain(self) -> bool:
        """Take every notification that arrived; True if there was one. Raises
        :class:`StorageError` when the connection is gone."""
        pgconn = self.conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            raise StorageError(f"the listening connection is gone: {_first_line(exc)}") from exc
        woke = False
        while pgconn.notifies() is not None:
            woke = True
        return woke

    def last_position(self) -> int:
        row = self.conn.execute("SELECT max(position) FROM events").fetchone()
        return int(row[0] or 0) if row else 0

    def close(self) -> None:
        self.conn.close()


class PostgresHandle:
    """What a projection (or handler) on a PostgreSQL store writes its tables through.

    ``execute(query, params)`` runs one statement and returns the psycopg cursor. Placeholders
    are psycopg's (``%s``, ``%(name)s``) or, as with ``sqlite_utils.Database.execute``, ``?``:
    a projection that writes plain SQL through ``execute`` (``CREATE TABLE IF NOT EXISTS``,
    ``INSERT ... ON CONFLICT``, ``UPDATE``) runs unchanged on both stores. Inside the subscriber's transaction (every
    ``project`` call) it runs on that transaction's connection, so the projection's writes and its
    checkpoint commit together, exactly once; elsewhere (``init``) on a connection of the pool,
    committed at once.
    """

    def __init__(self, recorder: PostgresRecorder) -> None:
        self.recorder = recorder

    def execute(self, query: Any, params: Any = None) -> psycopg.Cursor[Any]:
        query = _placeholders(query, params)
        conn = self.recorder.connection()
        if conn is not None:
            return conn.execute(query, params)
        return self.recorder._run(
            "run a projection's statement", lambda c: c.execute(query, params)
        )

    def executemany(self, query: Any, params_seq: Sequence[Any]) -> None:
        query = _placeholders(query, params_seq[0] if params_seq else None)
        conn = self.recorder.connection()
        if conn is not None:
            with conn.cursor() as cursor:
                cursor.executemany(query, params_seq)
            return
        with self.recorder.transaction():
            self.executemany(query, params_seq)

    def query(self, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
        """Every row of a query (a read on the projection's tables)."""
        query = _placeholders(query, params)
        conn = self.recorder.connection()
        if conn is not None:
            return conn.execute(query, params).fetchall()
        return self.recorder._run(
            "read a projection", lambda c: c.execute(query, params).fetchall()
        )


def _placeholders(query: Any, params: Any) -> Any:
    """``query`` with sqlite3's ``?`` placeholders as psycopg's ``%s`` (and a literal ``%`` as
    ``%%``), when it has ``?`` outside quotes and positional parameters."""
    if not isinstance(query, str) or "?" not in query or params is None or isinstance(params, dict):
        return query
    out: list[str] = []
    quote = ""
    for char in query:
        if quote:
            out.append("%%" if char == "%" else char)
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        else:
            out.append("%%" if char == "%" else char)
    return "".join(out)


def _expects_versions(live: list[tuple[int, tuple[AppendRequest, list[Any]]]]) -> bool:
    """Whether every append names an exact version of a stream no other append of the batch
    writes, and stores something."""
    streams = set()
    for _, (request, encoded) in live:
        expected = request.expected_version
        if not encoded or isinstance(expected, bool) or not isinstance(expected, int):
            return False
        if request.stream_id in streams:
            return False
        streams.add(request.stream_id)
    return True


def _result_sets(cursor: psycopg.ClientCursor[Any]) -> list[list[Any]]:
    """The rows of each statement of a multi-statement query ([] for one without rows)."""
    sets: list[list[Any]] = []
    while True:
        sets.append(cursor.fetchall() if cursor.description else [])
        if not cursor.nextset():
            return sets


def _fill(
    results: Results,
    planned: list[tuple[int, str, list[Any], list[str], int, dict[str, Any]]],
    positions: dict[str, int],
    recorded_at: datetime,
) -> None:
    """Each planned append's recorded events, with the positions the insert returned."""
    for index, stream_id, encoded, ids, current, metadata in planned:
        first = positions[ids[0]]
        recorded = ap.recorded(ids, stream_id, current, first, encoded, metadata, recorded_at)
        if any(positions[e.event_id] != e.position for e in recorded):  # (rows out of order)
            recorded = [attrs.evolve(e, position=positions[e.event_id]) for e in recorded]
        results[index] = recorded


def _already_stored(
    stored: dict[str, Row], stream_id: str, event_ids: Sequence[str] | None
) -> list[RecordedEvent] | None:
    if not event_ids:
        return None
    rows = [stored.get(i) for i in event_ids]
    if all(r is not None and r[2] == stream_id for r in rows):
        return [ap.decode_row(r) for r in sorted(rows, key=lambda r: r[0])]  # type: ignore[index,arg-type]
    return None


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is gone (server restart, network), not a refusal."""
    return isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, (pg_errors.QueryCanceled, pg_errors.LockNotAvailable, PoolClosed, PoolTimeout)
    )


def _table(name: str) -> str:
    if name not in TABLES:
        raise ValueError(f"no table {name!r} in a store")
    return name
