"""The PostgreSQL recorder's appending statements, and the helpers that turn their results into
each append's outcome.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs
import psycopg

from . import _appending as ap
from ._appending import Results, Row
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
