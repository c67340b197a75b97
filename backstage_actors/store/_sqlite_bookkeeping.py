"""The store's bookkeeping beside the events: snapshots, checkpoints, dead letters, and the state
of process manager instances. Mixed into :class:`~backstage_actors.store.EventStore`; every
method is one short transaction on the store's connection.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from .. import _serialization as ser
from .records import DeadLetter, RecordedEvent, Snapshot

__all__ = ["Bookkeeping"]


class Bookkeeping:
    conn: sqlite3.Connection

    def transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    # -- snapshots --------------------------------------------------------------------------

    def save_snapshot(
        self, stream_id: str, version: int, state: Any, schema_version: int = 1, type: str = ""
    ) -> None:
        """Store the latest snapshot of ``stream_id`` (replacing an older one)."""
        text = ser.dumps(state, f"snapshot of {stream_id}")
        with self.transaction():
            self.conn.execute(
                "INSERT INTO snapshots (stream_id, version, schema_version, type, data, taken_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET"
                " version = excluded.version, schema_version = excluded.schema_version,"
                " type = excluded.type, data = excluded.data, taken_at = excluded.taken_at"
                " WHERE excluded.version >= snapshots.version",
                (stream_id, version, schema_version, type, text, _now()),
            )

    def load_snapshot(self, stream_id: str, schema_version: int | None = None) -> Snapshot | None:
        """The latest snapshot, or None (also when it was taken with another ``schema_version``)."""
        row = self.conn.execute(
            "SELECT version, schema_version, type, data, taken_at FROM snapshots WHERE stream_id = ?",
            (stream_id,),
        ).fetchone()
        if row is None or (schema_version is not None and row[1] != schema_version):
            return None
        try:
            state = json.loads(row[3])
        except ValueError:
            return None  # a broken snapshot is only a lost shortcut: rebuild from the events
        return Snapshot(stream_id, row[0], row[1], row[2], state, datetime.fromisoformat(row[4]))

    # -- checkpoints and dead letters -------------------------------------------------------

    def checkpoint(self, name: str) -> int:
        """The last position ``name`` processed (0 if none)."""
        row = self.conn.execute(
            "SELECT position FROM checkpoints WHERE name = ?", (name,)
        ).fetchone()
        return int(row[0]) if row else 0

    def save_checkpoint(self, name: str, position: int) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO checkpoints (name, position, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
                " updated_at = excluded.updated_at",
                (name, position, _now()),
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
        status: str = "parked",
    ) -> None:
        """Record that ``subscriber`` gave up on ``event`` (a dead letter)."""
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
                    _now(),
                ),
            )

    def dead_letters(
        self, subscriber: str | None = None, status: str | None = "parked"
    ) -> list[DeadLetter]:
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

    def load_process(self, name: str, process_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT state FROM process_managers WHERE name = ? AND process_id = ?",
            (name, process_id),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def save_process(self, name: str, process_id: str, state: dict[str, Any] | None) -> None:
        """Save an instance's state (None deletes it: the process stopped)."""
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
                (name, process_id, ser.dumps(state, f"{name} state"), _now()),
            )


def _now() -> str:
    return datetime.now(UTC).isoformat()
