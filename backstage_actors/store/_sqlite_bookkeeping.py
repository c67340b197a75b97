"""The SQLite recorder's bookkeeping beside the events: snapshots, checkpoints, dead letters, and
the state of process manager instances. Mixed into :class:`~.sqlite.SQLiteRecorder`; every method
is one short transaction on the recorder's connection (or joins the open one).
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Any

from .records import DeadLetter, RecordedEvent

__all__ = ["Bookkeeping"]


class Bookkeeping:
    conn: sqlite3.Connection

    def transaction(self, flush: bool = True) -> AbstractContextManager[Any]:
        raise NotImplementedError

    # -- snapshots --------------------------------------------------------------------------

    def save_snapshot(
        self, stream_id: str, version: int, schema_version: int, type: str, data: str, at: str
    ) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO snapshots (stream_id, version, schema_version, type, data, taken_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET"
                " version = excluded.version, schema_version = excluded.schema_version,"
                " type = excluded.type, data = excluded.data, taken_at = excluded.taken_at"
                " WHERE excluded.version >= snapshots.version",
                (stream_id, version, schema_version, type, data, at),
            )
            self.conn.execute(
                "INSERT OR REPLACE INTO snapshot_history"
                " (stream_id, version, schema_version, type, data, taken_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (stream_id, version, schema_version, type, data, at),
            )

    def snapshot_row(self, stream_id: str) -> tuple[int, int, str, str, str] | None:
        row = self.conn.execute(
            "SELECT version, schema_version, type, data, taken_at FROM snapshots WHERE stream_id = ?",
            (stream_id,),
        ).fetchone()
        return None if row is None else tuple(row)

    def snapshot_row_at(
        self, stream_id: str, version: int, schema_version: int | None
    ) -> tuple[int, int, str, str, str] | None:
        row = self.conn.execute(
            "SELECT version, schema_version, type, data, taken_at FROM snapshot_history"
            " WHERE stream_id = ? AND version <= ? AND (? IS NULL OR schema_version = ?)"
            " ORDER BY version DESC LIMIT 1",
            (stream_id, version, schema_version, schema_version),
        ).fetchone()
        return None if row is None else tuple(row)

    # -- checkpoints and dead letters -------------------------------------------------------

    def checkpoint(self, name: str) -> int:
        row = self.conn.execute(
            "SELECT position FROM checkpoints WHERE name = ?", (name,)
        ).fetchone()
        return int(row[0]) if row else 0

    def save_checkpoint(self, name: str, position: int, at: str) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO checkpoints (name, position, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
                " updated_at = excluded.updated_at",
                (name, position, at),
            )

    def delete_checkpoint(self, name: str) -> None:
        with self.transaction():
            self.conn.execute("DELETE FROM checkpoints WHERE name = ?", (name,))

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
        with self.transaction():
            self.conn.execute(
                "INSERT INTO dead_letters (subscriber, position, event_id, stream_id, version, type,"
                " error_type, error, traceback, failures, status, parked_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
        query = "SELECT * FROM dead_letters WHERE 1 = 1"
        params: list[Any] = []
        if subscriber is not None:
            query += " AND subscriber = ?"
            params.append(subscriber)
        if status is not None:
            query += " AND status = ?"
            params.append(status)
        cursor = self.conn.execute(query + " ORDER BY id", params)
        names = [d[0] for d in cursor.description]
        return [DeadLetter(**dict(zip(names, row, strict=True))) for row in cursor.fetchall()]

    def set_dead_letter_status(self, letter_id: int, status: str) -> None:
        with self.transaction():
            self.conn.execute(
                "UPDATE dead_letters SET status = ? WHERE id = ?", (status, letter_id)
            )

    # -- process manager instances ----------------------------------------------------------

    def process_state(self, name: str, process_id: str) -> str | None:
        row = self.conn.execute(
            "SELECT state FROM process_managers WHERE name = ? AND process_id = ?",
            (name, process_id),
        ).fetchone()
        return str(row[0]) if row else None

    def save_process(self, name: str, process_id: str, state: str | None, at: str) -> None:
        with self.transaction():
            if state is None:
                self.conn.execute(
                    "DELETE FROM process_managers WHERE name = ? AND process_id = ?",
                    (name, process_id),
                )
                return
            self.conn.execute(
                "INSERT INTO process_managers (name, process_id, state, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name, process_id) DO UPDATE SET state = excluded.state,"
                " updated_at = excluded.updated_at",
                (name, process_id, state, at),
            )
