"""What every recorder shares about appending: the rules of expected versions and of a group
commit's failures, event ids and metadata, and the rows recorders keep and give back.

No SQL here: a recorder runs its own statements and calls these to decide.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .. import _serialization as ser
from .._ids import event_id, new_id
from ..errors import BackstageError, StoredEventError, WrongExpectedVersion
from ..limits import check_request
from ._codec import EncodedEvent, decode_event, encode_event
from .records import ANY, NO_STREAM, STREAM_EXISTS, AppendRequest, ExpectedVersion, RecordedEvent

# An ``events`` row as every recorder returns it: (position, event_id, stream_id, version, type,
# schema_version, topic, data, metadata, recorded_at); data and metadata are JSON text,
# recorded_at an ISO 8601 string or an aware datetime.
Row = tuple[Any, ...]
COLUMNS = "position, event_id, stream_id, version, type, schema_version, topic, data, metadata, recorded_at"

# What a recorder's write works with: each request with its encoded events (None: refused before
# writing), and each request's outcome.
Prepared = list[tuple[AppendRequest, list[EncodedEvent]] | None]
Results = list[list[RecordedEvent] | BackstageError]
Failed = dict[str, int]  # stream id -> the version a failed append of the batch was to reach

_SCALARS = (str, int, bool, type(None))


class UnreadableRow(tuple[Any, ...]):
    """A row holding text that is not UTF-8 (written by another program; SQLite stores any bytes
    as text): that text decoded with backslash escapes (enough to name and park it, never to
    use), ``what`` is wrong (``its type is not UTF-8 (b'...')``) and the ``error`` a reader of
    it raises (:func:`decode_row` does)."""

    what: str
    error: StoredEventError


class UnreadablePage(list[Row]):
    """A page of rows some of which are :class:`UnreadableRow`; ``error`` names each of them
    (a healthy page is a plain list: checking its type costs nothing per row)."""

    error: StoredEventError


def prepare(requests: Sequence[AppendRequest], validate: bool) -> tuple[Prepared, Results]:
    """Encode each request's events and check what needs no storage; a refused request's slot
    holds its error (and so does a later one of the same stream that counted on it)."""
    results: Results = []
    prepared: Prepared = []
    failed: Failed = {}
    for request in requests:
        if counted_on(failed, request):
            prepared.append(None)
            results.append(after_failure(failed, request))
            continue
        try:
            check_expected(request.expected_version)
            check_request(request.stream_id, request.metadata, request.event_ids)
            prepared.append((request, [encode_event(e, validate) for e in request.events]))
            results.append([])
        except BackstageError as exc:
            prepared.append(None)
            results.append(exc)
            note_failure(failed, request)
    return prepared, results


def decode_row(row: Row) -> RecordedEvent:
    """A raw ``events`` row as a RecordedEvent; :class:`StoredEventError` if it is unreadable."""
    if type(row) is UnreadableRow:
        raise row.error
    position, event_id_, stream_id, version, type_name, schema_version, topic, data, meta, at = row
    event = decode_event(type_name, schema_version, topic, data, position)
    try:
        metadata = json.loads(meta)
    except ValueError as exc:
        raise StoredEventError(
            f"event at position {position}: its JSON metadata is broken: {exc}", position
        ) from None
    return RecordedEvent(
        event_id_,
        stream_id,
        version,
        position,
        type_name,
        event,
        metadata,
        at if isinstance(at, datetime) else datetime.fromisoformat(at),
    )


def stream_state(last_event: int | None, kept: int | None) -> tuple[bool, int]:
    """``(exists, version)`` of a stream from its last event's version and its streams row."""
    return (last_event is not None or kept is not None), max(last_event or 0, kept or 0)


def event_ids(request: AppendRequest, count: int) -> list[str]:
    """The ids the caller gave, or new ones (derived from one time-ordered id)."""
    ids = list(request.event_ids or [])
    if len(ids) != count:
        base = new_id()
        ids = [event_id(base, i) for i in range(count)]
    return ids


def metadata(request: AppendRequest) -> tuple[dict[str, Any], str]:
    """The metadata readers will get back, and its JSON."""
    metadata = dict(request.metadata or {})
    if not metadata:
        return metadata, "{}"
    if all(type(k) is str and type(v) in _SCALARS for k, v in metadata.items()):
        return metadata, ser.dumps(metadata, "metadata")  # JSON gives back the same values
    text = ser.dumps(ser.unstructure(metadata), "metadata")  # UUIDs, datetimes... as strings
    return json.loads(text), text


def rows(
    ids: list[str], stream_id: str, current: int, encoded: list[Any], meta_text: str, stamp: str
) -> list[tuple[Any, ...]]:
    return [
        (
            ids[i],
            stream_id,
            current + i + 1,
            enc.type,
            enc.schema_version,
            enc.topic,
            enc.data,
            meta_text,
            stamp,
        )
        for i, enc in enumerate(encoded)
    ]


def recorded(
    ids: list[str],
    stream_id: str,
    current: int,
    first_position: int,
    encoded: list[Any],
    metadata: dict[str, Any],
    recorded_at: datetime,
) -> list[RecordedEvent]:
    return [
        RecordedEvent(
            ids[i],
            stream_id,
            current + i + 1,
            first_position + i,
            enc.type,
            enc.event,
            metadata,
            recorded_at,
        )
        for i, enc in enumerate(encoded)
    ]


def check_expected(expected: Any) -> None:
    if isinstance(expected, ExpectedVersion):
        return
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
        raise BackstageError(
            f"expected_version must be ANY, NO_STREAM, STREAM_EXISTS or a version >= 0, "
            f"not {expected!r}"
        )


def note_repeat(failed: Failed, request: AppendRequest, result: Any) -> None:
    """An append answered with events stored by an earlier attempt at other versions stored
    nothing now: what was decided after it, on its state, must not be stored either."""
    if request.answered_elsewhere(result):
        note_failure(failed, request)


def note_failure(failed: Failed, request: AppendRequest) -> None:
    """Remember the version a failed append would have left its stream at (when it says)."""
    expected = request.expected_version
    if not request.events:  # a look-up: it was to leave the stream where it was
        return
    if isinstance(expected, int):
        failed[request.stream_id] = expected + len(request.events)
    elif expected is NO_STREAM:
        failed[request.stream_id] = len(request.events)


def counted_on(failed: Failed, request: AppendRequest) -> bool:
    """Whether ``request`` expects the version an earlier failed append of the same batch would
    have left: its writer decided on a state that is not stored, so it must fail too (even if
    another writer's events happen to bring the stream to that version)."""
    expected = request.expected_version
    return isinstance(expected, int) and failed.get(request.stream_id) == expected


def after_failure(failed: Failed, request: AppendRequest) -> WrongExpectedVersion:
    note_failure(failed, request)
    return WrongExpectedVersion.refusal(
        request.stream_id,
        request.expected_version,
        "counting on an earlier append of the same batch, which failed",
    )


def version_matches(expected: ExpectedVersion | int, exists: bool, current: int) -> bool:
    if expected is ANY:
        return True
    if expected is NO_STREAM:
        return not exists
    if expected is STREAM_EXISTS:
        return exists
    return expected == current


def reused_name(request: AppendRequest) -> str:
    """What to add to "an event id is already stored elsewhere" when the caller named the
    command: the name is taken (by a command of another stream)."""
    name = (request.metadata or {}).get("command_id")
    if not name or not (request.metadata or {}).get("command_digest"):
        return ""
    return f" (command_id {name!r} already names a command of another stream)"
