"""A subscriber's lease in PostgreSQL: a session-level advisory lock keyed by its name.

Why a lock and not a table of leases: the lock lives exactly as long as the connection that
took it. A member that dies (SIGKILL, power cut) loses its connection and with it every lease,
at once and without a timeout of our own; the server forgets it. A member partitioned from the
server loses it when the server's TCP keepalive gives up (set below: about 10 s), and notices
itself at its next :meth:`Lease.still_held` check, which fails on a dead connection.

The invariant: at most one connection holds the lock of a ``(schema, application, subscriber)``,
so at most one live member runs that subscriber's loop against the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Any

from ._protocol import Settings
from .store import is_postgres

try:
    import psycopg
except ImportError:  # the optional extra `postgres`: leases exist only on PostgreSQL stores
    psycopg = None  # type: ignore[assignment]

__all__ = [
    "MEMBER_LEASE",
    "RETRY_INTERVAL",
    "Lease",
    "lease_for",
    "lease_key",
    "leases_held",
    "member_lease",
]

MEMBER_LEASE = "member:"  # a member's own lease: held while it lives (see _cluster)
HELD = (
    "SELECT classid::int8, objid::int8 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND objsubid = 1 AND database = (SELECT oid FROM pg_database"
    " WHERE datname = current_database())"
)
HOLDERS = (
    "SELECT a.application_name, l.classid::int8, l.objid::int8 FROM pg_locks l"
    " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
    " AND l.objsubid = 1"
)

RETRY_INTERVAL = 0.5  # seconds between attempts of a member that does not hold the lease


def log() -> logging.Logger:
    return logging.getLogger("backstage.lease")


def lease_key(schema: str, app_name: str, name: str) -> int:
    """The advisory lock's key: a signed 64-bit hash of where and whose the subscriber is."""
    digest = hashlib.blake2b(f"{schema}\x00{app_name}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lease_for(settings: Settings, name: str) -> Lease | None:
    """The lease a subscriber must hold to run, or None where there is none to hold (SQLite
    and memory stores have one writer per database: that application runs every subscriber)."""
    if not is_postgres(settings.database):
        return None
    return Lease(settings.database, settings.app_name, name, settings.member)


def leases_held(database: str, app_name: str, names: list[str]) -> dict[str, list[str]]:
    """Which member holds which of the leases ``names`` of ``app_name`` now (and each member
    its own lease, ``member:HOST:PORT``): ``{member: [name, ...]}``, from the server's locks
    and the connections' ``application_name`` (``backstage HOST:PORT``). For ``members``."""
    with psycopg.connect(database, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_schema()").fetchone()
        schema = row[0] if row else "public"
        rows = conn.execute(HOLDERS).fetchall()
    unsigned = 0xFFFF_FFFF_FFFF_FFFF
    held: dict[str, list[str]] = {}
    for application, high, low in rows:
        if not str(application).startswith("backstage "):
            continue
        member = str(application).removeprefix("backstage ")
        key = (high << 32) | low
        for name in [*names, MEMBER_LEASE + member]:
            if lease_key(schema, app_name, name) & unsigned == key:
                held.setdefault(member, []).append(name)
    return held


def member_lease(database: str, app_name: str, member: str) -> Lease:
    """The lease a cluster member holds as long as it lives: others read its liveness from it
    (:meth:`Lease.held_among`), faster than the convention's missed registrations."""
    return Lease(database, app_name, MEMBER_LEASE + member, member)


class Lease:
    """The right to run the subscriber ``name`` of ``app_name`` on the database ``url``.

    :meth:`try_acquire` never blocks (``pg_try_advisory_lock``); a member that does not get it
    calls again later. :meth:`release` gives it up (or :meth:`close`, which also drops the
    connection). Errors reaching the server count as "not held": a member that cannot reach the
    store cannot run the subscriber anyway.
    """

    def __init__(self, url: str, app_name: str, name: str, member: str | None = None) -> None:
        self.url = url
        self.app_name = app_name
        self.name = name
        self.member = member  # the connection's application_name names it (who holds what)
        self.schema = "public"
        self.held = False
        self._conn: psycopg.Connection[Any] | None = None
        self._key: int | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=5,
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
                application_name=f"backstage {self.member or '-'}"[:63],
            )
            # The keepalives above are the client's socket's: they let this member notice a
            # cut. The server holds the lock until *its* socket gives up, which by the OS's
            # defaults takes hours (an idle connection: tcp_keepalive_time 7200 s) or ~15 min
            # (a reply unacknowledged: tcp_retries2). Ask the server for the same bounds.
            self._conn.execute(
                "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2;"
                " SET tcp_keepalives_count = 3; SET tcp_user_timeout = 10000"
            )
            row = self._conn.execute("SELECT current_schema()").fetchone()
            self.schema = row[0] if row else "public"
            self._key = lease_key(self.schema, self.app_name, self.name)
        return self._conn

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True if this member holds it now."""
        if self.held:
            return self.still_held()
        try:
            conn = self._connection()
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
        except psycopg.Error as exc:
            log().warning("lease %s: cannot reach the store: %s", self.name, exc)
            self._drop()
            return False
        self.held = bool(row and row[0])
        if self.held:
            log().info("lease %s taken", self.name)
        return self.held

    def still_held(self) -> bool:
        """Whether the connection holding the lease is still alive (one round trip)."""
        if not self.held or self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            log().warning("lease %s lost: its connection to the store failed", self.name)
            self._drop()
            return False
        return True

    def held_among(self, names: list[str]) -> set[str] | None:
        """Which of the leases ``names`` (of this application) some connection holds now; None
        if the store cannot be asked (one round trip)."""
        try:
            conn = self._connection()
            rows = conn.execute(HELD).fetchall()
        except psycopg.Error as exc:
            log().warning("lease %s: cannot read the leases: %s", self.name, exc)
            self._drop()
            return None
        taken = {(high << 32) | low for high, low in rows}
        unsigned = 0xFFFF_FFFF_FFFF_FFFF
        return {
            name
            for name in names
            if lease_key(self.schema, self.app_name, name) & unsigned in taken
        }

    def release(self) -> None:
        if self.held and self._conn is not None:
            with contextlib.suppress(psycopg.Error):  # gone: the lock went with it
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
        self.held = False

    def close(self) -> None:
        self.held = False
        self._drop()

    def _drop(self) -> None:
        self.held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
