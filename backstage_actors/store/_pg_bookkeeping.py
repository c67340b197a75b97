"""The PostgreSQL recorder's bookkeeping beside the events (snapshots, checkpoints, dead
letters, process manager state) and the copying of whole tables. Mixed into
:class:`~.postgres.PostgresRecorder`: every method runs through its ``_run`` (retried on a lost
connection outside a transaction, errors as ``StorageError``), or joins the open transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg

from ._appending import Row
from .recorder import TABLES
from .records import DeadLetter, RecordedEvent

__all__ = ["PgBookkeeping"]

T = TypeVar("T")


class PgBookkeeping:
    def _run(
        self, what: str, work: Callable[[psycopg.Connection[Any]], T], retry: bool = True
    ) -> T:
        raise NotImplementedError

    def _all(self, what: str, query: str, params: Any = None) -> list[Row]:
        return self._run(what, lambda conn: conn.execute(query, params).fetchall())

    def _one(self, what: str, query: str, params: Any = None) -> Row | None:
        return self._run(what, lambda conn: conn.execute(query, params).fetchone())

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
            # one statement, so one transaction: the latest and its place in the history
            "WITH latest AS (INSERT INTO snapshots"
            " (stream_id, version, schema_version, type, data, taken_at)"
            " VALUES (%(s)s, %(v)s, %(sv)s, %(t)s, %(d)s, %(at)s) ON CONFLICT (stream_id) DO UPDATE SET"
            " version = excluded.version, schema_version = excluded.schema_version,"
            " type = excluded.type, data = excluded.data, taken_at = excluded.taken_at"
            " WHERE excluded.version >= snapshots.version)"
            " INSERT INTO snapshot_history (stream_id, version, schema_version, type, data, taken_at)"
            " VALUES (%(s)s, %(v)s, %(sv)s, %(t)s, %(d)s, %(at)s) ON CONFLICT (stream_id, version)"
            " DO UPDATE SET schema_version = excluded.schema_version, type = excluded.type,"
            " data = excluded.data, taken_at = excluded.taken_at",
            {"s": stream_id, "v": version, "sv": schema_version, "t": type, "d": data, "at": at},
        )

    def snapshot_row(self, stream_id: str) -> tuple[int, int, str, str, str] | None:
        row = self._one(
            "load a snapshot",
            "SELECT version, schema_version, type, data, taken_at FROM snapshots"
            " WHERE stream_id = %s",
            (stream_id,),
        )
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    def snapshot_row_at(
        self, stream_id: str, version: int, schema_version: int | None
    ) -> tuple[int, int, str, str, str] | None:
        row = self._one(
            "load a snapshot",
            "SELECT version, schema_version, type, data, taken_at FROM snapshot_history"
            " WHERE stream_id = %(s)s AND version <= %(v)s"
            " AND (%(sv)s::integer IS NULL OR schema_version = %(sv)s::integer)"
            " ORDER BY version DESC LIMIT 1",
            {"s": stream_id, "v": version, "sv": schema_version},
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
        if table == "snapshot_history":  # keyed by (stream_id, version)
            yield from self._export_by_two(select)
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

    def _export_by_two(self, select: str) -> Iterator[list[Row]]:
        rows = self._all("export rows", f"{select} ORDER BY stream_id, version LIMIT 1000")
        while rows:
            yield rows
            if len(rows) < 1000:
                return
            rows = self._all(
                "export rows",
                f"{select} WHERE (stream_id, version) > (%s, %s)"
                " ORDER BY stream_id, version LIMIT 1000",
                (rows[-1][0], rows[-1][1]),
            )

    def import_rows(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        columns = TABLES[_table(table)]
        marks = ", ".join(["%s"] * len(columns))

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
                )
            if table in ("events", "dead_letters", "rejections"):
                key = columns[0]
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{key}'),"
                    f" (SELECT coalesce(max({key}), 0) + 1 FROM {table}), false)"
                )

        self._run("import rows", work, retry=False)


def _table(name: str) -> str:
    if name not in TABLES:
        raise ValueError(f"no table {name!r} in a store")
    return name
