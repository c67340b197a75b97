"""The history verbs of ``backstage``: ``events`` (with ``--where``/``--since``), ``state``,
``diff``, ``trace`` and ``export``. Each reads the store directly (``--db``, or the running
daemon's database): none needs the daemon to be up, and none touches a live aggregate.

``state`` and ``diff`` need the aggregate classes: they load the application like ``start`` does,
from ``--app module:attribute`` or, without it, from the state file of the daemon on ``--port``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from typing import Any

import attrs
import click

from . import _daemon, _serialization, history
from ._cli_support import (
    EXIT_INPUT,
    EXIT_NOT_RUNNING,
    EXIT_STORAGE,
    fail,
    open_store,
    progress_bar,
)
from ._export import FORMATS, export_events
from .aggregate import Aggregate
from .errors import BackstageError, StorageError, StoredEventError
from .store import EventStore
from .store._queries import check_field
from .store.records import EventQuery

__all__ = ["register"]

_port_only = click.option(
    "--port",
    type=int,
    default=_daemon.default_port,
    show_default="$BACKSTAGE_PORT or 1900",
    help="Admin port of the daemon whose database (and app) to read.",
)
_host = click.option(
    "--host",
    default=_daemon.LOCAL,
    show_default=True,
    expose_value=False,  # kept in the context for _store and _app_and_store
    callback=lambda ctx, param, value: ctx.meta.__setitem__("backstage.host", value),
    help="Address of that daemon's admin.",
)


def _port(verb: Callable[..., Any]) -> Callable[..., Any]:
    """``--port`` and ``--host`` of the daemon whose database (and app) to read."""
    return _port_only(_host(verb))


def _host_of() -> str:
    return str(click.get_current_context().meta.get("backstage.host", _daemon.LOCAL))


_db = click.option("--db", "database", help="Read this database instead of the daemon's.")
_json = click.option(
    "--json", "as_json", is_flag=True, help="JSON output; errors as JSON on stderr."
)
_app = click.option(
    "--app", "app_spec", help="module:attribute of the Application (default: the daemon's)."
)


def register(cli: click.Group) -> None:
    """Add the history verbs to the command line ``cli``."""
    for verb in (events, state, diff, trace, export):
        cli.add_command(verb)


def _guard(work: Callable[[], Any]) -> Any:
    """``work()`` with store errors (exit 5) and history errors (bad input, exit 2) as the
    CLI's one-line errors."""
    try:
        return work()
    except StorageError as exc:
        fail(str(exc), EXIT_STORAGE)
    except BackstageError as exc:  # what the query asked for is wrong or not there
        fail(str(exc), EXIT_INPUT)


def _store(port: int, database: str | None) -> EventStore:
    store: EventStore = open_store(port, database, _host_of())
    return store


def _app_and_store(app_spec: str | None, port: int, database: str | None) -> tuple[Any, EventStore]:
    """The application (``--app`` or the daemon's) and its store (``--db``, the daemon's, or the
    app's own database)."""
    state = _daemon.read_state(port, _host_of())
    if app_spec is None:
        if state is None:
            fail(
                f"no backstage daemon runs on port {port}; name the application with"
                " --app module:attribute",
                EXIT_NOT_RUNNING,
            )
        app_spec = str(state["app"])
    directory = state.get("app_directory") if state is not None else None
    app = _guard(lambda: _daemon.load_app(app_spec, directory))
    if database is None:
        database = str(state["database"]) if state is not None else str(app.database)
    return app, _store(port, database)


def _aggregate_of(app: Any, stream: str, bad: str | None = None) -> tuple[type[Aggregate], str]:
    """The aggregate class and identity of ``stream`` (``Class-identity``) in ``app``; fails
    with ``bad`` (another option's problem) too."""
    problems = [bad] if bad else []
    for cls in sorted(app.router.aggregates, key=lambda c: -len(c.__name__)):
        prefix = f"{cls.__name__}-"
        if stream.startswith(prefix) and len(stream) > len(prefix):
            if problems:
                fail("; ".join(problems), EXIT_INPUT)
            return cls, stream[len(prefix) :]
    known = ", ".join(f"{c.__name__}-ID" for c in app.router.aggregates) or "none"
    problems.append(f"{stream!r} is no stream of {app.name}'s aggregates ({known})")
    fail("; ".join(problems), EXIT_INPUT)


def _query(
    types: str | None,
    stream_prefix: str | None,
    where: tuple[str, ...],
    since: str | None,
    bad: list[str] | None = None,
) -> tuple[EventQuery, int]:
    """The query the options name, and the position to read after (``--since N``); fails
    naming every bad option (``bad``: those the caller found already)."""
    pairs: list[tuple[str, str]] = []
    bad = list(bad or [])
    for condition in where:
        name, sep, value = condition.partition("=")
        try:
            pairs.append((check_field(name.strip()), value))
        except BackstageError as exc:
            bad.append(str(exc))
        if not sep:
            bad.append(f"--where {condition!r}: use FIELD=VALUE")
    after, since_time = 0, None
    if since is not None:
        if since.strip().isdigit():
            after = max(0, int(since) - 1)
        else:
            try:
                since_time = history.parse_time(since).isoformat()
            except BackstageError as exc:
                bad.append(f"--since: {exc} (or a position)")
    if bad:
        fail("; ".join(bad), EXIT_INPUT)
    kinds = tuple(t.strip() for t in (types or "").split(",") if t.strip())
    return EventQuery(since_time, kinds, stream_prefix or None, tuple(pairs)), after


# -- events --------------------------------------------------------------------------------------


@click.command()
@click.argument("stream", required=False)
@click.option(
    "--from",
    "start",
    type=int,
    default=1,
    show_default=True,
    help="Version (with STREAM) or position.",
)
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--where", multiple=True, help="FIELD=VALUE on the events' metadata (repeatable).")
@click.option("--since", help="Events recorded at or after this time (ISO 8601) or position.")
@click.option("--types", help="Only these event types (A,B).")
@_db
@_json
@_port
def events(
    stream: str | None,
    start: int,
    limit: int,
    where: tuple[str, ...],
    since: str | None,
    types: str | None,
    database: str | None,
    as_json: bool,
    port: int,
) -> None:
    """Stored events: all of them by position, or one STREAM by version; --where user=ada
    --since 2026-12-03T09:00 filters on metadata and time."""
    filtered = bool(where or since or types)
    query, after = _query(types, None, where, since) if filtered else (EventQuery(), 0)
    store = _store(port, database)
    try:
        if filtered:
            skip = after if stream else max(after, start - 1)
            rows = _guard(lambda: list(_filtered(store, query, skip, stream, start, limit)))
            found = list(_readable(store, rows))
        else:
            found = _guard(
                lambda: list(
                    store.read_stream(stream, start, limit=limit, on_unreadable=_skip)
                    if stream
                    else store.read_all(start, limit=limit, on_unreadable=_skip)
                )
            )
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([_event_json(e) for e in found], indent=2))
        return
    if not found:
        click.echo("no events")
    for e in found:
        data = json.dumps(_serialization.unstructure(e.data), ensure_ascii=False)
        if not filtered:
            click.echo(f"{e.position:>6} {e.stream_id}@{e.version} {e.type} {data}")
            continue
        # An audit's view: when, and who (the metadata's user) when the dispatch said.
        user = f" by {e.metadata['user']}" if "user" in e.metadata else ""
        when = e.recorded_at.isoformat(timespec="seconds")
        click.echo(f"{e.position:>6} {when} {e.stream_id}@{e.version} {e.type}{user} {data}")


def _skip(error: StoredEventError) -> None:
    """One warning line for an unreadable event; the others are shown."""
    click.echo(f"warning: skipped the event at position {error.position}: {error}", err=True)


def _skip_row(error: StoredEventError) -> None:
    """One warning line for a row of a trace that cannot be read (an event, or the request's
    refusals, which are then all left out)."""
    if error.position is None:
        click.echo(f"warning: skipped the request's refusals: {error}", err=True)
    else:
        _skip(error)


def _readable(store: EventStore, rows: list[tuple[Any, ...]]) -> Any:
    """The rows as events; an unreadable one is skipped with a warning line naming it."""
    for row in rows:
        try:
            yield store.decode_row(row)
        except StoredEventError as error:
            click.echo(f"warning: skipped the event at position {row[0]}: {error}", err=True)


def _filtered(
    store: EventStore, query: EventQuery, after: int, stream: str | None, start: int, limit: int
) -> Any:
    """Rows matching ``query`` past ``after``; with ``stream``, only its rows from version
    ``start`` on."""
    if stream is None:
        return history.query_rows(store, query, after, limit)
    scoped = attrs.evolve(query, stream_prefix=stream)
    rows = history.query_rows(store, scoped, after)
    return itertools.islice((r for r in rows if r[2] == stream and r[3] >= start), limit)


def _event_json(e: Any) -> dict[str, Any]:
    return {
        "position": e.position,
        "stream_id": e.stream_id,
        "version": e.version,
        "type": e.type,
        "data": _serialization.unstructure(e.data),
        "metadata": e.metadata,
        "recorded_at": e.recorded_at.isoformat(),
    }


# -- state and diff ------------------------------------------------------------------------------


@click.command()
@click.argument("stream")
@click.option("--version", "version", type=int, help="The state after this version.")
@click.option("--at", "at", help="The state at this time (ISO 8601; UTC without an offset).")
@_app
@_db
@_json
@_port
def state(
    stream: str,
    version: int | None,
    at: str | None,
    app_spec: str | None,
    database: str | None,
    as_json: bool,
    port: int,
) -> None:
    """The state of the aggregate STREAM (Class-identity) after a version or at a time, rebuilt
    from its events (the live aggregate is not asked)."""
    if version is not None and at is not None:
        fail("give --version or --at, not both", EXIT_INPUT)
    moment, bad_time = None, None
    if at is not None:
        try:
            moment = history.parse_time(at)
        except BackstageError as exc:
            bad_time = str(exc)
    app, store = _app_and_store(app_spec, port, database)
    cls, identity = _aggregate_of(app, stream, bad_time)
    try:
        aggregate = _guard(lambda: history.state_of(store, cls, identity, version, moment))
        fields = history.state_fields(aggregate)
        head = store.stream_version(stream)
    finally:
        store.close()
    if as_json:
        click.echo(
            json.dumps(
                {"stream_id": stream, "version": aggregate.version, "head": head, "state": fields},
                indent=2,
            )
        )
        return
    click.echo(f"{stream} at version {aggregate.version} (of {head})")
    for name, value in fields.items():
        click.echo(f"  {name}: {json.dumps(value, ensure_ascii=False)}")


@click.command()
@click.argument("stream")
@click.option("--from", "from_version", type=int, required=True, help="The earlier version.")
@click.option("--to", "to_version", type=int, required=True, help="The later version.")
@_app
@_db
@_json
@_port
def diff(
    stream: str,
    from_version: int,
    to_version: int,
    app_spec: str | None,
    database: str | None,
    as_json: bool,
    port: int,
) -> None:
    """Which fields of STREAM's state changed from one version to another, and by which events."""
    app, store = _app_and_store(app_spec, port, database)
    cls, identity = _aggregate_of(app, stream)
    try:
        changes = _guard(lambda: history.diff(store, cls, identity, from_version, to_version))
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(changes, indent=2))
        return
    click.echo(f"{stream} from version {from_version} to {to_version}:")
    if not changes["changed"]:
        click.echo("  no field changed")
    for name, (before, after) in changes["changed"].items():
        click.echo(f"  {name}: {_show(before)} -> {_show(after)}")
    for step in changes["events"]:
        fields = ", ".join(step["changed"]) or "no field"
        click.echo(f"  v{step['version']} #{step['position']} {step['type']}: {fields}")


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# -- trace ----------------------------------------------------------------------------------------


@click.command()
@click.argument("ident", metavar="ID")
@_db
@_json
@_port
def trace(ident: str, database: str | None, as_json: bool, port: int) -> None:
    """The commands and events one request caused (ID: a command id, correlation id or event
    id), indented by causation, refused and failed commands included."""
    store = _store(port, database)
    try:
        tree = _guard(lambda: history.trace(store, ident, _skip_row))
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(tree, indent=2))
        return
    for line in history.render_trace(tree):
        click.echo(line)


# -- export ---------------------------------------------------------------------------------------


@click.command()
@click.argument("path", metavar="FILE")
@click.option("--format", "format_", default="jsonl", show_default=True, help="jsonl or parquet.")
@click.option("--since", help="From this position, or from this time (ISO 8601).")
@click.option("--types", help="Only these event types (A,B).")
@click.option("--stream", "stream_prefix", help="Only streams whose id starts with this.")
@click.option("--where", multiple=True, help="FIELD=VALUE on the events' metadata (repeatable).")
@click.option("--resume", is_flag=True, help="Append after the last event FILE holds (jsonl).")
@_db
@_json
@_port
def export(
    path: str,
    format_: str,
    since: str | None,
    types: str | None,
    stream_prefix: str | None,
    where: tuple[str, ...],
    resume: bool,
    database: str | None,
    as_json: bool,
    port: int,
) -> None:
    """Write events with their metadata to FILE for analysis (JSON lines, or Parquet with the
    extra `export`), in constant memory; --resume finishes an interrupted export."""
    bad = []
    if format_ not in FORMATS:
        bad.append(f"unknown export format {format_!r}: use {' or '.join(FORMATS)}")
    elif format_ == "parquet" and resume:
        bad.append(
            "--resume works with jsonl only (a Parquet file cannot be appended to);"
            " export the rest with --since POSITION into a new file"
        )
    query, after = _query(types, stream_prefix, where, since, bad)
    store = _store(port, database)
    try:
        with progress_bar("exporting") as progress:
            result = _guard(
                lambda: export_events(store, path, format_, query, after, resume, progress)
            )
    finally:
        store.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "path": os.path.abspath(path),
                    "format": format_,
                    "events": result.count,
                    "last_position": result.last_position,
                    "resumed_after": result.resumed_after,
                }
            )
        )
        return
    resumed = f" (resumed after position {result.resumed_after})" if resume else ""
    click.echo(
        f"exported {result.count} events to {path}{resumed}; last position {result.last_position}"
    )
