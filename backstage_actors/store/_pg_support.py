"""What goes with the PostgreSQL recorder: URLs described without their password, the handle
projections write through, and the listening connection the event bus watches.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.conninfo
import psycopg.sql

from ..errors import StorageError

if TYPE_CHECKING:
    from .postgres import PostgresRecorder

__all__ = ["Listener", "PostgresHandle", "describe_url", "first_line"]


def describe_url(url: str) -> tuple[str, dict[str, str]]:
    """``user@host:port/dbname`` for messages (no password), and the parsed connection info."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StorageError(f"not a PostgreSQL URL ({first_line(exc)})") from None
    params = {k: str(v) for k, v in info.items() if v is not None}
    user = params.get("user") or _default_user()
    host = params.get("host") or "localhost (default socket)"
    port = params.get("port") or "5432"
    db = params.get("dbname") or user
    return f"{user}@{host}:{port}/{db}", params


def _default_user() -> str:
    return getpass.getuser()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


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
                f"cannot listen for commits on postgresql://{described}: {first_line(exc)}"
            ) from None

    def fileno(self) -> int:
        return self.conn.pgconn.socket

    def drain(self, ignore: str | None = None) -> int:
        """Take every notification that arrived: the highest position they name (a commit's
        payload is ``"origin position"``), or the last position stored if one names none; 0
        when there was none, not counting those of the recorder whose
        :attr:`~.postgres.PostgresRecorder.origin` is ``ignore``. Raises :class:`StorageError`
        when the connection is gone."""
        pgconn = self.conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            raise StorageError(f"the listening connection is gone: {first_line(exc)}") from exc
        position, unnamed = 0, False
        while (notify := pgconn.notifies()) is not None:
            origin, _, named = notify.extra.decode().partition(" ")
            if ignore is None or origin != ignore:
                if named.isdigit():
                    position = max(position, int(named))
                else:
                    unnamed = True
        return self.last_position() if unnamed else position

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
