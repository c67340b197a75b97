"""What ``synchronous`` means on PostgreSQL, whatever the server, role or URL says by default.

``FULL`` (the default) promises that an acknowledged event survives a power cut: PostgreSQL then
flushes a commit's WAL before the commit is visible or acknowledged. That is
``synchronous_commit = on``, which the recorder left to the server's default: a server, database
or role set to ``off`` (a common tuning), or ``-c synchronous_commit=off`` in the URL, made FULL
acknowledge commits a crash of the server can lose, and other sessions see them before they are
on disk. ``NORMAL`` is ``off``, as before."""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest

from backstage_actors.store import EventStore

from .store_conformance import ConfDeposited


def _defaulting_to_off(pg_server: Any) -> str:
    """A URL on a fresh schema whose sessions start with ``synchronous_commit = off``."""
    url = pg_server.dsn(pg_server.new_schema())
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query["options"] += " -csynchronous_commit=off"
    return urllib.parse.urlunsplit(
        parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote))
    )


def _in_force(store: EventStore) -> set[str]:
    """``synchronous_commit`` on the connections the store appends and reads through."""
    recorder: Any = store.recorder
    seen = set()
    with recorder.pool.connection() as conn:
        seen.add(conn.execute("SHOW synchronous_commit").fetchone()[0])
    writer = recorder._writer_conn
    if writer is not None:
        seen.add(writer.execute("SHOW synchronous_commit").fetchone()[0])
    return seen


@pytest.mark.parametrize(("synchronous", "expected"), [("FULL", "on"), ("NORMAL", "off")])
def test_synchronous_sets_synchronous_commit_whatever_the_default(
    pg_server: Any, synchronous: str, expected: str
) -> None:
    url = _defaulting_to_off(pg_server)
    with EventStore(url, synchronous) as store:
        store.append("acct-1", [ConfDeposited("a", 1)])  # (through the writer's connection)
        assert _in_force(store) == {expected}
