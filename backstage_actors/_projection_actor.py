"""The runtime of a :class:`~backstage_actors.projection.Projection`: exactly-once.

A page's writes and the checkpoint are one transaction, in the projection's own database file
when it names one. First the quick way, the whole page at once; if any event fails, the page is
rolled back and done again event by event in savepoints, so that only the failing event's writes
are undone and its error policy applies. A rebuild drops the projection's tables and checkpoint
and replays from the origin, reporting its progress to whoever asked.
"""

from __future__ import annotations

import time
from typing import Any

from . import telemetry
from ._subscriber import (
    BOOKKEEPING_SYNC,
    CheckpointMoved,
    Rebuild,
    RebuildProgress,
    SubscriberActor,
    log,
)
from .handler import Metadata
from .projection import Projection
from .store import EventStore, RecordedEvent

__all__ = ["ProjectionActor"]


class ProjectionActor(SubscriberActor):
    """Runs one :class:`Projection`."""

    kind = "projection"
    subscriber: Projection

    def open(self) -> None:
        self.target: Any = self.store.handle  # sqlite_utils.Database, or PostgresHandle
        self.rebuild: Rebuild | None = None
        self.rebuild_requests: list[Rebuild] = []  # everyone waiting for the current rebuild
        self.rebuild_total = 0
        self.rebuild_started = 0.0
        database = self.subscriber.database
        if database:
            # The tables and their checkpoint live together in the projection's own file.
            self.target_store = EventStore(database, BOOKKEEPING_SYNC)
            self.target = self.target_store.handle
        self._replay_lost_tables()
        self.subscriber.init(self.target)

    def _replay_lost_tables(self) -> None:
        """A checkpoint past the origin with none of the projection's tables (a store copied
        without them, tables dropped by hand): what they held is lost, so replay from the
        origin rather than go on from the checkpoint on empty tables."""
        tables = self.subscriber.tables
        if not tables or self.target_store.checkpoint(self.name) == 0:
            return
        if any(self._has_table(table) for table in tables):
            return
        log().warning(
            "%s: its checkpoint is at %d but none of its tables (%s) exists: replaying from"
            " the origin",
            self.name,
            self.target_store.checkpoint(self.name),
            ", ".join(tables),
        )
        self.target_store.save_checkpoint(self.name, 0)

    def _has_table(self, table: str) -> bool:
        """Whether ``table`` exists, however its name was written (quoted or not)."""
        if self.target_store.kind == "postgres":
            found = self.target.query(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
                " AND tablename IN (%s, lower(%s))",
                (table, table),
            )
            return bool(found[0][0])
        return table.lower() in {name.lower() for name in self.target.table_names()}

    def process_page(self, rows: list[tuple[Any, ...]]) -> tuple[bool, bool]:
        try:
            if self._project_quickly(rows):
                return True, False
            position = self.position
            with self.target_store.transaction():
                for row in rows:
                    if not self._give(row, self._project_in_savepoint):
                        break
                    position = row[0]
                if position != self.position:
                    self.save_checkpoint_fenced(self.target_store, position)
        except CheckpointMoved:  # (the page's transaction rolled back)
            self.checkpoint_moved()
            return False, False
        self.position = position
        return self.state == "running", False

    def _project_in_savepoint(self, data: Any, meta: Metadata) -> None:
        """One event in a savepoint of the page's transaction: a failure undoes only its rows."""
        with self.target_store.savepoint():
            self.subscriber.project(data, meta, self.target)

    def _project_quickly(self, rows: list[tuple[Any, ...]]) -> bool:
        """The whole page without savepoints; False (and nothing written) if any event failed."""
        started = time.perf_counter()
        try:
            with self.target_store.transaction():
                for row in rows:
                    recorded = self.store.decode_row(row)
                    self.subscriber.project(recorded.data, Metadata.of(recorded), self.target)
                self.save_checkpoint_fenced(self.target_store, rows[-1][0])
        except CheckpointMoved:
            raise
        except self.settings.stops:
            raise
        except BaseException:  # one by one, then: the event that fails is found
            return False
        elapsed = time.perf_counter() - started
        self.stats.record_many("handle", len(rows), elapsed)
        telemetry.emit(
            "handle",
            {"duration": elapsed / len(rows), "events": len(rows)},
            {"subscriber": self.name},
        )
        self.position = rows[-1][0]
        self.handled += len(rows)
        self.failures = 0
        return True

    def redeliver(self, recorded: RecordedEvent, meta: Metadata, letter_id: int = 0) -> None:
        """Project a parked event again, once: in the application's database the rows and the
        letter's new status are one commit. In a file of its own they cannot be, so the rows
        are committed with a mark of the letter (a checkpoint named after it and its event),
        and a retry that finds the mark projects nothing: it only closes the letter, which the
        one before it did not live to do."""
        own_file = self.target_store is not self.store
        mark = f"{self.name}/retried letter/{letter_id}/{meta.event_id}"
        if own_file and letter_id and self.target_store.has_checkpoint(mark):
            return
        with self.target_store.transaction():
            self.subscriber.project(recorded.data, meta, self.target)
            if letter_id and not own_file:
                self.store.set_dead_letter_status(letter_id, "retried")
            elif letter_id:
                self.target_store.save_checkpoint(mark, meta.position)

    # -- rebuild ----------------------------------------------------------------------------

    def rebuild_from_origin(self, request: Rebuild) -> None:
        with self.target_store.transaction():
            self.target_store.drop_tables(self.subscriber.tables)
            # 0, not none: a "current" projection restarted mid-rebuild goes on from the
            # origin (with no checkpoint it would start at the end: its tables left empty)
            self.target_store.save_checkpoint(self.name, 0)
            # Its letters are replayed too (parked again if they still fail): retried, a
            # letter of the old rows would project its event a second time.
            with self.store.transaction():
                for letter in self.store.dead_letters(self.name):
                    self.store.set_dead_letter_status(letter.id, "rebuilt")
        self.subscriber.init(self.target)
        self.position = 0
        self.state = "running"
        self.failures = 0
        self.rebuild = request
        self.rebuild_requests.append(request)  # (an earlier one's rebuild starts over too)
        self.rebuild_total = self.store.last_position()
        self.rebuild_started = time.perf_counter()
        self._report(idle=False)  # (the bus: its old position no longer holds)
        self._kick()

    def after_report(self, idle: bool) -> None:
        if self.rebuild is None:
            return
        done = self.position
        for request in self.rebuild_requests:
            self.send(
                request.reply_to,
                RebuildProgress(request.request_id, done, self.rebuild_total, finished=idle),
            )
        if idle:
            telemetry.emit(
                "rebuild",
                {"duration": time.perf_counter() - self.rebuild_started, "events": done},
                {"projection": self.name},
            )
            self.rebuild = None
            self.rebuild_requests = []
