"""The memory recorder's history queries (as :mod:`._sqlite_history` for SQLite), by scanning."""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from ._appending import Row
from ._queries import check_field, check_rejection_field, matches
from .records import EventQuery, Rejection

if TYPE_CHECKING:
    from .memory import _State

__all__ = ["MemoryHistory"]


class MemoryHistory:
    """Mixed into :class:`~.memory.MemoryRecorder`."""

    if TYPE_CHECKING:  # the recorder's own attribute, with its type
        state: _State
    _set: Callable[[dict[Any, Any], Any, Any], None]

    def query_page(self, after: int, limit: int, query: EventQuery) -> list[Row]:
        for name, _ in query.metadata:
            check_field(name)
        found: list[Row] = []
        with self.state.lock:
            start = bisect.bisect_right(self.state.positions, after)
            for position in self.state.positions[start:]:
                row = self.state.events[position]
                if matches(query, row, json.loads(row[8]) if query.metadata else {}):
                    found.append(row)
                    if len(found) >= limit:
                        break
        return found

    def version_at(self, stream_id: str, at: str) -> int:
        with self.state.lock:
            rows = self.state.streams.get(stream_id, [])
            return max((int(r[3]) for r in rows if r[9] <= at), default=0)

    def event_by_id(self, event_id: str) -> Row | None:
        row: Row | None = self.state.ids.get(event_id)
        return row

    def record_rejection(self, rejection: Rejection) -> None:
        with self.transaction():  # type: ignore[attr-defined]
            table = self.state.rejections
            key = max(table, default=0) + 1
            self._set(table, key, attrs.evolve(rejection, id=key))

    def rejections(self, field: str, value: str) -> list[Rejection]:
        check_rejection_field(field)
        with self.state.lock:
            found = [r for _, r in sorted(self.state.rejections.items())]
        return [r for r in found if getattr(r, field) == value]
