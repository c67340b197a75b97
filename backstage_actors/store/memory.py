"""The in-memory recorder: a store in this process's memory, for fast unit tests.

``EventStore("memory:")`` opens one; every store opened on the same ``memory:NAME`` in one process
shares its events until the last of them is closed. Nothing survives the process, and other
processes do not see it: use it with ``simpleSystemBase`` only. It keeps the same contract as the
SQLite and PostgreSQL recorders (the conformance suite runs against it).
"""

from __future__ import annotations

import bisect
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import attrs
import sqlite_utils

from ..errors import BackstageError, WrongExpectedVersion
from . import _appending as ap
from ._appending import Failed, Prepared, Results, Row
from ._memory_history import MemoryHistory
from .recorder import TABLES, Recorder
from .records import AppendRequest, DeadLetter, RecordedEvent, Rejection

__all__ = ["MemoryRecorder"]


class _State:
    """The tables of one in-memory store."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.users = 0
        self.events: dict[int, Row] = {}
        self.positions: list[int] = []  # sorted
        self.streams: dict[str, list[Row]] = {}  # by version
        self.ids: dict[str, Row] = {}
        self.kept: dict[str, tuple[int, int]] = {}  # the streams table: (version, truncated_before)
        self.next_position = 1
        self.snapshots: dict[str, tuple[int, int, str, str, str]] = {}
        # the snapshot_history table: stream -> version -> (schema_version, type, data, taken_at)
        self.snapshot_history: dict[str, dict[int, tuple[int, str, str, str]]] = {}
        self.checkpoints: dict[str, tuple[int, str]] = {}
        self.letters: dict[int, DeadLetter] = {}
        self.processes: dict[tuple[str, str], tuple[str, str]] = {}
        self.rejections: dict[int, Rejection] = {}
        self.undo: list[Callable[[], None]] | None = None  # while a transaction is open
        self.tables: sqlite_utils.Database | None = None


@contextmanager
def _sqlite_savepoint(conn: sqlite3.Connection, name: str) -> Iterator[None]:
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")


_states: dict[str, _State] = {}
_states_lock = threading.Lock()


class MemoryRecorder(MemoryHistory, Recorder):
    """A recorder on the in-memory store ``name`` of this process."""

    def __init__(self, name: str = "memory:") -> None:
        self.location = name
        with _states_lock:
            self.state = _states.setdefault(name, _State())
            self.state.users += 1
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with _states_lock:
            self.state.users -= 1
            if self.state.users <= 0 and _states.get(self.location) is self.state:
                del _states[self.location]

    @contextmanager
    def transaction(self, flush: bool = True) -> Iterator[MemoryRecorder]:
        state = self.state
        with state.lock:
            if state.undo is not None:
                yield self
                return
            state.undo = []
            try:
                if state.tables is None:
                    yield self
                else:  # the projections' tables beside the store roll back with it
                    with _sqlite_savepoint(state.tables.conn, "tx"):
                        yield self
            except BaseException:
                for undo in reversed(state.undo):
                    undo()
                raise
            finally:
                state.undo = None

    def _changed(self, undo: Callable[[], None]) -> None:
        if self.state.undo is not None:
            self.state.undo.append(undo)

    def _set(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        """``table[key] = value`` (``value`` None: delete), undone with the transaction."""
        missing = object()
        old = table.get(key, missing)
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
        self._changed(lambda: table.pop(key, None) if old is missing else table.update({key: old}))

    # -- events -----------------------------------------------------------------------------

    def write(
        self, prepared: Prepared, results: Results, recorded_at: datetime, stamp: str
    ) -> None:
        with self.transaction():
            failed: Failed = {}
            for index, item in enumerate(prepared):
                if item is None:
                    continue
                request, encoded = item
                if ap.counted_on(failed, request):
                    results[index] = ap.after_failure(failed, request)
                    continue
                try:
                    results[index] = self._append_one(request, encoded, recorded_at, stamp)
                except BackstageError as exc:
                    results[index] = exc
                    ap.note_failure(failed, request)
                else:
                    ap.note_repeat(failed, request, results[index])

    def _state_of(self, stream_id: str) -> tuple[bool, int]:
        rows = self.state.streams.get(stream_id)
        kept = self.state.kept.get(stream_id)
        return ap.stream_state(rows[-1][3] if rows else None, kept[0] if kept else None)

    def _append_one(
        self, request: AppendRequest, encoded: list[Any], recorded_at: datetime, stamp: str
    ) -> list[RecordedEvent]:
        stream_id = request.stream_id
        exists, current = self._state_of(stream_id)
        if not ap.version_matches(request.expected_version, exists, current):
            existing = self._already_stored(stream_id, request.event_ids or [])
            if existing is not None:
                return existing
            raise WrongExpectedVersion(stream_id, request.expected_version, current)
        if not encoded:
            return []
        ids = ap.event_ids(request, len(encoded))
        metadata, meta_text = ap.metadata(request)
        if len(set(ids)) != len(ids) or any(i in self.state.ids for i in ids):
            existing = self._already_stored(stream_id, request.event_ids or [])
            if existing is not None:
                return existing
            raise BackstageError(
                f"stream {stream_id!r}: an event id of this append is already stored elsewhere"
                f"{ap.reused_name(request)}"
            )
        first = self.state.next_position
        for offset, row in enumerate(ap.rows(ids, stream_id, current, encoded, meta_text, stamp)):
            self._insert((first + offset, *row))
        return ap.recorded(ids, stream_id, current, first, encoded, metadata, recorded_at)

    def _insert(self, row: Row) -> None:
        state = self.state
        position = row[0]
        state.events[position] = row
        bisect.insort(state.positions, position)
        stream = state.streams.setdefault(row[2], [])
        bisect.insort(stream, row, key=lambda r: r[3])
        state.ids[row[1]] = row
        state.next_position = max(state.next_position, position + 1)
        self._changed(lambda: self._remove(row))

    def _remove(self, row: Row) -> None:
        state = self.state
        del state.events[row[0]]
        state.positions.remove(row[0])
        state.streams[row[2]].remove(row)
        del state.ids[row[1]]

    def _already_stored(
        self, stream_id: str, event_ids: Sequence[str]
    ) -> list[RecordedEvent] | None:
        rows = [self.state.ids.get(i) for i in event_ids]
        if event_ids and all(r is not None and r[2] == stream_id for r in rows):
            return [ap.decode_row(r) for r in sorted(rows, key=lambda r: r[0])]  # type: ignore[index,arg-type]
        return None

    def stream_version(self, stream_id: str) -> int:
        with self.state.lock:
            return self._state_of(stream_id)[1]

    def last_position(self) -> int:
        with self.state.lock:
            return self.state.positions[-1] if self.state.positions else 0

    def stream_page(
        self, stream_id: str, low: int, high: int, limit: int, backward: bool
    ) -> list[Row]:
        with self.state.lock:
            rows = [r for r in self.state.streams.get(stream_id, []) if low <= r[3] <= high]
        return (rows[::-1] if backward else rows)[:limit]

    def payload_page(self, stream_id: str, low: int, limit: int) -> list[tuple[Any, ...]]:
        rows = self.stream_page(stream_id, low, 2**62, limit, False)
        return [(r[3], r[4], r[5], r[6], r[7], r[0]) for r in rows]

    def events_page(self, from_position: int, limit: int) -> list[Row]:
        with self.state.lock:
            start = bisect.bisect_left(self.state.positions, from_position)
            chosen = self.state.positions[start : start + limit]
            return [self.state.events[p] for p in chosen]

    def event_row(self, position: int) -> Row | None:
        return self.state.events.get(position)

    def event_version(self, event_id: str, stream_id: str) -> int | None:
        row = self.state.ids.get(event_id)
        return int(row[3]) if row is not None and row[2] == stream_id else None

    def truncate_stream(self, stream_id: str, before_version: int) -> int:
        with self.transaction():
            version = self.stream_version(stream_id)
            doomed = [r for r in self.state.streams.get(stream_id, []) if r[3] < before_version]
            for row in doomed:
                self._remove(row)
                self._changed(lambda row=row: self._insert(row))  # type: ignore[misc]
            if version:
                old = self.state.kept.get(stream_id, (0, 0))
                self._set(
                    self.state.kept, stream_id, (max(old[0], version), max(old[1], before_version))
                )
            kept = self.state.snapshot_history.get(stream_id, {})
            for number in [n for n in kept if n < before_version - 1]:
                self._set(kept, number, None)
        return len(doomed)

    # -- bookkeeping ------------------------------------------------------------------------

    def save_snapshot(
        self, stream_id: str, version: int, schema_version: int, type: str, data: str, at: str
    ) -> None:
        with self.transaction():
            old = self.state.snapshots.get(stream_id)
            if old is None or version >= old[0]:
                self._set(
                    self.state.snapshots, stream_id, (version, schema_version, type, data, at)
                )
            kept = self.state.snapshot_history.setdefault(stream_id, {})
            self._set(kept, version, (schema_version, type, data, at))

    def snapshot_row(self, stream_id: str) -> tuple[int, int, str, str, str] | None:
        return self.state.snapshots.get(stream_id)

    def snapshot_row_at(
        self, stream_id: str, version: int, schema_version: int | None
    ) -> tuple[int, int, str, str, str] | None:
        with self.state.lock:
            kept = self.state.snapshot_history.get(stream_id, {})
            found = [
                n
                for n, row in kept.items()
                if n <= version and (schema_version is None or row[0] == schema_version)
            ]
            return None if not found else (max(found), *kept[max(found)])

    def checkpoint(self, name: str) -> int:
        found = self.state.checkpoints.get(name)
        return found[0] if found else 0

    def has_checkpoint(self, name: str) -> bool:
        return name in self.state.checkpoints

    def save_checkpoint(self, name: str, position: int, at: str) -> None:
        with self.transaction():
            self._set(self.state.checkpoints, name, (position, at))

    def move_checkpoint(self, name: str, position: int, expected: int, at: str) -> bool:
        with self.transaction():
            if self.checkpoint(name) != expected:
                return False
            self._set(self.state.checkpoints, name, (position, at))
            return True

    def delete_checkpoint(self, name: str) -> None:
        with self.transaction():
            self._set(self.state.checkpoints, name, None)

    def park(self, letter: DeadLetter) -> None:
        with self.transaction():
            letters = self.state.letters
            key = (letter.subscriber, letter.position)
            same = [d.id for d in letters.values() if (d.subscriber, d.position) == key]
            letter_id = same[0] if same else max(letters, default=0) + 1
            self._set(letters, letter_id, attrs.evolve(letter, id=letter_id))

    def dead_letters(self, subscriber: str | None, status: str | None) -> list[DeadLetter]:
        with self.state.lock:
            return [
                d
                for _, d in sorted(self.state.letters.items())
                if (subscriber is None or d.subscriber == subscriber)
                and (status is None or d.status == status)
            ]

    def set_dead_letter_status(self, letter_id: int, status: str) -> None:
        with self.transaction():
            letter = self.state.letters.get(letter_id)
            if letter is not None:
                values = [getattr(letter, f) for f in TABLES["dead_letters"]]
                values[TABLES["dead_letters"].index("status")] = status
                self._set(self.state.letters, letter_id, DeadLetter(*values))

    def process_state(self, name: str, process_id: str) -> str | None:
        found = self.state.processes.get((name, process_id))
        return found[0] if found else None

    def save_process(self, name: str, process_id: str, state: str | None, at: str) -> None:
        with self.transaction():
            self._set(
                self.state.processes, (name, process_id), None if state is None else (state, at)
            )

    # -- projections --------------------------------------------------------------------------

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        # Projections write to an SQLite database in memory beside the store: its savepoint.
        with _sqlite_savepoint(self.handle.conn, "event"):
            yield

    @property
    def handle(self) -> Any:
        """An SQLite database in memory, for the projections of a store in memory."""
        if self.state.tables is None:
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self.state.tables = sqlite_utils.Database(conn)
        return self.state.tables

    def drop_tables(self, tables: Sequence[str]) -> None:
        for table in tables:
            self.handle[table].drop(ignore=True)

    # -- copying ----------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with self.state.lock:  # (writers wait: a store in memory keeps one version)
            yield

    def count(self, table: str) -> int:
        return sum(len(page) for page in self.export(table))

    def export(self, table: str) -> Iterator[list[tuple[Any, ...]]]:
        state = self.state
        with state.lock:
            if table == "events":
                rows: list[tuple[Any, ...]] = [state.events[p] for p in state.positions]
            elif table == "streams":
                rows = [(s, v, t) for s, (v, t) in sorted(state.kept.items())]
            elif table == "snapshots":
                rows = [(s, *v) for s, v in sorted(state.snapshots.items())]
            elif table == "snapshot_history":
                rows = [
                    (s, n, *v)
                    for s, kept in sorted(state.snapshot_history.items())
                    for n, v in sorted(kept.items())
                ]
            elif table == "checkpoints":
                rows = [(n, *v) for n, v in sorted(state.checkpoints.items())]
            elif table == "dead_letters":
                rows = [
                    tuple(getattr(d, f) for f in TABLES[table])
                    for _, d in sorted(state.letters.items())
                ]
            elif table == "process_managers":
                rows = [(*k, *v) for k, v in sorted(state.processes.items())]
            elif table == "rejections":
                rows = [attrs.astuple(r) for _, r in sorted(state.rejections.items())]
            else:
                raise ValueError(f"no table {table!r} in a store")
        for start in range(0, len(rows), 1000):
            yield rows[start : start + 1000]

    def next_position(self) -> int:
        return self.state.next_position

    def reserve_positions(self, next_position: int) -> None:
        state = self.state
        old = state.next_position
        state.next_position = max(old, next_position)
        self._changed(lambda: setattr(state, "next_position", old))

    def import_rows(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        state = self.state
        for row in rows:
            if table == "events":
                self._insert(tuple(row))
            elif table == "streams":
                self._set(state.kept, row[0], (row[1], row[2]))
            elif table == "snapshots":
                self._set(state.snapshots, row[0], tuple(row[1:]))
            elif table == "snapshot_history":
                kept = state.snapshot_history.setdefault(row[0], {})
                self._set(kept, row[1], tuple(row[2:]))
            elif table == "checkpoints":
                self._set(state.checkpoints, row[0], (row[1], row[2]))
            elif table == "dead_letters":
                self._set(state.letters, row[0], DeadLetter(*row))
            elif table == "process_managers":
                self._set(state.processes, (row[0], row[1]), (row[2], row[3]))
            elif table == "rejections":
                self._set(state.rejections, row[0], Rejection(*row))
            else:
                raise ValueError(f"no table {table!r} in a store")
