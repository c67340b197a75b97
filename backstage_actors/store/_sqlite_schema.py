"""The SQLite schema: plain tables a user can open in any SQLite tool and understand."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

import sqlite_utils

from .. import _security
from ._sql_bookkeeping import rejections_ddl

__all__ = [
    "HISTORY_SCHEMA",
    "SCHEMA",
    "SNAPSHOT_HISTORY",
    "Database",
    "ensure_history_schema",
    "open_database",
]

# Every snapshot kept, beside the latest (in SCHEMA, and in SNAPSHOT_HISTORY for a database made
# before the table existed).
_SNAPSHOT_HISTORY_TABLE = """
CREATE TABLE IF NOT EXISTS snapshot_history (
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    taken_at TEXT NOT NULL,
    PRIMARY KEY (stream_id, version)
);
"""

SCHEMA = (
    """
-- Every event ever appended, in the order it was committed. `position` is global and never reused
-- (AUTOINCREMENT), `version` counts within the stream, `data` and `metadata` are JSON.
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    schema_version INTEGER NOT NULL DEFAULT 1,
    topic TEXT,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    UNIQUE (stream_id, version)
);
-- A stream's version is that of its last event; a row here keeps it when truncate_stream deleted
-- the events (a stream's version never goes back).
CREATE TABLE IF NOT EXISTS streams (
    stream_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    truncated_before INTEGER NOT NULL DEFAULT 0
);
-- The latest snapshot of an aggregate; a snapshot of another schema_version is ignored.
CREATE TABLE IF NOT EXISTS snapshots (
    stream_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    taken_at TEXT NOT NULL
);
-- Every snapshot kept, beside the latest: `state_of` a past version starts from the one at or
-- before it.
"""
    + _SNAPSHOT_HISTORY_TABLE
    + """-- How far each handler, projection and process manager has processed `events`.
CREATE TABLE IF NOT EXISTS checkpoints (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
-- Events a subscriber gave up on, with why; `status` is parked, retried or skipped (rebuilt:
-- its projection was rebuilt since; replayed: its page never committed, the event came again;
-- truncated: truncate_stream deleted its event, found by a retry).
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    subscriber TEXT NOT NULL,
    position INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    error_type TEXT NOT NULL,
    error TEXT NOT NULL,
    traceback TEXT NOT NULL,
    failures INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'parked',
    parked_at TEXT NOT NULL,
    UNIQUE (subscriber, position)
);
-- The state of each running process manager instance, saved with its checkpoint.
CREATE TABLE IF NOT EXISTS process_managers (
    name TEXT NOT NULL,
    process_id TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (name, process_id)
);
"""
)

# Run on open when the table is missing: a database made before it existed gets it, with the
# latest snapshot of each stream as the start of its history (idempotent, in one transaction).
SNAPSHOT_HISTORY = (
    """
BEGIN IMMEDIATE;
"""
    + _SNAPSHOT_HISTORY_TABLE
    + """INSERT OR IGNORE INTO snapshot_history (stream_id, version, schema_version, type, data, taken_at)
    SELECT stream_id, version, schema_version, type, data, taken_at FROM snapshots;
COMMIT;
"""
)


class Database(sqlite_utils.Database):
    """sqlite-utils' Database whose write transactions take the write lock up front.

    sqlite-utils opens a plain (deferred) ``BEGIN``; when a statement reads before it writes and
    another process commits in between, SQLite refuses the upgrade at once ("database is
    locked") instead of waiting. ``BEGIN IMMEDIATE`` waits for the lock (``busy_timeout``).
    """

    @contextlib.contextmanager
    def atomic(self) -> Iterator[sqlite_utils.Database]:
        if self.conn.in_transaction:
            with super().atomic() as db:
                yield db
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise


def open_database(
    path: str, synchronous: str = "FULL", busy_timeout: float = 10.0
) -> sqlite_utils.Database:
    """A ``sqlite_utils.Database`` on ``path`` in WAL mode, in autocommit mode between transactions.

    Autocommit lets the store open ``BEGIN IMMEDIATE`` itself, taking the write lock before it
    reads the stream version, so two processes never both pass the same version check.
    """
    if synchronous.upper() not in ("FULL", "NORMAL", "OFF", "EXTRA"):
        raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
    if path != ":memory:" and not path.startswith("file:"):
        # 0600 whatever the umask: SQLite gives the -wal and -shm files the database's mode.
        _security.create_database_files(path)  # (and refuses others' in a shared directory)
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal" and path != ":memory:":
        conn.close()
        raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode (got {mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    db = Database(conn)
    if not db["process_managers"].exists():
        conn.executescript(SCHEMA)
    elif not db["snapshot_history"].exists():
        conn.executescript(SNAPSHOT_HISTORY)
    return db


# Created on open when missing, also in a database made before they existed.
HISTORY_SCHEMA = (
    rejections_ddl("id INTEGER PRIMARY KEY")
    + """
-- A trace finds a request's events by these two metadata fields.
-- (The expressions of _queries.field_sql, to the letter: a query uses an index only then.)
CREATE INDEX IF NOT EXISTS events_correlation
    ON events (json_extract(CASE WHEN json_valid(metadata) THEN metadata END, '$.correlation_id'));
CREATE INDEX IF NOT EXISTS events_causation
    ON events (json_extract(CASE WHEN json_valid(metadata) THEN metadata END, '$.causation_id'));
"""
)


def ensure_history_schema(conn: sqlite3.Connection) -> None:
    """The rejections table and the metadata indexes, unless the database has them (the check is
    one read: a database opened again does not take the write lock)."""
    found = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE name IN"
        " ('rejections', 'events_correlation', 'events_causation')"
    ).fetchone()[0]
    if found < 3:
        conn.executescript(HISTORY_SCHEMA)
