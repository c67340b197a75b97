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

Every commit that stored events sends ``NOTIFY`` on :attr:`PostgresRecorder.channel`, its payload
the writing recorder's :attr:`~PostgresRecorder.origin` and the commit's last position: :meth:`PostgresRecorder.wait` and the event bus's :class:`~._pg_support.Listener` wake
on it (any host, any process; a listener may ignore the commits of a recorder whose appends are
announced to it otherwise).
"""

from __future__ import annotations

import logging
import select
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
import psycopg.sql
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from ..errors import StorageError
from . import _appending as ap
from . import _pg_append as pg
from ._appending import COLUMNS, Prepared, Results, Row
from ._group_commit import GroupCommit
from ._pg_bookkeeping import PgBookkeeping
from ._pg_schema import HISTORY_SCHEMA, SCHEMA
from ._pg_support import Listener, PostgresHandle, describe_url, first_line
from ._queries import where
from ._sql_bookkeeping import POSTGRES, SQLBookkeeping, checked_page_sql
from .recorder import Recorder
from .records import EventQuery

__all__ = ["Listener", "PostgresHandle", "PostgresRecorder", "describe_url"]

T = TypeVar("T")
_log = logging.getLogger("backstage_actors.store.postgres")


class _Local(threading.local):
    conn: psycopg.Connection[Any] | None = None


class PostgresRecorder(PgBookkeeping, SQLBookkeeping, Recorder):
    """A recorder on the PostgreSQL database ``url`` (``postgresql://user:pw@host/db``; libpq
    URL parameters such as ``?host=/socket/dir&port=5433`` work too).

    ``lock_timeout`` bounds a wait for a lock (another writer), ``statement_timeout`` any
    statement; ``synchronous="NORMAL"`` commits with ``synchronous_commit = off`` (a crash of the
    server may lose the last commits, never corrupt), ``"FULL"`` with ``on`` whatever the
    server's default (a commit is on disk before it is acknowledged or visible). ``pool_size`` connections at most.
    """

    sql = POSTGRES
    dialect = "postgres"

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
            # Set either way: FULL's promise is not left to a default (a server, database or
            # role at off would acknowledge commits a crash loses, visible before on disk).
            + (
                " SET synchronous_commit = off;"
                if synchronous.upper() in ("NORMAL", "OFF")
                else " SET synchronous_commit = on;"
            )
        )
        self._lock_timeout = f"SET LOCAL lock_timeout = {int(lock_timeout * 1000)}"
        self._local = _Local()
        self.group = GroupCommit(self._write_now)
        self._listener: psycopg.Connection[Any] | None = None
        self._woken = threading.Condition()  # (wait: the thread reading the listener wakes others)
        self._listening = False
        self._notices = 0
        self._writer_conn: psycopg.Connection[Any] | None = None
        self._timeout = int(connect_timeout)
        # Reach the server once, directly: a wrong address or password is one clear error now.
        try:
            probe = psycopg.connect(url, autocommit=True, connect_timeout=int(connect_timeout))
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot connect to PostgreSQL as {described.split('@')[0]!r} on "
                f"{described.split('@', 1)[1]}: {first_line(exc)}"
            ) from None
        with probe:
            self._create_schema(probe)
            self.schema = str(probe.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
        self.channel = f"backstage_{self.schema}"[:63]
        #: The payload of this recorder's NOTIFYs: who wrote (a listener may skip its own).
        self.origin = uuid.uuid4().hex
        self._notice = (self.channel, self.origin)  # what every commit that stored sends
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
                conn.execute(self._lock_timeout)  # (what it must create may wait for a writer)
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.events'))"
                )
                conn.execute(SCHEMA)
                conn.execute(HISTORY_SCHEMA)
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot create the event store's tables in {self.location}: {first_line(exc)}"
            ) from exc

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None
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
                _log.warning("%s: connection lost (%s); retrying", self.location, first_line(exc))
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except psycopg.Error as exc:
                raise self._error(what, exc) from exc

    def _error(self, what: str, exc: BaseException) -> StorageError:
        if isinstance(exc, pg_errors.QueryCanceled) and "timeout" in first_line(exc):
            reason = "a statement ran past statement_timeout"
        elif isinstance(exc, pg_errors.QueryCanceled):  # pg_cancel_backend, not a timeout
            reason = f"the statement was cancelled ({first_line(exc)})"
        elif isinstance(exc, pg_errors.LockNotAvailable):
            reason = "a lock was not granted within lock_timeout"
        else:
            reason = first_line(exc)
        return StorageError(f"cannot {what} in {self.location}: {reason}")

    @contextmanager
    def transaction(self, flush: bool = True) -> Iterator[PostgresRecorder]:
        with self._session("BEGIN", "COMMIT", "commit a transaction"):
            yield self

    def snapshot(self) -> AbstractContextManager[None]:
        return self._session(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "ROLLBACK", "read a snapshot"
        )

    @contextmanager
    def _session(self, begin: str, end: str, what: str) -> Iterator[None]:
        """A transaction on a connection of the pool that every call of this thread joins
        meanwhile (nested use joins the open one): ``begin``, then ``end`` (COMMIT or
        ROLLBACK); ROLLBACK if the body raises."""
        if self._local.conn is not None:
            yield
            return
        try:
            with self._begun(begin) as conn:
                self._local.conn = conn
                try:
                    yield
                except BaseException:
                    if not conn.closed:
                        conn.execute("ROLLBACK")
                    raise
                finally:
                    self._local.conn = None
                conn.execute(end)
        except psycopg.Error as exc:
            raise self._error(what, exc) from exc

    @contextmanager
    def _begun(self, begin: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the pool on which ``begin`` ran. Nothing is done before it, so a
        connection found lost (a server restart) is replaced, until ``reconnect_timeout``."""
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.05
        while True:
            with self.pool.connection(timeout=self.reconnect_timeout) as conn:
                try:
                    conn.execute(begin)
                except psycopg.OperationalError as exc:
                    if not _lost(exc) or time.monotonic() + delay > deadline:
                        raise
                    _log.warning(
                        "%s: connection lost (%s); beginning again", self.location, first_line(exc)
                    )
                else:
                    yield conn
                    return
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

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
        """Group commit across threads (:mod:`._group_commit`): appends that arrive while a
        commit is under way wait, and the first of them then commits them all in one
        transaction (one lock, one flush)."""
        if self._local.conn is not None:  # inside the caller's transaction
            self._write_now(prepared, results, recorded_at, stamp)
            return
        self.group.write(prepared, results, recorded_at, stamp)

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
                    pg.write(
                        self._local.conn, live, results, recorded_at, stamp, None, self._notice
                    )
                    return
                pg.write(self._writer(), live, results, recorded_at, stamp, state, self._notice)
                return
            except psycopg.OperationalError as exc:
                safe = idempotent or not state["committing"]
                lost = _lost(exc) and self._local.conn is None
                if lost and self._writer_conn is not None:
                    self._writer_conn.close()
                    self._writer_conn = None
                if not (lost and safe) or time.monotonic() + delay > deadline:
                    if lost and not safe:
                        raise StorageError(
                            f"cannot append to {self.location}: the connection was lost during"
                            f" the commit, which may or may not have happened"
                            f" ({first_line(exc)}); append again with the same event ids"
                        ) from exc
                    raise self._error("append", exc) from exc
                _log.warning(
                    "%s: connection lost (%s); appending again", self.location, first_line(exc)
                )
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except psycopg.Error as exc:
                raise self._error("append", exc) from exc

    def _writer(self) -> psycopg.Connection[Any]:
        """The group commit's own connection: one leader at a time writes (see :meth:`write`),
        so one connection serves them all, without a pool's handoff per commit."""
        conn = self._writer_conn
        if conn is not None and not conn.closed and _closed_by_server(conn):
            # Closed while it sat idle (a restart, pg_terminate_backend): replaced before an
            # append is sent on it, rather than failing that append as an uncertain commit.
            conn.close()
        if conn is None or conn.closed:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=self._timeout)
            self._configure(conn)
            self._writer_conn = conn
        return conn

    # -- reading ----------------------------------------------------------------------------

    def stream_version(self, stream_id: str) -> int:
        row = self._one("read a stream's version", pg.VERSION, {"s": stream_id})
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

    def checked_page(self, after: int, limit: int, query: EventQuery) -> list[Row]:
        conditions, params = where(self.dialect, query)
        statement = checked_page_sql(self.dialect, conditions)

        def work(conn: psycopg.Connection[Any]) -> list[Row] | None:
            try:
                with conn.transaction():  # (a savepoint: the failed cast ends only it)
                    return conn.execute(statement, [after, *params, limit]).fetchall()
            except pg_errors.InvalidTextRepresentation:  # a row's JSON is broken
                return None

        rows = self._run("read events", work)
        # Which row, which column: parsed here, only for a page that holds a broken row.
        return Recorder.checked_page(self, after, limit, query) if rows is None else rows

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
            # The writers' lock first: no append commits between the version read here and the
            # delete (its events deleted, the version kept here would be the older one).
            self._run(
                "truncate a stream",
                lambda conn: conn.execute("LOCK TABLE events IN EXCLUSIVE MODE"),
            )
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
                # What no kept event can follow goes with the events (the latest stays).
                conn.execute(
                    "DELETE FROM snapshot_history WHERE stream_id = %s AND version < %s",
                    (stream_id, before_version - 1),
                )
                return int(deleted)

            return self._run("truncate a stream", work)

    def wait(self, after_position: int, timeout: float) -> bool:
        """Block until an event past ``after_position`` is committed (a NOTIFY), at most
        ``timeout`` seconds; True if there is one. Threads waiting at once share the listening
        connection: one reads it, and wakes the others at each notice (or at its timeout)."""
        if self.last_position() > after_position:
            return True
        deadline = time.monotonic() + timeout
        # A notice may be of a commit made before this call (queued since): wait on.
        while (left := deadline - time.monotonic()) > 0:
            with self._woken:
                lead = not self._listening
                if lead:
                    self._listening = True
                else:  # another thread reads the connection: it says when it read something
                    seen = self._notices
                    while self._notices == seen and (left := deadline - time.monotonic()) > 0:
                        self._woken.wait(left)
            if lead:
                try:
                    self._await_notice(left)
                finally:
                    with self._woken:
                        self._listening = False
                        self._notices += 1
                        self._woken.notify_all()
            if self.last_position() > after_position:
                return True
        return self.last_position() > after_position

    def _await_notice(self, timeout: float) -> None:
        """(One thread at a time.) Wait for a NOTIFY on the listening connection, opened if
        need be, at most ``timeout`` seconds."""
        try:
            if self._listener is None or self._listener.closed:
                self._listener = psycopg.connect(
                    self.url, autocommit=True, connect_timeout=self._timeout
                )
                self._listener.execute(f'LISTEN "{self.channel}"')
                return  # (the caller looks at the last position: a commit may precede LISTEN)
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                break
        except psycopg.OperationalError:
            self._listener = None
            time.sleep(min(0.1, timeout))  # (before opening it again)


def _closed_by_server(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server closed ``conn`` (idle, nothing pending) meanwhile: its farewell
    (a FATAL message, then the end of the stream) waits on the socket; read without waiting."""
    pgconn = conn.pgconn
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN)
    for _ in range(4):  # a message, then the end of the stream
        if not poller.poll(0):
            return False
        try:
            pgconn.consume_input()
        except psycopg.OperationalError:
            return True
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            return True
    return False


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is gone (server restart, network), not a refusal."""
    return isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, (pg_errors.QueryCanceled, pg_errors.LockNotAvailable, PoolClosed, PoolTimeout)
    )
