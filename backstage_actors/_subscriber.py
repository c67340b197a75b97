"""The actor that runs one handler, projection or process manager.

It reads the store from its checkpoint in pages (the bus only says "there is more", and a slow
poll covers a lost notice), hands each event to the user's code, and moves its checkpoint:

* handler: after each page (at-least-once);
* projection: in the same transaction as the page's writes, each event in a savepoint so that
  a failing one is undone alone (exactly-once);
* process manager: per event, after the commands it produced were answered, together with the
  instance's state (command ids derive from the event: a redelivery is never executed twice).

A page (of a handler: at most ``PAGE_TIME`` of its work) is followed by a message to itself (on
multiproc a wakeup 1 ms away, which the transport delivers only after reading its sockets), so
tree requests, stops and rebuilds get through between pages however far behind it is.
"""

from __future__ import annotations

import logging
import time
import traceback
from datetime import timedelta
from typing import Any

import sqlite_utils
from thespian.actors import WakeupMessage

from supervisors import SupervisedActor

from . import telemetry
from ._managing import ProcessManaging, _DispatchDue
from ._protocol import Executed, Settings
from .handler import PARK, SKIP, STOP, EventHandler, Metadata, Retry, Subscriber
from .process_manager import ProcessManager
from .projection import Projection
from .store import EventStore, RecordedEvent

__all__ = [
    "LettersRetried",
    "Notify",
    "Progress",
    "Rebuild",
    "RebuildProgress",
    "RetryLetters",
    "RouterAt",
    "SubscriberActor",
]

POLL_INTERVAL = 1.0
#: A handler's page ends after this many seconds even if events are left in it (they come next).
PAGE_TIME = 0.2


def log() -> logging.Logger:
    return logging.getLogger(__name__)


# -- messages -----------------------------------------------------------------------------------


BOOKKEEPING_SYNC = "NORMAL"  # a subscriber's own commits (see SubscriberActor.on_start)


class Notify:
    """New events are stored up to ``position``."""

    def __init__(self, position: int) -> None:
        self.position = position


class Progress:
    """A subscriber's checkpoint (to the bus); ``idle`` when it reached the end of the store."""

    def __init__(self, name: str, position: int, idle: bool, stopped: bool = False) -> None:
        self.name, self.position, self.idle, self.stopped = name, position, idle, stopped


class RouterAt:
    def __init__(self, address: Any) -> None:
        self.address = address


class Rebuild:
    """Reset a projection (drop its tables and checkpoint) and replay from the origin."""

    def __init__(self, request_id: str, reply_to: Any) -> None:
        self.request_id, self.reply_to = request_id, reply_to


class RebuildProgress:
    def __init__(
        self, request_id: str, done: int, total: int, finished: bool = False, error: str = ""
    ) -> None:
        self.request_id, self.done, self.total, self.finished, self.error = (
            request_id,
            done,
            total,
            finished,
            error,
        )


class RetryLetters:
    """Handle these parked events again (dead-letter ids of this subscriber)."""

    def __init__(self, request_id: str, ids: list[int]) -> None:
        self.request_id, self.ids = request_id, ids


class LettersRetried:
    def __init__(self, request_id: str, outcome: dict[int, str]) -> None:
        self.request_id, self.outcome = request_id, outcome


class _Continue:
    pass


class _Poll:
    pass


class _RetryDue:
    def __init__(self, attempt: int) -> None:
        self.attempt = attempt


# -- the actor ----------------------------------------------------------------------------------


class SubscriberActor(ProcessManaging, SupervisedActor):
    kind = "handler"

    def on_start(self) -> None:
        self.settings: Settings = self.args["settings"]
        self.cls: type[Subscriber] = self.args["subscriber"]
        self.kind = self.cls.kind
        self.subscriber = self.cls()
        # A subscriber's commits (checkpoint, projection rows, process state) need no fsync of
        # their own: WAL keeps each atomic, and one lost to a power cut is replayed from the
        # events, which were fsynced when appended (handlers are at-least-once anyway; a
        # process manager's commands are named after the event and run once).
        self.store = EventStore(self.settings.database, BOOKKEEPING_SYNC)
        self.page_size = self.settings.page_size
        self.target: sqlite_utils.Database = self.store.db
        self.target_store = self.store
        if isinstance(self.subscriber, Projection):
            self._open_projection_database()
        elif isinstance(self.subscriber, EventHandler):
            self.subscriber.db = self.store.db
        self.position = self.target_store.checkpoint(self.name)
        if self.position == 0 and self.cls.start_from == "current":
            self.position = self.store.last_position()
            self.target_store.save_checkpoint(self.name, self.position)
        self.state = "running"
        self.failures = 0
        self.attempt = 0
        self.last_error = ""
        self.router: Any = self.args.get("router")
        self.rebuild: Rebuild | None = None
        self.rebuild_total = 0
        self.handled = 0
        self.stats = telemetry.Stats()
        self.dispatching: dict[str, Any] | None = None
        self.continue_pending = False
        self._report(idle=False)
        self._kick()
        self.wakeupAfter(POLL_INTERVAL, _Poll())

    def _open_projection_database(self) -> None:
        assert isinstance(self.subscriber, Projection)
        if self.cls.database:  # type: ignore[attr-defined]
            # The tables and their checkpoint live together in the projection's own file.
            self.target_store = EventStore(self.cls.database, BOOKKEEPING_SYNC)  # type: ignore[attr-defined]
            self.target = self.target_store.db
        self.subscriber.init(self.target)

    def on_stop(self) -> None:
        self.store.close()
        if self.target_store is not self.store:
            self.target_store.close()

    def describe(self) -> dict[str, Any]:
        last = self.store.last_position()
        return {
            "position": self.position,
            "lag": max(0, last - self.position),
            "state": self.state,
            "failures": self.failures,
            "parked": len(self.store.dead_letters(self.name)),
            "handled": self.handled,
            "telemetry": self.stats.summary(),
            **({"last_error": self.last_error} if self.last_error else {}),
        }

    # -- messages ---------------------------------------------------------------------------

    def receive(self, message: Any, sender: Any) -> None:
        if isinstance(message, (Notify, _Continue)):
            if isinstance(message, _Continue):
                self.continue_pending = False
            self._process()
        elif isinstance(message, WakeupMessage):
            self._on_wakeup(message.payload)
        elif isinstance(message, Executed):
            self._on_dispatched(message)
        elif isinstance(message, RouterAt):
            self.router = message.address
            if self.state == "waiting for router":
                self.state = "running"
                self._kick()
        elif isinstance(message, Rebuild):
            self._rebuild(message)
        elif isinstance(message, RetryLetters):
            outcome = {letter_id: self._retry_letter(letter_id) for letter_id in message.ids}
            self.send(sender, LettersRetried(message.request_id, outcome))

    def _on_wakeup(self, payload: Any) -> None:
        if isinstance(payload, _Continue):
            self.continue_pending = False
            self._process()
        elif isinstance(payload, _Poll):
            self.wakeupAfter(POLL_INTERVAL, _Poll())
            if self.state == "running" and not self.continue_pending and self.dispatching is None:
                self._process()
        elif isinstance(payload, _RetryDue) and payload.attempt == self.attempt:
            if self.state == "retrying":
                self.state = "running"
                self._process()
        elif isinstance(payload, _DispatchDue):
            error = TimeoutError("the dispatched commands were not answered in time")
            self._dispatch_failed(error, payload.attempt)

    def _kick(self) -> None:
        if self.continue_pending:
            return
        self.continue_pending = True
        if self.settings.base == "simple":
            self.send(self.myAddress, _Continue())  # behind whatever the mailbox holds
        else:
            # On multiproc a message to itself, or a wakeup already due, is handled before the
            # transport reads its sockets again: page after page would starve tree requests and
            # stops. A wakeup 1 ms away lets the transport wait on its sockets first (and return
            # at once if something arrived).
            self.wakeupAfter(timedelta(milliseconds=1), _Continue())

    def _report(self, idle: bool) -> None:
        if self.supervisor is not None:
            self.send(
                self.supervisor, Progress(self.name, self.position, idle, self.state == "stopped")
            )
        if self.rebuild is not None:
            done = self.position
            self.send(
                self.rebuild.reply_to,
                RebuildProgress(self.rebuild.request_id, done, self.rebuild_total, finished=idle),
            )
            if idle:
                telemetry.emit(
                    "rebuild",
                    {"duration": time.perf_counter() - self.rebuild_started, "events": done},
                    {"projection": self.name},
                )
                self.rebuild = None

    # -- the main loop ----------------------------------------------------------------------

    def _process(self) -> None:
        if self.state != "running" or self.dispatching is not None:
            return
        rows = self.store.read_page(self._read_from(), self.page_size)
        if not rows:
            if not self._in_flight():
                self._report(idle=True)
            return
        more = len(rows) == self.page_size
        if isinstance(self.subscriber, Projection):
            done = self._project(rows)
        elif isinstance(self.subscriber, ProcessManager):
            done = self._manage(rows)
        else:
            done, cut_short = self._handle(rows)
            more = more or cut_short
        if self.state == "running" and self.dispatching is None:
            # A process manager reports where it is only once nothing it dispatched is in
            # flight: a strong dispatch then also waits for the commands its events led to.
            if done and more:
                if not self._in_flight():
                    self._report(idle=False)
                self._kick()  # the next page after whatever else is in the mailbox
            elif not self._in_flight():
                self._report(idle=True)
        elif self.state in ("retrying", "stopped"):
            self._report(idle=self.state == "stopped")

    def _decode(
        self, row: tuple[Any, ...]
    ) -> tuple[RecordedEvent | None, Metadata, Exception | None]:
        try:
            recorded = self.store.decode_row(row)
        except Exception as exc:
            meta = Metadata(
                position=row[0], event_id=row[1], stream_id=row[2], stream_version=row[3]
            )
            return None, meta, exc
        return recorded, Metadata.of(recorded), None

    def _handle(self, rows: list[tuple[Any, ...]]) -> tuple[bool, bool]:
        """Handle a page, or as much of it as fits in :data:`PAGE_TIME`; (still running, cut short).

        A slow handler thus gets back to its mailbox (tree requests, stops) every so often."""
        handler = self.subscriber
        assert isinstance(handler, EventHandler)
        position = self.position
        cut_at = time.monotonic() + PAGE_TIME
        cut_short = False
        for index, row in enumerate(rows):
            recorded, meta, error = self._decode(row)
            if error is None:
                try:
                    with telemetry.span("handle", self.stats, subscriber=self.name):
                        handler.handle(recorded.data if recorded else None, meta)
                except Exception as exc:
                    error = exc
            if error is not None and not self._policy(error, recorded, meta, row):
                break
            position = row[0]
            self.handled += 1
            self.failures = 0  # "failures" counts in a row, on one event
            if index + 1 < len(rows) and time.monotonic() >= cut_at:
                cut_short = True
                break
        if position != self.position:
            self.position = position
            self.store.save_checkpoint(self.name, position)
        return self.state == "running", cut_short

    def _project(self, rows: list[tuple[Any, ...]]) -> bool:
        """One page, its writes and the checkpoint in one transaction. First the quick way; if
        any event fails, the page is rolled back and done again event by event in savepoints,
        so that only the failing event's writes are undone and its error policy applies."""
        if self._project_quickly(rows):
            return True
        projection = self.subscriber
        assert isinstance(projection, Projection)
        conn = self.target.conn
        position = self.position
        with self.target_store.transaction():
            for row in rows:
                recorded, meta, error = self._decode(row)
                if error is None:
                    conn.execute("SAVEPOINT event")
                    try:
                        with telemetry.span("handle", self.stats, subscriber=self.name):
                            projection.project(
                                recorded.data if recorded else None, meta, self.target
                            )
                        conn.execute("RELEASE event")
                    except Exception as exc:
                        conn.execute("ROLLBACK TO event")
                        conn.execute("RELEASE event")
                        error = exc
                if error is not None and not self._policy(error, recorded, meta, row):
                    break
                position = row[0]
                self.handled += 1
                self.failures = 0
            if position != self.position:
                self.target_store.save_checkpoint(self.name, position)
        self.position = position
        return self.state == "running"

    def _project_quickly(self, rows: list[tuple[Any, ...]]) -> bool:
        """The whole page without savepoints; False (and nothing written) if any event failed."""
        projection = self.subscriber
        assert isinstance(projection, Projection)
        started = time.perf_counter()
        try:
            with self.target_store.transaction():
                for row in rows:
                    recorded = self.store.decode_row(row)
                    projection.project(recorded.data, Metadata.of(recorded), self.target)
                self.target_store.save_checkpoint(self.name, rows[-1][0])
        except Exception:
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

    # -- errors -----------------------------------------------------------------------------

    def _policy(
        self,
        error: BaseException,
        recorded: RecordedEvent | None,
        meta: Metadata,
        row: tuple[Any, ...],
    ) -> bool:
        """Apply the subscriber's error policy; True to go on past this event."""
        self.failures += 1
        self.last_error = f"position {row[0]}: {type(error).__name__}: {error}"
        try:
            decision = self.subscriber.error(
                error, recorded.data if recorded else None, meta, self.failures
            )
        except Exception as exc:
            log().exception("%s: its error policy raised; parking the event", self.name)
            decision, error = PARK, exc
        if isinstance(decision, Retry):
            log().warning("%s: %s; retry in %.2fs", self.name, self.last_error, decision.delay)
            self.state = "retrying"
            self.attempt += 1
            self.wakeupAfter(max(0.0, decision.delay), _RetryDue(self.attempt))
            return False
        if decision == STOP:
            log().error("%s: stopped on %s", self.name, self.last_error)
            self.state = "stopped"
            return False
        status = "skipped" if decision == SKIP else "parked"
        try:
            self.store.park(
                self.name,
                recorded or _placeholder(row),
                type(error).__name__,
                str(error),
                "".join(traceback.format_exception(error)),
                self.failures,
                status,
            )
        except Exception as exc:  # a full disk, say: the event is not past, it comes again
            log().error(
                "%s: could not record the event at %s as %s: %s: %s",
                self.name,
                self.last_error,
                status,
                type(exc).__name__,
                exc,
            )
            raise
        log().error("%s: %s the event at %s", self.name, status, self.last_error)
        self.failures = 0
        return True

    # -- dead letters -----------------------------------------------------------------------

    def _retry_letter(self, letter_id: int) -> str:
        letter = next(
            (d for d in self.store.dead_letters(self.name, None) if d.id == letter_id), None
        )
        if letter is None:
            return f"failed: no dead letter {letter_id} for {self.name}"
        if isinstance(self.subscriber, ProcessManager):
            return "failed: process managers cannot retry a parked event out of order"
        try:
            recorded = self.store.event_at(letter.position)
            if recorded is None:
                return f"failed: the event at position {letter.position} is gone"
            meta = Metadata.of(recorded)
            if isinstance(self.subscriber, Projection):
                with self.target_store.transaction():
                    self.subscriber.project(recorded.data, meta, self.target)
            elif isinstance(self.subscriber, EventHandler):
                self.subscriber.handle(recorded.data, meta)
        except Exception as exc:
            self.store.park(
                self.name,
                recorded
                or _placeholder(
                    (letter.position, letter.event_id, letter.stream_id, letter.version)
                ),
                type(exc).__name__,
                str(exc),
                "".join(traceback.format_exception(exc)),
                letter.failures + 1,
            )
            return f"failed: {type(exc).__name__}: {exc}"
        self.store.set_dead_letter_status(letter_id, "retried")
        return "retried"

    # -- projection rebuild -----------------------------------------------------------------

    def _rebuild(self, request: Rebuild) -> None:
        projection = self.subscriber
        if not isinstance(projection, Projection):
            self.send(
                request.reply_to,
                RebuildProgress(request.request_id, 0, 0, True, f"{self.name} is not a projection"),
            )
            return
        with self.target_store.transaction():
            for table in projection.tables:
                self.target[table].drop(ignore=True)
            self.target_store.delete_checkpoint(self.name)
        projection.init(self.target)
        self.position = 0
        self.state = "running"
        self.failures = 0
        self.rebuild = request
        self.rebuild_total = self.store.last_position()
        self.rebuild_started = time.perf_counter()
        self._kick()


def _placeholder(row: tuple[Any, ...]) -> RecordedEvent:
    """Enough of an unreadable event to park it."""
    from datetime import UTC, datetime

    return RecordedEvent(
        str(row[1]),
        str(row[2]),
        int(row[3]),
        int(row[0]),
        str(row[4]) if len(row) > 4 else "?",
        None,
        {},
        datetime.now(UTC),
    )
