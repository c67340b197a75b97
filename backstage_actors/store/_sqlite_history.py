"""The SQLite recorder's history queries: filtered pages of events, a stream's version at a time,
an event by its id, and the rejections a trace shows (``backstage_actors.history``)."""

from __future__ import annotations

import sqlite3
from typing import Any

from ._appending import COLUMNS, Row
from ._queries import where
from .records import EventQuery, Rejection

__all__ = ["HISTORY_SCHEMA", "SQLiteHistory", "ensure_history_schema"]

# Created on open when missing, also in a database made before they existed.
HISTORY_SCHEMA = """
-- Commands that were refused (the aggregate raised) or failed: what a trace shows beside events.
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY,
    command_id TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    command TEXT NOT NULL,
    error_type TEXT NOT NULL,
    error TEXT NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejections_correlation ON rejections (correlation_id);
CREATE INDEX IF NOT EXISTS rejections_command ON rejections (command_id);
-- A trace finds a request's events by these two metadata fields.
-- (The expressions of _queries.field_sql, to the letter: a query uses an index only then.)
CREATE INDEX IF NOT EXISTS events_correlation
    ON events (json_extract(CASE WHEN json_valid(metadata) THEN metadata END, '$.correlation_id'));
CREATE INDEX IF NOT EXISTS events_causation
    ON events (json_extract(CASE WHEN json_valid(metadata) THEN metadata END, '$.causation_id'));
"""

_REJECTION_COLUMNS = (
    "id, command_id, correlation_id, causation_id, stream_id, command, error_type, error,"
    " metadata, recorded_at"
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


class SQLiteHistory:
    """Mixed into :class:`~.sqlite.SQLiteRecorder`."""

    conn: sqlite3.Connection

    def query_page(self, after: int, limit: int, query: EventQuery) -> list[Row]:
        conditions, params = where("sqlite", query)
        return self.conn.execute(
            f"SELECT {COLUMNS} FROM events WHERE position > ?{conditions}"
            " ORDER BY position LIMIT ?",
            [after, *params, limit],
        ).fetchall()

    def version_at(self, stream_id: str, at: str) -> int:
        row = self.conn.execute(
            "SELECT max(version) FROM events WHERE stream_id = ? AND recorded_at <= ?",
            (stream_id, at),
        ).fetchone()
        return int(row[0] or 0)

    def event_by_id(self, event_id: str) -> Row | None:
        row: Row | None = self.conn.execute(
            f"SELECT {COLUMNS} FROM events WHERE event_id = ?", (event_id,)
        ).fetchone()
        return row

    def record_rejection(
        self,
        command_id: str,
        correlation_id: str,
        causation_id: str,
        stream_id: str,
        command: str,
        error_type: str,
        error: str,
        metadata: str,
        at: str,
    ) -> None:
        with self.transaction():  # type: ignore[attr-defined]
            self.conn.execute(
                "INSERT INTO rejections (command_id, correlation_id, causation_id, stream_id,"
                " command, error_type, error, metadata, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    command_id,
                    correlation_id,
                    causation_id,
                    stream_id,
                    command,
                    error_type,
                    error,
                    metadata,
                    at,
                ),
            )

    def rejections(self, field: str, value: str) -> list[Rejection]:
        column = _rejection_field(field)
        rows: list[Any] = self.conn.execute(
            f"SELECT {_REJECTION_COLUMNS} FROM rejections WHERE {column} = ? ORDER BY id",
            (value,),
        ).fetchall()
        return [Rejection(*row) for row in rows]


def _rejection_field(field: str) -> str:
    if field not in ("correlation_id", "command_id"):
        raise ValueError(f"rejections are found by correlation_id or command_id, not {field!r}")
    return field
