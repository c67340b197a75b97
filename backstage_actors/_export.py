"""``backstage export``: events with their metadata to a file for analysis (JSON lines or Parquet).

An export reads the store in pages by position and writes each page before it reads the next:
memory stays constant whatever the store holds. Events are written as stored: ``data`` and
``metadata`` are the stored JSON (not upcast; ``schema_version`` says which shape a payload has).

JSON lines need nothing more. Each page is written and flushed whole, so the file always ends at
an event (or inside the last one, after a crash: ``--resume`` cuts that partial line and goes on
after the last complete one). Parquet needs ``pyarrow`` (``pip install backstage-actors[export]``);
it is written to ``FILE.partial`` and renamed at the end, so ``FILE`` is never half a file. A
Parquet file cannot be appended to: resume a Parquet export with ``--since`` into a new file.

An event whose stored JSON is broken, or whose text is not UTF-8 (written by hand, or by another
program), ends a JSON lines file at the event before it. The rest of the store is still checked,
so that one error names every broken event (the first 100, the others counted) and one mending
suffices before ``--resume``.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from . import _security
from .errors import BackstageError, StoredEventError
from .store import EventStore
from .store._appending import UnreadablePage, UnreadableRow
from .store.records import EventQuery

__all__ = [
    "FORMATS",
    "NAMED",
    "BrokenRows",
    "ExportResult",
    "broken_events",
    "export_events",
    "last_exported_position",
]

FORMATS = ("jsonl", "parquet")

Progress = Callable[[int, int], None]  # (position reached, last position of the store)

_PAGE = 5000  # rows per read and per write: the memory an export holds


@attrs.frozen
class ExportResult:
    """What an export wrote: ``count`` events, the last at ``last_position`` (0 if none)."""

    path: str
    format: str
    count: int
    last_position: int
    resumed_after: int


def export_events(
    store: EventStore,
    path: str,
    format: str = "jsonl",
    query: EventQuery | None = None,
    after: int = 0,
    resume: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Write the events past position ``after`` that match ``query`` to ``path``.

    ``resume=True`` (JSON lines) appends to ``path`` after the last event it holds, so that an
    interrupted export finishes without duplicating or skipping an event."""
    if format not in FORMATS:
        raise BackstageError(f"unknown export format {format!r}: use {' or '.join(FORMATS)}")
    try:
        return _export(store, path, format, query or EventQuery(), after, resume, progress)
    except OSError as exc:  # the file: a missing directory, a directory, a full disk
        raise BackstageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _export(
    store: EventStore,
    path: str,
    format: str,
    query: EventQuery,
    after: int,
    resume: bool,
    progress: Progress | None,
) -> ExportResult:
    if format == "parquet":
        if resume:
            raise BackstageError(
                "--resume works with jsonl only (a Parquet file cannot be appended to);"
                " export the rest with --since POSITION into a new file"
            )
        return _export_parquet(store, path, query, after, progress)
    start = after
    if resume and os.path.exists(path):
        start = max(after, last_exported_position(path, cut=True))
    count, last = _export_jsonl(store, path, query, start, resume, progress)
    return ExportResult(path, format, count, last or start, start if resume else after)


def _rows(store: EventStore, query: EventQuery, after: int) -> Any:
    """Pages of rows past ``after`` matching ``query``. A row whose stored data or metadata is
    not valid JSON, or that holds text that is not UTF-8 (written by hand), ends the pages: the
    rows before it come as a last page, the rest of the store is checked (not read into
    memory), then one :class:`StoredEventError` names every broken row (the first
    :data:`NAMED`, the rest counted)."""
    while True:
        page = store.recorder.checked_page(after, _PAGE, query)
        if not page:
            return
        if type(page) is UnreadablePage or min(map(_VALIDITY, page)) != 3:  # (no parse here)
            first = next(row for row in page if _broken(row))
            good = page[: page.index(first)]
            if good:
                yield good
            broken = BrokenRows()
            _check_events(store, query, page, broken)
            raise broken.error()
        yield page
        if len(page) < _PAGE:
            return
        after = page[-1][0]


def _check_events(
    store: EventStore, query: EventQuery, page: list[tuple[Any, ...]] | None, into: BrokenRows
) -> None:
    """Add the broken rows of ``page`` and of every page after it (from the start when None)
    that match ``query`` to ``into``."""
    if page is None:
        page = store.recorder.checked_page(0, _PAGE, query)
    while page:
        if type(page) is UnreadablePage or min(map(_VALIDITY, page)) != 3:
            into.add_events(page)
        if len(page) < _PAGE:
            return
        page = store.recorder.checked_page(page[-1][0], _PAGE, query)


def broken_events(store: EventStore) -> BrokenRows:
    """The events of ``store`` whose stored JSON is broken (none: an empty, false result)."""
    broken = BrokenRows()
    _check_events(store, EventQuery(), None, broken)
    return broken


_VALIDITY = operator.itemgetter(10)  # the column checked_page adds: 3 when both are JSON


def _broken(row: tuple[Any, ...]) -> bool:
    return row[10] != 3 or type(row) is UnreadableRow


NAMED = 100  # broken rows named in one error; the rest are counted


class BrokenRows:
    """Broken rows found by a scan: the first :data:`NAMED` described, the rest only counted
    (memory stays bounded whatever the store holds)."""

    def __init__(self) -> None:
        self.named: list[str] = []
        self.count = 0
        self.events = 0  # of count, events (the others: rows of the other tables)
        self.position: int | None = None  # the first broken event's
        self.not_utf8 = False  # an event holds text that is not UTF-8

    def __bool__(self) -> bool:
        return self.count > 0

    def add(self, description: str) -> None:
        """One more broken row, described (``table (key): what is wrong``)."""
        self.count += 1
        if len(self.named) < NAMED:
            self.named.append(description)

    def add_events(self, page: list[tuple[Any, ...]]) -> None:
        """The broken rows of a page of :meth:`Recorder.checked_page`."""
        for row in page:
            if not _broken(row):
                continue
            if self.position is None:
                self.position = row[0]
            self.events += 1
            bad = [name for bit, name in ((1, "data"), (2, "metadata")) if not row[10] & bit]
            wrong = [f"its {' and '.join(bad)} is not valid JSON"] if bad else []
            if type(row) is UnreadableRow:  # (its text is shown with backslash escapes)
                wrong.insert(0, row.what)
                self.not_utf8 = True
            self.add(
                f"position {row[0]} (stream {row[2]!r:.80}, {row[4]:.80}): {' and '.join(wrong)}"
            )

    def error(self, prefix: str = "", suffix: str = "") -> StoredEventError:
        """One error naming them (``prefix`` and ``suffix`` around the list)."""
        if self.events == self.count:
            what = "an event" if self.count == 1 else f"{self.count} events"
            stored = "JSON or text" if self.not_utf8 else "JSON"
            head = f"the stored {stored} of {what} is broken"
        else:
            head = (
                "a stored row is broken"
                if self.count == 1
                else f"{self.count} stored rows are broken"
            )
        more = f"; and {self.count - len(self.named)} more" if self.count > len(self.named) else ""
        return StoredEventError(
            f"{prefix}{head}: {'; '.join(self.named)}{more}{suffix}", self.position
        )


def _json_line(row: tuple[Any, ...]) -> str:
    position, event_id, stream_id, version, type_name, schema_version, _, data, meta, at, _ = row
    # The stored JSON goes in as it is (no parse and dump); a payload on several lines (copied
    # from elsewhere) is made compact, so one event stays one line.
    if "\n" in data:
        data = json.dumps(json.loads(data))
    if "\n" in meta:
        meta = json.dumps(json.loads(meta))
    stamp = at if isinstance(at, str) else at.isoformat()
    return (
        f'{{"position": {position}, "event_id": {json.dumps(event_id)}, "stream_id": '
        f'{json.dumps(stream_id)}, "version": {version}, "type": {json.dumps(type_name)}, '
        f'"schema_version": {schema_version}, "data": {data}, "metadata": {meta}, '
        f'"recorded_at": "{stamp}"}}\n'
    )


def _export_jsonl(
    store: EventStore,
    path: str,
    query: EventQuery,
    after: int,
    append: bool,
    progress: Progress | None,
) -> tuple[int, int]:
    flags = os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)
    count, last = 0, 0
    total = store.last_position()
    with os.fdopen(_security.open_private(path, flags), "w", encoding="utf-8") as file:
        try:
            for page in _rows(store, query, after):
                file.write("".join(_json_line(row) for row in page))
                file.flush()
                count += len(page)
                last = page[-1][0]
                if progress:
                    progress(last, total)
        except StoredEventError as exc:
            raise StoredEventError(
                f"cannot export: {exc}; {path} ends with the event before position"
                f" {exc.position} (mend or delete those rows, then --resume)",
                exc.position,
            ) from None
    if progress:
        progress(total, total)
    return count, last


def last_exported_position(path: str, cut: bool = False) -> int:
    """The position of the last complete event in the JSON lines file ``path`` (0 if none);
    ``cut=True`` removes a partial last line (an export interrupted mid-write)."""
    with open(path, "rb+" if cut else "rb") as file:
        end = file.seek(0, os.SEEK_END)
        tail, step = b"", 4096
        while end > 0:
            start = max(0, end - step)
            file.seek(start)
            tail = file.read(end - start) + tail
            end = start
            if tail.count(b"\n") >= 2 or (end == 0 and b"\n" in tail):
                break
        complete = tail[: tail.rfind(b"\n") + 1] if b"\n" in tail else b""
        if cut:
            file.truncate(end + len(complete))
    lines = complete.splitlines()
    if not lines:
        return 0
    try:
        return int(json.loads(lines[-1])["position"])
    except (ValueError, KeyError, TypeError):
        raise BackstageError(
            f"{path} does not end with an exported event: cannot resume it"
        ) from None


# -- Parquet ------------------------------------------------------------------------------------


def _pyarrow() -> tuple[Any, Any]:
    try:
        # Lazy: pyarrow is the optional extra `export`, needed only for Parquet.
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise BackstageError(
            "Parquet export needs pyarrow: pip install 'backstage-actors[export]'"
        ) from None
    return pyarrow, pyarrow.parquet


def _export_parquet(
    store: EventStore, path: str, query: EventQuery, after: int, progress: Progress | None
) -> ExportResult:
    pa, pq = _pyarrow()
    schema = pa.schema(
        [
            ("position", pa.int64()),
            ("event_id", pa.string()),
            ("stream_id", pa.string()),
            ("version", pa.int64()),
            ("type", pa.string()),
            ("schema_version", pa.int32()),
            ("data", pa.string()),
            ("metadata", pa.string()),
            ("recorded_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    partial = f"{path}.partial"
    _security.create_private(partial)
    count, last = 0, 0
    total = store.last_position()
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            for page in _rows(store, query, after):
                columns = list(zip(*page, strict=True))
                stamps = [
                    at if isinstance(at, datetime) else datetime.fromisoformat(at)
                    for at in columns[9]
                ]
                values = [*columns[0:6], columns[7], columns[8], stamps]
                batch = pa.record_batch(
                    [pa.array(v, type=f.type) for v, f in zip(values, schema, strict=True)],
                    schema=schema,
                )
                writer.write_batch(batch)
                count += len(page)
                last = page[-1][0]
                if progress:
                    progress(last, total)
    except StoredEventError as exc:
        os.unlink(partial)
        raise StoredEventError(f"cannot export: {exc}; nothing was written", exc.position) from None
    except BaseException:
        os.unlink(partial)
        raise
    os.replace(partial, path)
    if progress:
        progress(total, total)
    return ExportResult(path, "parquet", count, last or after, after)
