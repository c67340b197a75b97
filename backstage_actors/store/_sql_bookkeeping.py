"""The bookkeeping and history statements both SQL recorders run, written once.

Snapshots, checkpoints, dead letters, process manager state, rejections and history queries are
the same SQL on SQLite and PostgreSQL but for the placeholder (``?`` and ``%s``):
:class:`Statements` holds each once, in SQLite's form, and :data:`POSTGRES` is the same table with
``%s``. :class:`SQLBookkeeping` runs them through three primitives its recorder provides
(``_all``, ``_one``, ``_change``), so the recorders keep only what really differs: connections,
transactions, appending and copying. The memory recorder shares the conditions of a history
query through :func:`._queries.matches` and :func:`._queries.check_rejection_field`.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from ._appending import COLUMNS, Row, UnreadablePage, UnreadableRow
from ._queries import check_rejection_field, where
from .recorder import TABLES
from .records import DeadLetter, EventQuery, Rejection

__all__ = [
    "POSTGRES",
    "SQLITE",
    "SQLBookkeeping",
    "Statements",
    "checked_page_sql",
    "rejections_ddl",
]

_log = logging.getLogger("backstage_actors.store")

_SNAPSHOT_COLUMNS = "stream_id, version, schema_version, type, data, taken_at"
_REJECTION_COLUMNS = ", ".join(TABLES["rejections"])


def rejections_ddl(id_column: str) -> str:
    """The rejections table (every column text but the database's own ``id_column``) and its
    two indexes, for each SQL recorder's schema."""
    columns = ",\n".join(f"    {name} TEXT NOT NULL" for name in TABLES["rejections"][1:])
    return (
        f"CREATE TABLE IF NOT EXISTS rejections (\n    {id_column},\n{columns}\n);\n"
        "CREATE INDEX IF NOT EXISTS rejections_correlation ON rejections (correlation_id);\n"
        "CREATE INDEX IF NOT EXISTS rejections_command ON rejections (command_id);\n"
    )


class Statements(NamedTuple):
    """Every statement of :class:`SQLBookkeeping`, with one dialect's placeholder."""

    save_snapshot: str
    save_snapshot_history: str
    snapshot: str
    snapshot_at: str
    checkpoint: str
    save_checkpoint: str
    move_checkpoint_from_origin: str
    move_checkpoint: str
    delete_checkpoint: str
    park: str
    dead_letters: str
    set_dead_letter_status: str
    process_state: str
    delete_process: str
    save_process: str
    query_page: str
    version_at: str
    event_by_id: str
    record_rejection: str
    rejections: str

    def with_mark(self, mark: str) -> Statements:
        """The same statements with ``mark`` for every ``?`` (none holds a literal ``?``)."""
        return Statements._make(sql.replace("?", mark) for sql in self)


SQLITE = Statements(
    save_snapshot=f"INSERT INTO snapshots ({_SNAPSHOT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,"
    " schema_version = excluded.schema_version, type = excluded.type, data = excluded.data,"
    " taken_at = excluded.taken_at WHERE excluded.version >= snapshots.version",
    save_snapshot_history=f"INSERT INTO snapshot_history ({_SNAPSHOT_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream_id, version) DO UPDATE SET"
    " schema_version = excluded.schema_version, type = excluded.type, data = excluded.data,"
    " taken_at = excluded.taken_at",
    snapshot="SELECT version, schema_version, type, data, taken_at FROM snapshots"
    " WHERE stream_id = ?",
    # (the casts tell PostgreSQL the type of a NULL parameter; SQLite keeps NULL NULL)
    snapshot_at="SELECT version, schema_version, type, data, taken_at FROM snapshot_history"
    " WHERE stream_id = ? AND version <= ?"
    " AND (CAST(? AS INTEGER) IS NULL OR schema_version = CAST(? AS INTEGER))"
    " ORDER BY version DESC LIMIT 1",
    checkpoint="SELECT position FROM checkpoints WHERE name = ?",
    save_checkpoint="INSERT INTO checkpoints (name, position, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
    " updated_at = excluded.updated_at",
    # (a compare and set: a row back only if it moved from where the caller says it was)
    move_checkpoint_from_origin="INSERT INTO checkpoints (name, position, updated_at)"
    " VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
    " updated_at = excluded.updated_at WHERE checkpoints.position = 0 RETURNING position",
    move_checkpoint="UPDATE checkpoints SET position = ?, updated_at = ?"
    " WHERE name = ? AND position = ? RETURNING position",
    delete_checkpoint="DELETE FROM checkpoints WHERE name = ?",
    park=f"INSERT INTO dead_letters ({', '.join(TABLES['dead_letters'][1:])})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (subscriber, position) DO UPDATE SET error_type = excluded.error_type,"
    " error = excluded.error, traceback = excluded.traceback, failures = excluded.failures,"
    " status = excluded.status, parked_at = excluded.parked_at",
    dead_letters=f"SELECT {', '.join(TABLES['dead_letters'])} FROM dead_letters"
    " WHERE (CAST(? AS TEXT) IS NULL OR subscriber = CAST(? AS TEXT))"
    " AND (CAST(? AS TEXT) IS NULL OR status = CAST(? AS TEXT)) ORDER BY id",
    set_dead_letter_status="UPDATE dead_letters SET status = ? WHERE id = ?",
    process_state="SELECT state FROM process_managers WHERE name = ? AND process_id = ?",
    delete_process="DELETE FROM process_managers WHERE name = ? AND process_id = ?",
    save_process="INSERT INTO process_managers (name, process_id, state, updated_at)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (name, process_id) DO UPDATE SET"
    " state = excluded.state, updated_at = excluded.updated_at",
    # ({conditions}: the query's, from _queries.where, which has its own marks)
    query_page=f"SELECT {COLUMNS} FROM events WHERE position > ?{{conditions}}"
    " ORDER BY position LIMIT ?",
    version_at="SELECT max(version) FROM events WHERE stream_id = ? AND recorded_at <= ?",
    event_by_id=f"SELECT {COLUMNS} FROM events WHERE event_id = ?",
    # (a repeat of the same rejection, retried after a connection lost at its commit, stores
    # nothing: the same command, stream and moment)
    record_rejection=f"INSERT INTO rejections ({', '.join(TABLES['rejections'][1:])})"
    " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM rejections"
    " WHERE command_id = ? AND stream_id = ? AND recorded_at = ?)",
    rejections=f"SELECT {_REJECTION_COLUMNS} FROM rejections WHERE {{field}} = ? ORDER BY id",
)
# ISO 8601 text compares as time in C order only: not in an ICU collation, where '.' sorts
# before '+' (a whole second's time before its fractions): the comparison says which order.
POSTGRES = SQLITE.with_mark("%s")._replace(
    version_at="SELECT max(version) FROM events WHERE stream_id = %s"
    ' AND recorded_at COLLATE "C" <= %s'
)


class SQLBookkeeping:
    """Mixed into the SQL recorders, which provide the primitives below and :attr:`sql`."""

    sql: Statements
    dialect: str  # "sqlite" or "postgres" (for _queries.where)

    def _all(self, what: str, query: str, params: Any = None) -> list[Row]:
        raise NotImplementedError

    def _one(self, what: str, query: str, params: Any = None) -> Row | None:
        raise NotImplementedError

    def _change(self, what: str, *statements: tuple[str, Any]) -> None:
        """Run ``statements`` in one transaction (the open one, if any)."""
        raise NotImplementedError

    # -- snapshots --------------------------------------------------------------------------

    def save_snapshot(
        self, stream_id: str, version: int, schema_version: int, type: str, data: str, at: str
    ) -> None:
        params = (stream_id, version, schema_version, type, data, at)
        self._change(
            "save a snapshot",
            (self.sql.save_snapshot, params),
            (self.sql.save_snapshot_history, params),
        )

    def snapshot_row(self, stream_id: str) -> tuple[int, int, str, str, str] | None:
        row = self._one("load a snapshot", self.sql.snapshot, (stream_id,))
        row = _snapshot_readable(stream_id, row)
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    def snapshot_row_at(
        self, stream_id: str, version: int, schema_version: int | None
    ) -> tuple[int, int, str, str, str] | None:
        params = (stream_id, version, schema_version, schema_version)
        row = _snapshot_readable(
            stream_id, self._one("load a snapshot", self.sql.snapshot_at, params)
        )
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    # -- checkpoints and dead letters -------------------------------------------------------

    def checkpoint(self, name: str) -> int:
        row = self._one("read a checkpoint", self.sql.checkpoint, (name,))
        return int(row[0]) if row else 0

    def has_checkpoint(self, name: str) -> bool:
        return self._one("read a checkpoint", self.sql.checkpoint, (name,)) is not None

    def save_checkpoint(self, name: str, position: int, at: str) -> None:
        self._change("save a checkpoint", (self.sql.save_checkpoint, (name, position, at)))

    def move_checkpoint(self, name: str, position: int, expected: int, at: str) -> bool:
        if expected == 0:  # (no checkpoint yet counts as 0)
            statement = self.sql.move_checkpoint_from_origin
            params: tuple[Any, ...] = (name, position, at)
        else:
            statement, params = self.sql.move_checkpoint, (position, at, name, expected)
        return bool(self._all("move a checkpoint", statement, params))

    def delete_checkpoint(self, name: str) -> None:
        self._change("delete a checkpoint", (self.sql.delete_checkpoint, (name,)))

    def park(self, letter: DeadLetter) -> None:
        row = tuple(getattr(letter, column) for column in TABLES["dead_letters"][1:])
        self._change("park an event", (self.sql.park, row))

    def dead_letters(self, subscriber: str | None, status: str | None) -> list[DeadLetter]:
        params = (subscriber, subscriber, status, status)
        rows = self._all("read dead letters", self.sql.dead_letters, params)
        if type(rows) is UnreadablePage:
            # Kept listable and retryable (a retry needs only the id and the position): what
            # does not decode is shown with backslash escapes, and named in the log.
            _log.warning("dead letters hold text that is not UTF-8: %s", rows.error)
        return [DeadLetter(*row) for row in rows]

    def set_dead_letter_status(self, letter_id: int, status: str) -> None:
        self._change("update a dead letter", (self.sql.set_dead_letter_status, (status, letter_id)))

    # -- process manager instances ----------------------------------------------------------

    def process_state(self, name: str, process_id: str) -> str | None:
        row = self._one(
            "load a process manager's state", self.sql.process_state, (name, process_id)
        )
        if type(row) is UnreadableRow:
            raise row.error
        return str(row[0]) if row else None

    def save_process(self, name: str, process_id: str, state: str | None, at: str) -> None:
        statement: tuple[str, tuple[str, ...]]
        if state is None:
            statement = (self.sql.delete_process, (name, process_id))
        else:
            statement = (self.sql.save_process, (name, process_id, state, at))
        self._change("save a process manager's state", statement)

    # -- history ----------------------------------------------------------------------------

    def query_page(self, after: int, limit: int, query: EventQuery) -> list[Row]:
        conditions, params = where(self.dialect, query)
        statement = self.sql.query_page.format(conditions=conditions)
        return self._all("read events", statement, [after, *params, limit])

    def checked_page(self, after: int, limit: int, query: EventQuery) -> list[Row]:
        conditions, params = where(self.dialect, query)
        return self._all(
            "read events", checked_page_sql(self.dialect, conditions), [after, *params, limit]
        )

    def version_at(self, stream_id: str, at: str) -> int:
        row = self._one("read a stream's version", self.sql.version_at, (stream_id, at))
        return int(row[0] or 0) if row else 0

    def event_by_id(self, event_id: str) -> Row | None:
        return self._one("read an event", self.sql.event_by_id, (event_id,))

    def record_rejection(self, rejection: Rejection) -> None:
        row = tuple(getattr(rejection, column) for column in TABLES["rejections"][1:])
        key = (rejection.command_id, rejection.stream_id, rejection.recorded_at)
        self._change("record a rejection", (self.sql.record_rejection, row + key))

    def rejections(self, field: str, value: str) -> list[Rejection]:
        statement = self.sql.rejections.format(field=check_rejection_field(field))
        rows = _readable(self._all("read rejections", statement, (value,)))
        return [Rejection(*row) for row in rows]


# Rows holding text that is not UTF-8 (SQLite only; see sqlite._checked): an event row raises
# its error where it is decoded (decode_row), so that a reader skips or parks it alone; the
# other rows here (but dead letters: see above).


def _readable(rows: list[Row]) -> list[Row]:
    """``rows``, or the error naming those holding text that is not UTF-8."""
    if type(rows) is UnreadablePage:
        raise rows.error
    return rows


def _snapshot_readable(stream_id: str, row: Row | None) -> Row | None:
    """A snapshot holding text that is not UTF-8 is only a lost shortcut, as one whose JSON is
    broken: the stream is rebuilt from its events."""
    if type(row) is UnreadableRow:
        _log.warning("ignoring the snapshot of %r, which cannot be read: %s", stream_id, row.error)
        return None
    return row


def checked_page_sql(dialect: str, conditions: str) -> str:
    """``query_page`` with the validity column of :meth:`Recorder.checked_page`: SQLite's
    ``json_valid`` (~0.3 us an event); PostgreSQL's cast to ``json`` validates and raises on the
    first bad row (the recorder then finds them in Python: only when one is broken)."""
    if dialect == "sqlite":
        valid, mark = "json_valid(data) + 2 * json_valid(metadata)", "?"
    else:
        valid, mark = (
            "CASE WHEN data::json IS NULL OR metadata::json IS NULL THEN 0 ELSE 3 END",
            "%s",
        )
    return (
        f"SELECT {COLUMNS}, {valid} FROM events WHERE position > {mark}{conditions}"
        f" ORDER BY position LIMIT {mark}"
    )
