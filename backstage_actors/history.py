"""History as a tool: an aggregate's state at any version or time, what changed between two
versions, and the causal trace of one request. Usable on a bare store (no running system):

    from backstage_actors.history import state_of, trace
    with EventStore("bank.db") as store:
        account = state_of(store, Account, "a-1", version=3)
        tree = trace(store, command_id)

``RunningSystem.state_of`` and ``RunningSystem.trace`` call these on the system's store; neither
ever asks the live aggregate (its actor may be busy, passivated or on another host).

**Snapshots.** The store keeps every snapshot of a stream in its snapshot history (not only the
latest, which the live aggregate loads). ``state_of`` starts from the latest one at or before the
version asked for that was taken with the class's ``snapshot_version``, then replays the events
after it: with a snapshot every N events, any past state costs one index seek and fewer than N
events (the events from the first version when no snapshot is kept at or before it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from . import _serialization as ser
from ._ids import event_id as first_event_id_of
from .aggregate import Aggregate
from .errors import BackstageError, StoredEventError
from .store import EventStore
from .store._appending import UnreadableRow
from .store._codec import decode_event
from .store.records import EventQuery, Rejection

__all__ = [
    "HistoryError",
    "diff",
    "event_record",
    "parse_time",
    "query_rows",
    "render_trace",
    "state_fields",
    "state_of",
    "trace",
]

Row = tuple[Any, ...]


class HistoryError(BackstageError, LookupError):
    """What a history query asked for is not in the store: an unknown stream, a version past
    its end, a time before its first event, an id no event or command has."""


# -- time -------------------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``2026-12-03T13:00:00``, ``...Z`` or ``...+01:00``); without an offset
    it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BackstageError(
            f"bad time {text!r}: use ISO 8601, e.g. 2026-12-03T13:00:00 (UTC) or ...+01:00"
        ) from None
    return _utc(moment)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _stamp(moment: datetime) -> str:
    """``moment`` as the stores write ``recorded_at`` (ISO 8601 in UTC: text order is time order)."""
    return _utc(moment).isoformat()


# -- state at a version or a time ---------------------------------------------------------------


def stream_id_of(cls: type[Aggregate], identity: str) -> str:
    return f"{cls.__name__}-{identity}"


def target_version(
    store: EventStore, stream_id: str, version: int | None = None, at: datetime | None = None
) -> int:
    """The version ``version``/``at`` names in ``stream_id`` (its head if neither);
    :class:`HistoryError` if there is no such point."""
    if version is not None and at is not None:
        raise BackstageError("give version= or at=, not both")
    head = store.stream_version(stream_id)
    if head == 0:
        raise HistoryError(f"unknown stream {stream_id!r}: no event was ever stored in it")
    if at is not None:
        found = store.recorder.version_at(stream_id, _stamp(at))
        if found == 0:
            first = next(iter(store.read_stream(stream_id, limit=1)), None)
            if first is None or first.version > 1:  # what it held then was truncated
                kept = (
                    "none is kept"
                    if first is None
                    else f"the first kept, version {first.version}, is of"
                    f" {first.recorded_at.isoformat()}"
                )
                raise HistoryError(
                    f"{stream_id}: its state at {_stamp(at)} is not known: its earlier events"
                    f" were truncated ({kept})"
                )
            since = f" (its first is of {first.recorded_at.isoformat()})"
            raise HistoryError(f"{stream_id} had no event yet at {_stamp(at)}{since}")
        return found
    if version is None:
        return head
    if version < 0 or version > head:
        raise HistoryError(f"{stream_id} has no version {version}: it is at version {head}")
    return version


def state_of(
    store: EventStore,
    cls: type[Aggregate],
    identity: str,
    version: int | None = None,
    at: datetime | None = None,
) -> Aggregate:
    """A new ``cls`` instance in the state it had after ``version`` (or the last event recorded
    at or before ``at``; the latest without either), rebuilt from the store alone: the latest
    kept snapshot at or before that version, then the events up to it. Its ``id`` and
    ``version`` are set. Naive ``at`` is UTC."""
    stream_id = stream_id_of(cls, identity)
    target = target_version(store, stream_id, version, at)
    aggregate = _fresh(cls, identity)
    snapshot = None  # (as for the live aggregate: none is looked up for a class that saves none)
    if cls.snapshot_every:
        snapshot = store.load_snapshot_at(stream_id, target, cls.snapshot_version)
    if snapshot is not None:
        try:
            aggregate.restore_snapshot(snapshot.state)
            aggregate.version = snapshot.version
        except Exception:  # an unusable snapshot is a lost shortcut, as for the live actor
            aggregate = _fresh(cls, identity)
    for number, event in _events(store, stream_id, aggregate.version, target):
        aggregate.apply(event)
        aggregate.version = number
    if aggregate.version != target:
        raise HistoryError(
            f"{stream_id}: the events before version {aggregate.version + 1} were truncated and"
            f" no snapshot at or before version {target} is kept"
        )
    return aggregate


def _fresh(cls: type[Aggregate], identity: str) -> Aggregate:
    aggregate = cls()
    aggregate.id = identity
    aggregate.version = 0
    return aggregate


def _events(store: EventStore, stream_id: str, after: int, last: int) -> Iterator[tuple[int, Any]]:
    """``(version, event)`` of ``stream_id`` from ``after + 1`` to ``last``, paged (no row past
    ``last`` is decoded). Stops early at a gap (truncated events)."""
    low = after + 1
    while low <= last:
        limit = min(store.page_size, last - low + 1)
        rows = store.recorder.payload_page(stream_id, low, limit)
        for number, type_name, schema_version, topic, data, position in rows:
            if number != low:
                return
            yield number, decode_event(type_name, schema_version, topic, data, position)
            low += 1
        if len(rows) < limit:
            return


def state_fields(aggregate: Aggregate) -> dict[str, Any]:
    """The aggregate's state as JSON-ready data (what a snapshot of it would hold)."""
    return aggregate.snapshot_state()


def diff(
    store: EventStore, cls: type[Aggregate], identity: str, from_version: int, to_version: int
) -> dict[str, Any]:
    """Which fields changed between ``from_version`` and ``to_version`` (``{"field": [before,
    after]}``) and, event by event, what each of the events in between changed."""
    stream_id = stream_id_of(cls, identity)
    problems = []  # every one, not the first only
    for version in (from_version, to_version):
        try:
            target_version(store, stream_id, version)
        except HistoryError as exc:
            if str(exc) not in problems:
                problems.append(str(exc))
    missing = bool(problems)
    if from_version > to_version:
        problems.append(f"--from {from_version} is after --to {to_version}")
    if problems:
        raise (HistoryError if missing else BackstageError)("; ".join(problems))
    aggregate = state_of(store, cls, identity, version=from_version)
    start = before = state_fields(aggregate)
    steps = []
    for recorded in store.read_stream(stream_id, from_version + 1, to_version):
        if recorded.version != aggregate.version + 1:
            raise HistoryError(
                f"{stream_id}: the events from version {aggregate.version + 1} to"
                f" {recorded.version - 1} were truncated: no diff from version {from_version}"
            )
        aggregate.apply(recorded.data)
        aggregate.version = recorded.version
        after = state_fields(aggregate)
        steps.append({**_event_fields(recorded), "changed": _changes(before, after)})
        before = after
    if aggregate.version != to_version:
        raise HistoryError(
            f"{stream_id}: the events from version {aggregate.version + 1} to {to_version} were"
            f" truncated: no diff from version {from_version}"
        )
    return {
        "stream_id": stream_id,
        "from": from_version,
        "to": to_version,
        "changed": _changes(start, before),
        "events": steps,
    }


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    return {
        name: [before.get(name), after.get(name)]
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }


def _event_fields(recorded: Any) -> dict[str, Any]:
    return {
        "version": recorded.version,
        "position": recorded.position,
        "type": recorded.type,
        "recorded_at": recorded.recorded_at.isoformat(),
        "data": ser.unstructure(recorded.data),
    }


# -- queries ----------------------------------------------------------------------------------


def query_rows(
    store: EventStore, query: EventQuery, after: int = 0, limit: int | None = None
) -> Iterator[Row]:
    """Raw ``events`` rows past position ``after`` that match ``query``, in pages (constant
    memory), at most ``limit``."""
    remaining = limit
    while remaining is None or remaining > 0:
        page = store.page_size if remaining is None else min(store.page_size, remaining)
        rows = store.recorder.query_page(after, page, query)
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1][0]
        if remaining is not None:
            remaining -= len(rows)


def event_record(row: Row) -> dict[str, Any]:
    """An ``events`` row as JSON-ready data: payload and metadata as stored (not upcast)."""
    position, event_id, stream_id, version, type_name, schema_version, _, data, meta, at = row
    return {
        "position": position,
        "event_id": event_id,
        "stream_id": stream_id,
        "version": version,
        "type": type_name,
        "schema_version": schema_version,
        "data": json.loads(data),
        "metadata": json.loads(meta),
        "recorded_at": at if isinstance(at, str) else at.isoformat(),
    }


# -- the causal trace of a request ----------------------------------------------------------------


def trace(
    store: EventStore,
    ident: str,
    on_unreadable: Callable[[StoredEventError], None] | None = None,
) -> dict[str, Any]:
    """The tree of commands and events one request caused, found from a command id, a
    correlation id or an event id: ``{"correlation_id", "roots": [command nodes], ...}``.

    A row that cannot be read (text that is not UTF-8, in a SQLite store) raises
    :class:`StoredEventError` naming it, or with ``on_unreadable`` is passed to it and left out
    of the tree (an event row alone; the request's refusals all, when one of them is unreadable).

    A command node: ``kind="command"``, ``command_id``, ``command`` (type name), ``stream_id``,
    ``outcome`` (``ok``, ``rejected`` or ``failed``), ``error``, ``refusals`` (every refused
    attempt), ``process_manager``, ``user`` (the metadata's), ``recorded_at``, ``children`` (its events). An event node: ``kind="event"``, ``event_id``,
    ``stream_id``, ``version``, ``position``, ``type``, ``recorded_at``, ``children`` (the
    commands it caused, through process managers).
    """
    if on_unreadable is not None:
        on_unreadable = _once(on_unreadable)
    correlation = _correlation_of(store, ident, on_unreadable)
    query = EventQuery(metadata=(("correlation_id", correlation),))
    rows = list(query_rows(store, query))
    # The event a request began with when no command did (appended without a correlation id,
    # a process manager then took its id for the request's): it is the request's first.
    origin = store.recorder.event_by_id(correlation)
    if origin is not None and all(row[1] != origin[1] for row in rows):
        rows = sorted([origin, *rows], key=lambda row: int(row[0]))
    rows = list(_readable(rows, on_unreadable))
    refused = _rejections(store, "correlation_id", correlation, on_unreadable)
    commands: dict[str, dict[str, Any]] = {}
    events: dict[str, dict[str, Any]] = {}
    loose: list[dict[str, Any]] = []
    for row in rows:
        meta = json.loads(row[8])
        node = _event_node(row)
        events[node["event_id"]] = node
        command_id = meta.get("command_id")
        if command_id is None:
            loose.append(node)
            continue
        command = commands.get(command_id) or commands.setdefault(
            command_id, _command_node(command_id, meta, row[2], node["recorded_at"])
        )
        command["children"].append(node)
    for rejection in refused:
        meta = _loads(rejection.metadata)
        command = commands.get(rejection.command_id) or commands.setdefault(
            rejection.command_id,
            _command_node(rejection.command_id, meta, rejection.stream_id, rejection.recorded_at),
        )
        command["refusals"].append(_refusal(rejection))
    roots: list[dict[str, Any]] = []
    for command in commands.values():
        if not command["children"] and command["refusals"]:
            last = command["refusals"][-1]
            command["outcome"], command["error"] = last["outcome"], last["error"]
        parent = events.get(command.pop("causation_id") or "")
        (parent["children"] if parent is not None else roots).append(command)
    for node in [*commands.values(), *events.values()]:
        node["children"].sort(key=_order)
    roots.sort(key=_order)
    loose.sort(key=_order)
    return {
        "id": ident,
        "correlation_id": correlation,
        "commands": len(commands),
        "events": len(events),
        "rejections": len(refused),
        "roots": roots + loose,
    }


def _loads(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _once(report: Callable[[StoredEventError], None]) -> Callable[[StoredEventError], None]:
    """``report``, called once for each error (a row read twice is named once)."""
    seen: set[str] = set()

    def once(error: StoredEventError) -> None:
        if str(error) not in seen:
            seen.add(str(error))
            report(error)

    return once


def _readable(rows: list[Row], on_unreadable: Callable[[StoredEventError], None] | None) -> Any:
    """The rows but those holding text that is not UTF-8 (escaped, never to be shown as if read):
    each of those raises its error, or goes to ``on_unreadable``."""
    for row in rows:
        if type(row) is UnreadableRow:
            if on_unreadable is None:
                raise row.error
            on_unreadable(row.error)
            continue
        yield row


def _rejections(
    store: EventStore,
    field: str,
    value: str,
    on_unreadable: Callable[[StoredEventError], None] | None,
) -> list[Rejection]:
    """The rejections whose ``field`` is ``value``; when one cannot be read, its error is raised,
    or goes to ``on_unreadable`` and none is returned."""
    try:
        return store.recorder.rejections(field, value)
    except StoredEventError as error:
        if on_unreadable is None:
            raise
        on_unreadable(error)
        return []


def _correlation_of(
    store: EventStore, ident: str, on_unreadable: Callable[[StoredEventError], None] | None
) -> str:
    row = store.recorder.event_by_id(ident)  # (unreadable, it is named where the tree is made)
    if row is not None:
        return str(_loads(row[8]).get("correlation_id") or ident)
    try:
        first = store.recorder.event_by_id(first_event_id_of(ident, 0))
    except ValueError:
        first = None
    if first is not None and _loads(first[8]).get("command_id") == ident:
        return str(_loads(first[8]).get("correlation_id") or ident)
    refused = _rejections(store, "command_id", ident, on_unreadable)
    if refused:
        return refused[0].correlation_id
    query = EventQuery(metadata=(("correlation_id", ident),))
    if store.recorder.query_page(0, 1, query) or _rejections(
        store, "correlation_id", ident, on_unreadable
    ):
        return ident
    raise HistoryError(f"no event, command or request has the id {ident!r}")


def _event_node(row: Row) -> dict[str, Any]:
    at = row[9]
    return {
        "kind": "event",
        "event_id": row[1],
        "stream_id": row[2],
        "version": row[3],
        "position": row[0],
        "type": row[4],
        "recorded_at": at if isinstance(at, str) else at.isoformat(),
        "children": [],
    }


def _command_node(command_id: str, meta: dict[str, Any], stream_id: str, at: str) -> dict[str, Any]:
    causation = meta.get("causation_id")
    return {
        "kind": "command",
        "command_id": command_id,
        "command": meta.get("command", "?"),
        "stream_id": stream_id,
        "outcome": "ok",
        "error": None,
        "process_manager": meta.get("process_manager"),
        "user": meta.get("user"),
        "recorded_at": at,
        "causation_id": None if causation == command_id else causation,
        "refusals": [],
        "children": [],
    }


def _refusal(rejection: Rejection) -> dict[str, Any]:
    outcome = "rejected" if rejection.error_type == "CommandRejected" else "failed"
    return {
        "outcome": outcome,
        "error": rejection.error,
        "error_type": rejection.error_type,
        "recorded_at": rejection.recorded_at,
    }


def _order(node: dict[str, Any]) -> tuple[int, str]:
    if node["kind"] == "event":
        return node["position"], node["recorded_at"]
    first = node["children"][0]["position"] if node["children"] else 2**62
    return first, node["recorded_at"]


def render_trace(tree: Mapping[str, Any]) -> Iterator[str]:
    """The trace as indented lines: a command, its outcome, then its events, each event followed
    by the commands it caused."""
    yield (
        f"request {tree['correlation_id']}: {tree['commands']} commands, {tree['events']} events,"
        f" {tree['rejections']} refusals"
    )
    for node in tree["roots"]:
        yield from _render(node, 1)


def _render(node: Mapping[str, Any], depth: int) -> Iterator[str]:
    pad = "  " * depth
    time = str(node["recorded_at"])[11:23]
    if node["kind"] == "event":
        yield (
            f"{pad}{node['stream_id']}@{node['version']} #{node['position']} {node['type']}  {time}"
        )
    else:
        via = f" (by {node['process_manager']})" if node["process_manager"] else ""
        via += f" [user {node['user']}]" if node.get("user") else ""
        outcome = node["outcome"] + (f": {node['error']}" if node["error"] else "")
        yield f"{pad}{node['command']} -> {node['stream_id']}{via}  {outcome}  {time}"
        for refusal in node["refusals"] if node["children"] else []:
            yield f"{pad}  (an earlier attempt was {refusal['outcome']}: {refusal['error']})"
    for child in node["children"]:
        yield from _render(child, depth + 1)
