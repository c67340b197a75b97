"""The PostgreSQL recorder's primitives for the bookkeeping both SQL recorders share
(:mod:`._sql_bookkeeping`: snapshots, checkpoints, dead letters, process manager state, history),
and the copying of whole tables. Mixed into :class:`~.postgres.PostgresRecorder`: every method
runs through its ``_run`` (retried on a lost connection outside a transaction, errors as
``StorageError``), or joins the open transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg

from ._appending import Row
from .recorder import TABLES

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

    def _change(self, what: str, *statements: tuple[str, Any]) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            if len(statements) == 1:
                conn.execute(*statements[0])
                return
            with conn.transaction():  # (a savepoint inside an open transaction)
                for query, params in statements:
                    conn.execute(query, params)

        self._run(what, work)

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
        # Pages by key (keyset pagination): snapshot_history is keyed by (stream_id, version),
        # the other tables by their first column.
        keys = columns[:2] if table == "snapshot_history" else columns[:1]
        order, holes = ", ".join(keys), ", ".join(["%s"] * len(keys))
        rows = self._all("export rows", f"{select} ORDER BY {order} LIMIT 1000")
        while rows:
            yield rows
            if len(rows) < 1000:
                return
            rows = self._all(
                "export rows",
                f"{select} WHERE ({order}) > ({holes}) ORDER BY {order} LIMIT 1000",
                tuple(rows[-1][: len(keys)]),
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

    def next_position(self) -> int:
        def work(conn: psycopg.Connection[Any]) -> int:
            named = conn.execute("SELECT pg_get_serial_sequence('events', 'position')").fetchone()
            assert named is not None
            row = conn.execute(
                f"SELECT last_value, is_called FROM {named[0]}"  # (a name PostgreSQL gave)
            ).fetchone()
            top = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()
            assert row is not None and top is not None
            last, called = int(row[0]), bool(row[1])
            return max(last + 1 if called else last, int(top[0]) + 1)

        return self._run("read the next position", work)

    def reserve_positions(self, next_position: int) -> None:
        wanted = max(next_position, self.next_position())
        self._run(
            "reserve positions",
            lambda conn: conn.execute(
                "SELECT setval(pg_get_serial_sequence('events', 'position'), %s, false)",
                (wanted,),
            ),
            retry=False,
        )


def _table(name: str) -> str:
    if name not in TABLES:
        raise ValueError(f"no table {name!r} in a store")
    return name
