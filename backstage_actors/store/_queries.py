"""The SQL of history queries, shared by the SQLite and PostgreSQL recorders.

A metadata field is read with the same expression the indexes were built on
(``json_extract(CASE WHEN json_valid(metadata) ...``, '$.correlation_id')`` on SQLite, ``(metadata::jsonb ->>
'correlation_id')`` on PostgreSQL), so that a filter on an indexed field uses its index. Field names
go into the SQL text (an index matches only a literal path), hence :func:`check_field`.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import BackstageError
from .records import EventQuery

__all__ = [
    "INDEXED",
    "check_field",
    "check_rejection_field",
    "matches",
    "metadata_text",
    "where",
]

#: The metadata fields with an index of their own in the SQL recorders.
INDEXED = ("correlation_id", "causation_id")

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_field(name: str) -> str:
    """``name`` if it can name a metadata field in a filter (letters, digits, ``_``)."""
    if not _FIELD.match(name):
        raise BackstageError(
            f"cannot filter on the metadata field {name!r}: a field name is letters, digits and _"
        )
    return name


def field_sql(dialect: str, name: str) -> str:
    """The expression that reads metadata field ``name`` (index-compatible)."""
    check_field(name)
    if dialect == "sqlite":
        # json_valid first: json_extract raises on a malformed document, and an index on it
        # would then refuse to store (or copy) an event whose metadata is broken.
        return f"json_extract(CASE WHEN json_valid(metadata) THEN metadata END, '$.{name}')"
    return f"((metadata::jsonb) ->> '{name}')"


def _alternatives(value: str) -> list[Any]:
    """What ``value`` may be stored as on SQLite, where json_extract keeps a number a number."""
    try:
        number = int(value)
    except ValueError:
        try:
            return [value, float(value)]
        except ValueError:
            return [value]
    return [value, number]


def where(dialect: str, query: EventQuery) -> tuple[str, list[Any]]:
    """``(" AND cond AND ...", params)`` for ``query`` with ``?`` (SQLite) or ``%s`` marks."""
    mark = "?" if dialect == "sqlite" else "%s"
    parts: list[str] = []
    params: list[Any] = []
    if query.since is not None:  # (in C order on PostgreSQL: see _sql_bookkeeping.POSTGRES)
        parts.append(
            f"recorded_at >= {mark}" if dialect == "sqlite" else 'recorded_at COLLATE "C" >= %s'
        )
        params.append(query.since)
    if query.types:
        parts.append(f"type IN ({', '.join([mark] * len(query.types))})")
        params.extend(query.types)
    if query.stream_prefix:
        parts.append(f"substr(stream_id, 1, {len(query.stream_prefix)}) = {mark}")
        params.append(query.stream_prefix)
    for name, value in query.metadata:
        values = _alternatives(value) if dialect == "sqlite" else [value]
        if len(values) == 1:
            parts.append(f"{field_sql(dialect, name)} = {mark}")
        else:
            parts.append(f"{field_sql(dialect, name)} IN ({', '.join([mark] * len(values))})")
        params.extend(values)
        if dialect == "sqlite":
            # json_extract gives 1 and 0 for true and false: tell them apart by the JSON type,
            # so that a boolean matches its JSON text ("true") as on the other stores.
            kind = f"json_type(CASE WHEN json_valid(metadata) THEN metadata END, '$.{name}')"
            if value in ("true", "false"):
                parts[-1] = f"({parts[-1]} AND {kind} = 'text' OR {kind} = {mark})"
                params.append(value)
            elif len(values) > 1:
                parts.append(f"{kind} NOT IN ('true', 'false')")
    return "".join(f" AND {part}" for part in parts), params


def metadata_text(value: Any) -> str | None:
    """A metadata value as PostgreSQL's ``->>`` gives it (None for JSON null or a missing field)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return None  # an object or array: never equal to a value given on a command line


def matches(query: EventQuery, row: tuple[Any, ...], metadata: dict[str, Any]) -> bool:
    """Whether the ``events`` row (decoded ``metadata``) matches ``query``: the memory recorder's
    filter, the same conditions as :func:`where`."""
    if query.since is not None and row[9] < query.since:
        return False
    if query.types and row[4] not in query.types:
        return False
    if query.stream_prefix and not str(row[2]).startswith(query.stream_prefix):
        return False
    return all(metadata_text(metadata.get(name)) == value for name, value in query.metadata)


def check_rejection_field(field: str) -> str:
    """``field`` if rejections can be found by it."""
    if field not in ("correlation_id", "command_id"):
        raise ValueError(f"rejections are found by correlation_id or command_id, not {field!r}")
    return field
