"""``backstage copy SRC DST``: a whole store from one recorder to another (SQLite to PostgreSQL and
back, or to and from ``memory:``).

Every table is copied row for row, in one transaction on the destination: events keep their
positions and ids, streams their versions (and truncation marks), snapshots (the latest and
their history), checkpoints, dead letters (with their ids) and process manager state arrive as
they were. A destination that holds
anything is refused: a copy never merges two histories. The source is read in one read
transaction: the copy is the store as it stood when the copy began, even while an application
goes on writing to it (what it writes meanwhile is not in the copy).

A row the destination would not hold as the source does is refused, whatever its table: JSON
that is not JSON (event data and metadata, snapshots, process manager state, a rejection's
metadata: written by hand), text that is not UTF-8 (written into SQLite by another program)
and, into PostgreSQL, text holding a NUL character. One error names every such row (the first
100, the others counted) and nothing is copied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click

from ._cli_support import EXIT_INPUT, EXIT_STORAGE, fail, progress_bar
from ._export import BrokenRows, broken_events
from .errors import BackstageError, StorageError
from .store import EventStore, redact, store_kind
from .store._appending import UnreadableRow
from .store.recorder import KEYS, TABLES, _valid_json

__all__ = ["copy_store", "register"]

Progress = Callable[[int, int], None]  # (rows copied, rows in all)


def copy_store(source: str, destination: str, progress: Progress | None = None) -> dict[str, int]:
    """Copy every table of ``source`` into the empty store ``destination``; rows per table."""
    if store_kind(source) == "sqlite" and not os.path.exists(source):
        raise StorageError(f"no such database: {source}")
    with EventStore(source) as src, EventStore(destination) as dst:
        if src.location == dst.location:
            raise BackstageError(f"{redact(source)} is both the source and the destination")
        busy = {table: dst.recorder.count(table) for table in TABLES}
        if any(busy.values()):
            held = ", ".join(f"{n} {t}" for t, n in busy.items() if n)
            raise BackstageError(
                f"the destination {redact(destination)} is not empty ({held}); copy into an"
                " empty store"
            )
        with src.snapshot():
            # A row written by hand that is broken is named, with every other one, and nothing
            # is copied: events whose JSON is broken are found first (the database checks them;
            # PostgreSQL would refuse broken metadata, unnamed, and keep broken data), the
            # other tables' rows as they are copied (the transaction then rolls back).
            broken = broken_events(src)
            postgres = store_kind(destination) == "postgres"
            with dst.transaction():
                copied = _copy_tables(src, dst, progress, broken, postgres)
                if broken:
                    raise broken.error(
                        f"cannot copy {redact(source)}: ",
                        "; mend or delete those rows, then copy again (nothing was copied)",
                    )
            return copied


# The columns holding JSON text, by table (events: checked by the database, see broken_events;
# every table's rows are checked for a NUL into PostgreSQL; store.recorder.KEYS names a row).
_JSON = {
    "snapshots": ("data",),
    "snapshot_history": ("data",),
    "process_managers": ("state",),
    "rejections": ("metadata",),
}
# An event's JSON holding a NUL is not JSON (the character must be escaped): named before, once.
_NAMED_BEFORE = {"events": ("data", "metadata")}


def _check(table: str, rows: list[tuple[Any, ...]], postgres: bool, into: BrokenRows) -> None:
    """Add the rows of ``table`` that the destination would not keep intact to ``into``: text
    that is not UTF-8, JSON that is not JSON, and (into PostgreSQL, whose text cannot hold it) a
    NUL character."""
    columns = TABLES[table]
    json_at = [(columns.index(name), name) for name in _JSON.get(table, ())]
    keys = [(columns.index(name), name) for name in KEYS[table]]
    unchecked = _NAMED_BEFORE.get(table, ())
    for row in rows:
        bad = [row.what] if type(row) is UnreadableRow else []
        bad += [f"its {name} is not valid JSON" for at, name in json_at if not _valid_json(row[at])]
        if postgres:
            bad += [
                f"its {name} holds a NUL character (PostgreSQL's text cannot)"
                for name, value in zip(columns, row, strict=True)
                if isinstance(value, str) and "\x00" in value and name not in unchecked
            ]
        if bad:
            key = ", ".join(f"{name} {row[at]!r:.80}" for at, name in keys)
            into.add(f"{table} ({key}): {' and '.join(bad)}")


def _copy_tables(
    src: EventStore,
    dst: EventStore,
    progress: Progress | None,
    broken: BrokenRows,
    postgres: bool,
) -> dict[str, int]:
    """Copy the tables, the events last; once a row is found broken, the rest is only checked
    (and the events, written last, not even read unless into PostgreSQL: one may hold a NUL)."""
    totals = {table: src.recorder.count(table) for table in TABLES}
    total, done = sum(totals.values()), 0
    if progress:
        progress(0, total)
    for table in [*(t for t in TABLES if t != "events"), "events"]:
        if table == "events" and broken and not postgres:  # (into PostgreSQL: NULs named too)
            continue
        for rows in src.recorder.export(table):
            if table != "events" or postgres:  # (events' JSON: checked before, see above)
                _check(table, rows, postgres, broken)
            if not broken:
                dst.recorder.import_rows(table, [tuple(row) for row in rows])
            done += len(rows)
            if progress:
                progress(done, total)
    # Positions of events deleted since (truncated) are not handed out again either.
    if not broken:
        dst.recorder.reserve_positions(src.recorder.next_position())
    return totals


def register(cli: click.Group) -> None:
    """Add ``copy`` to the command line ``cli``."""

    @cli.command("copy")
    @click.argument("source")
    @click.argument("destination")
    # Accepted as by every verb (BACKSTAGE_PORT too); a copy needs no daemon.
    @click.option("--port", type=int, hidden=True)
    @click.option("--host", hidden=True)
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def copy(
        source: str, destination: str, port: int | None, host: str | None, as_json: bool
    ) -> None:
        """Copy the whole store SOURCE into the empty store DESTINATION (a SQLite path or a
        postgresql:// URL): events with their positions, snapshots, checkpoints, dead letters."""
        with progress_bar("copying") as progress:
            try:
                copied = copy_store(source, destination, progress)
            except StorageError as exc:
                fail(str(exc), EXIT_STORAGE)
            except BackstageError as exc:
                fail(str(exc), EXIT_INPUT)
        if as_json:
            click.echo(
                json.dumps(
                    {"source": redact(source), "destination": redact(destination), "rows": copied}
                )
            )
            return
        rows = ", ".join(f"{n} {t}" for t, n in copied.items())
        click.echo(f"copied {redact(source)} to {redact(destination)}: {rows}")
