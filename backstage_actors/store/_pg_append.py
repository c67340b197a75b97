"""The PostgreSQL recorder's appending: its statements, :func:`write` (one group commit's
appends on one connection, decided under the events lock), and the helpers that turn results
into each append's outcome.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs
import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from ..errors import BackstageError, WrongExpectedVersion
from . import _appending as ap
from ._appending import COLUMNS, Failed, Results, Row
from .recorder import TABLES
from .records import AppendRequest, RecordedEvent

__all__ = [
    "INSERT",
    "NOTIFY",
    "ROWS",
    "ROW_FIELDS",
    "VERSION",
    "VERSIONS",
    "already_stored",
    "expects_versions",
    "fill",
    "result_sets",
    "rows_json",
    "write",
]

VERSIONS = (
    "SELECT s.id, (SELECT max(version) FROM events WHERE stream_id = s.id),"
    " (SELECT version FROM streams WHERE stream_id = s.id) FROM unnest(%s::text[]) AS s(id)"
)
VERSION = (
    "SELECT (SELECT max(version) FROM events WHERE stream_id = %(s)s),"
    " (SELECT version FROM streams WHERE stream_id = %(s)s)"
)
# The rows of an append as one JSON parameter (quoted by the json module in C, and read by the
# server in one pass: json_to_recordset costs ~40% less server CPU than picking each field of an
# array of arrays with ->>).
ROW_FIELDS = TABLES["events"][1:]  # (every column but the position)
ROWS = (
    "SELECT * FROM json_to_recordset(%s::json) AS r(event_id text, stream_id text,"
    " version bigint, type text, schema_version int, topic text, data text, metadata text,"
    " recorded_at text)"
)
# In the writer's transaction, under its lock: the last position is the commit's own.
NOTIFY = "SELECT pg_notify(%s, %s || ' ' || (SELECT max(position) FROM events))"
INSERT = f"INSERT INTO events ({', '.join(ROW_FIELDS)}) {ROWS} RETURNING position, event_id"


def rows_json(rows: list[tuple[Any, ...]]) -> str:
    """``rows`` (in :data:`ROW_FIELDS` order) as the JSON :data:`ROWS` and ``backstage_append``
    read."""
    return json.dumps([dict(zip(ROW_FIELDS, row, strict=True)) for row in rows])


def expects_versions(live: list[tuple[int, tuple[AppendRequest, list[Any]]]]) -> bool:
    """Whether every append names an exact version of a stream no other append of the batch
    writes, and stores something."""
    streams = set()
    for _, (request, encoded) in live:
        expected = request.expected_version
        if not encoded or isinstance(expected, bool) or not isinstance(expected, int):
            return False
        if request.stream_id in streams:
            return False
        streams.add(request.stream_id)
    return True


def result_sets(cursor: psycopg.ClientCursor[Any]) -> list[list[Any]]:
    """The rows of each statement of a multi-statement query ([] for one without rows)."""
    sets: list[list[Any]] = []
    while True:
        sets.append(cursor.fetchall() if cursor.description else [])
        if not cursor.nextset():
            return sets


def fill(
    results: Results,
    planned: list[tuple[int, str, list[Any], list[str], int, dict[str, Any]]],
    positions: dict[str, int],
    recorded_at: datetime,
) -> None:
    """Each planned append's recorded events, with the positions the insert returned."""
    for index, stream_id, encoded, ids, current, metadata in planned:
        first = positions[ids[0]]
        recorded = ap.recorded(ids, stream_id, current, first, encoded, metadata, recorded_at)
        if any(positions[e.event_id] != e.position for e in recorded):  # (rows out of order)
            recorded = [attrs.evolve(e, position=positions[e.event_id]) for e in recorded]
        results[index] = recorded


def already_stored(
    stored: dict[str, Row], stream_id: str, event_ids: Sequence[str] | None
) -> list[RecordedEvent] | None:
    if not event_ids:
        return None
    rows = [stored.get(i) for i in event_ids]
    if all(r is not None and r[2] == stream_id for r in rows):
        return [ap.decode_row(r) for r in sorted(rows, key=lambda r: r[0])]  # type: ignore[index,arg-type]
    return None


def write(
    conn: psycopg.Connection[Any],
    live: list[tuple[int, tuple[AppendRequest, list[Any]]]],
    results: Results,
    recorded_at: datetime,
    stamp: str,
    state: dict[str, bool] | None,
    notice: tuple[str, str],
) -> None:
    """One round trip when every append names the version it expects (what aggregates
    do), else two: BEGIN, the lock and the streams' state; then, decided here, the rows,
    the NOTIFY and COMMIT. Statements go together as one simple query (client-side
    binding), the cheapest way through psycopg."""
    own = state is not None
    if own and expects_versions(live):
        assert state is not None
        if _write_expected(conn, live, results, recorded_at, stamp, state, notice):
            return
        state["committing"] = False
    cursor = psycopg.ClientCursor(conn)
    streams = list(dict.fromkeys(request.stream_id for _, (request, _) in live))
    named = [i for _, (request, _) in live for i in (request.event_ids or [])]
    head = [*(["BEGIN"] if own else []), "LOCK TABLE events IN EXCLUSIVE MODE", VERSIONS]
    params: list[Any] = [streams]
    if named:
        head.append(f"SELECT {COLUMNS} FROM events WHERE event_id = ANY(%s)")
        params.append(named)
    try:
        cursor.execute("; ".join(head), params)
        sets = result_sets(cursor)
        stored = {row[1]: row for row in sets[-1]} if named else {}
        version_rows = sets[-2] if named else sets[-1]
        versions = {
            stream_id: ap.stream_state(last_event, kept)
            for stream_id, last_event, kept in version_rows
        }
        planned, rows = _plan(live, results, versions, stored, stamp)
        tail: list[str] = []
        params = []
        if planned:
            tail += [INSERT, NOTIFY]
            params += [rows_json(rows), *notice]
        if own:
            assert state is not None
            state["committing"] = True
            tail.append("COMMIT")
        sets = []
        if tail:
            cursor.execute("; ".join(tail), params)
            sets = result_sets(cursor)
    except BaseException:
        if own and not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        raise
    if planned:
        fill(results, planned, dict((event_id, p) for p, event_id in sets[0]), recorded_at)


def _write_expected(
    conn: psycopg.Connection[Any],
    live: list[tuple[int, tuple[AppendRequest, list[Any]]]],
    results: Results,
    recorded_at: datetime,
    stamp: str,
    state: dict[str, bool],
    notice: tuple[str, str],
) -> bool:
    """Appends that each name their stream's version (streams distinct): one call of the
    schema's ``backstage_append`` function (a prepared statement, its own transaction): the
    lock, then every row inserted only if every stream is at the version its append expects,
    and the NOTIFY.
    False, with nothing stored, when one is not (or an event id exists): then the careful
    way decides each append on its own."""
    planned: list[tuple[int, str, list[Any], list[str], int, dict[str, Any]]] = []
    rows: list[tuple[Any, ...]] = []
    expected: list[tuple[str, int]] = []
    for index, (request, encoded) in live:
        current = int(request.expected_version)  # type: ignore[arg-type]
        ids = ap.event_ids(request, len(encoded))
        try:
            metadata, meta_text = ap.metadata(request)
        except BackstageError:
            return False
        rows += ap.rows(ids, request.stream_id, current, encoded, meta_text, stamp)
        planned.append((index, request.stream_id, encoded, ids, current, metadata))
        expected.append((request.stream_id, current))
    state["committing"] = True
    try:
        inserted = conn.execute(
            "SELECT * FROM backstage_append(%s::json, %s::json, %s, %s)",
            (rows_json(rows), json.dumps(expected), *notice),
        ).fetchall()
    except pg_errors.UniqueViolation:  # an event id already stored: the careful way
        return False
    if len(inserted) != len(rows):
        return False  # a stream was elsewhere: nothing was stored
    fill(results, planned, {event_id: p for p, event_id in inserted}, recorded_at)
    return True


def _plan(
    live: list[tuple[int, tuple[AppendRequest, list[Any]]]],
    results: Results,
    versions: dict[str, tuple[bool, int]],
    stored: dict[str, Row],
    stamp: str,
) -> tuple[list[tuple[int, str, list[Any], list[str], int, dict[str, Any]]], list[tuple[Any, ...]]]:
    """Decide every append under the lock: each outcome that needs no row goes to
    ``results``; the others come back planned, with the columns of their rows."""
    failed: Failed = {}
    planned: list[tuple[int, str, list[Any], list[str], int, dict[str, Any]]] = []
    rows: list[tuple[Any, ...]] = []
    taken: set[str] = set()
    for index, (request, encoded) in live:
        stream_id = request.stream_id
        if ap.counted_on(failed, request):
            results[index] = ap.after_failure(failed, request)
            continue
        exists, current = versions.get(stream_id, (False, 0))
        repeat = already_stored(stored, stream_id, request.event_ids)
        if not ap.version_matches(request.expected_version, exists, current):
            if repeat is not None:
                results[index] = repeat
                ap.note_repeat(failed, request, repeat)
            else:
                results[index] = WrongExpectedVersion(stream_id, request.expected_version, current)
                ap.note_failure(failed, request)
            continue
        if not encoded:
            results[index] = []
            continue
        ids = ap.event_ids(request, len(encoded))
        if len(set(ids)) != len(ids) or any(i in stored or i in taken for i in ids):
            if repeat is not None:
                results[index] = repeat
                ap.note_repeat(failed, request, repeat)
            else:
                results[index] = BackstageError(
                    f"stream {stream_id!r}: an event id of this append is already stored elsewhere"
                    f"{ap.reused_name(request)}"
                )
                ap.note_failure(failed, request)
            continue
        try:
            metadata, meta_text = ap.metadata(request)
        except BackstageError as exc:
            results[index] = exc
            ap.note_failure(failed, request)
            continue
        rows += ap.rows(ids, stream_id, current, encoded, meta_text, stamp)
        taken.update(ids)
        planned.append((index, stream_id, encoded, ids, current, metadata))
        versions[stream_id] = (True, current + len(encoded))
    return planned, rows
