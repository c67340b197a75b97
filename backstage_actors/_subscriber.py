"""What the actors running a handler, a projection or a process manager share.

Each reads the store from its checkpoint in pages (the bus only says "there is more", and a slow
poll covers a lost notice), hands each event to the user's code, and moves its checkpoint; how it
does the last two is its kind's runtime, a subclass of :class:`SubscriberActor` in a module of its
own:

* :mod:`._handler_actor`: after each page (at-least-once);
* :mod:`._projection_actor`: in the same transaction as the page's writes, each event in a
  savepoint so that a failing one is undone alone (exactly-once);
* :mod:`._process_manager_actor`: per event, after the commands it produced were answered,
  together with the instance's state (command ids derive from the event: a redelivery is never
  executed twice).

The error policy (retry, skip, park, stop), the dead letters, progress reports to the bus and the
pacing of pages live here, once.

A page (of a handler: at most ``PAGE_TIME`` of its work) is followed by a message to itself (on
multiproc a wakeup 1 ms away, which the transport delivers only after reading its sockets), so
tree requests, stops and rebuilds get through between pages however far behind it is.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from thespian.actors import WakeupMessage

from supervisors import SupervisedActor

from . import telemetry
from ._lease import RETRY_INTERVAL, lease_for
from ._protocol import Settings
from .errors import error_text
from .handler import PARK, SKIP, STOP, Metadata, Retry, Subscriber
from .store import EventStore, RecordedEvent

__all__ = [
    "POLL_INTERVAL",
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


class CheckpointMoved(Exception):
    """The checkpoint is not where this subscriber left it: another member ran it meanwhile
    (see :meth:`SubscriberActor.save_checkpoint_fenced`)."""


class _Continue:
    """Read the next page (a message to itself, or a wakeup on multiproc)."""


class _LeaseRetry:
    """Standing by: time to try the lease again."""


class _Poll:
    """The slow poll that covers a lost notice."""


class _RetryDue:
    def __init__(self, attempt: int) -> None:
        self.attempt = attempt


# -- the actor ----------------------------------------------------------------------------------


class SubscriberActor(SupervisedActor):
    """The shared loop of every subscriber runtime; a subclass per kind says what a page is.

    Subclasses implement :meth:`process_page` and :meth:`redeliver`, and may override the hooks
    :meth:`open`, :meth:`busy`, :meth:`in_flight`, :meth:`read_from`, :meth:`receive_other`, :meth:`wakeup_other`, :meth:`router_known`
    and :meth:`after_report`.
    """

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
        self.target_store = self.store  # where the checkpoint lives
        self.open()
        # -- cluster: the lease gate (issue 19). On PostgreSQL a subscriber runs only while it
        # holds its lease; without it, it stands by and tries again every RETRY_INTERVAL.
        self.lease = lease_for(self.settings, self.name)
        self.state = "running" if self.lease is None or self.lease.try_acquire() else "standby"
        self.position = self.target_store.checkpoint(self.name)
        if self.state == "standby":
            self.wakeupAfter(RETRY_INTERVAL, _LeaseRetry())
        # -- end of the lease gate
        elif (
            self.position == 0
            and self.cls.start_from == "current"
            and not self.target_store.has_checkpoint(self.name)
        ):
            self.position = self.store.last_position()
            self.target_store.save_checkpoint(self.name, self.position)
        if self.state == "running":
            self._forget_letters_ahead()
        self.failures = 0
        self.attempt = 0
        self.last_error = ""
        self.router: Any = self.args.get("router")
        self.handled = 0
        self.stats = telemetry.Stats()
        self.continue_pending = False
        self._report(idle=False)
        self._kick()
        self.wakeupAfter(POLL_INTERVAL, _Poll())

    def on_stop(self) -> None:
        if self.lease is not None:
            self.lease.close()
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

    # -- what a kind provides ---------------------------------------------------------------

    def open(self) -> None:
        """Prepare the subscriber before its checkpoint is read (tables, databases)."""

    def process_page(self, rows: list[tuple[Any, ...]]) -> tuple[bool, bool]:
        """Hand a page of rows to the user's code and move the checkpoint; ``(still running,
        cut short)``: cut short when rows were left for the next page."""
        raise NotImplementedError

    def redeliver(self, recorded: RecordedEvent, meta: Metadata, letter_id: int = 0) -> None:
        """Hand a parked event to the user's code again (``dead-letters retry``); raise if it
        fails again. (A kind may mark ``letter_id`` retried in the same transaction.)"""
        raise NotImplementedError

    def redelivery_refusal(self) -> str:
        """Why this kind cannot retry a parked event, or "" if it can."""
        return ""

    def busy(self) -> bool:
        """True while the subscriber waits for something of its own (a process manager's
        commands): no page is read meanwhile."""
        return False

    def in_flight(self) -> bool:
        """True while work it started is unfinished (a process manager's commands): it does
        not report itself idle, so a strong dispatch waits for that work too."""
        return False

    def read_from(self) -> int:
        """The position the next page starts at (past the checkpoint by default)."""
        return self.position + 1

    def next_page(self) -> tuple[list[tuple[Any, ...]], bool]:
        """The rows to process next and whether the store may hold more after them (by
        default: a page read from :meth:`read_from`; full when it has ``page_size`` rows)."""
        rows = self.store.read_page(self.read_from(), self.page_size)
        return rows, len(rows) == self.page_size

    def receive_other(self, message: Any, sender: Any) -> None:
        """A message none of the shared ones: the kind's own (default: ignored)."""

    def wakeup_other(self, payload: Any) -> None:
        """A wakeup none of the shared ones: the kind's own (default: ignored)."""

    def router_known(self) -> None:
        """The router's address arrived (``self.router``)."""

    def after_report(self, idle: bool) -> None:
        """Called after each progress report to the bus."""

    # -- messages ---------------------------------------------------------------------------

    def receive(self, message: Any, sender: Any) -> None:
        if isinstance(message, (Notify, _Continue)):
            if isinstance(message, _Continue):
                self.continue_pending = False
            self._process()
        elif isinstance(message, WakeupMessage):
            self._on_wakeup(message.payload)
        elif isinstance(message, RouterAt):
            self.router = message.address
            self.router_known()
        elif isinstance(message, Rebuild) and self.state == "standby":  # (the lease gate)
            reason = f"{self.name} runs on another member (this one does not hold its lease)"
            self.send(message.reply_to, RebuildProgress(message.request_id, 0, 0, True, reason))
        elif isinstance(message, Rebuild):
            self.rebuild_from_origin(message)
        elif isinstance(message, RetryLetters):
            outcome = {letter_id: self._retry_letter(letter_id) for letter_id in message.ids}
            self.send(sender, LettersRetried(message.request_id, outcome))
        else:
            self.receive_other(message, sender)

    def rebuild_from_origin(self, request: Rebuild) -> None:
        """Only projections rebuild; the others say so."""
        self.send(
            request.reply_to,
            RebuildProgress(request.request_id, 0, 0, True, f"{self.name} is not a projection"),
        )

    def _on_wakeup(self, payload: Any) -> None:
        if isinstance(payload, _Continue):
            self.continue_pending = False
            self._process()
        elif isinstance(payload, _LeaseRetry):
            self._retry_lease()
        elif isinstance(payload, _Poll):
            self.wakeupAfter(POLL_INTERVAL, _Poll())
            if self.lease is not None and self.state != "standby" and not self.lease.still_held():
                self._stand_by()  # lost with its connection: another member may run it
            if self.state == "running" and not self.continue_pending and not self.busy():
                self._process()
        elif isinstance(payload, _RetryDue):
            if payload.attempt == self.attempt and self.state == "retrying":
                self.state = "running"
                self._process()
        else:
            self.wakeup_other(payload)

    def _retry_lease(self) -> None:
        """Standing by: take the lease if its holder is gone, and resume from the checkpoint
        the holder left; meanwhile report the holder's checkpoint, so a strong dispatch on this
        member waits for the member that runs the subscriber."""
        if self.state != "standby" or self.lease is None:
            return
        self.position = self.target_store.checkpoint(self.name)
        if not self.lease.try_acquire():
            self._report(idle=True)
            self.wakeupAfter(RETRY_INTERVAL, _LeaseRetry())
            return
        self.position = self.target_store.checkpoint(self.name)  # (after the lease: final)
        self.state = "running"
        self._forget_letters_ahead()
        self.resumed()
        self._report(idle=False)
        self._kick()

    def _forget_letters_ahead(self) -> None:
        """Letters past the checkpoint were written by work that never committed (a crash
        between the letter's commit and the page's, as when a projection keeps its tables in a
        file of its own): those events come again and are parked again if they still fail.
        Left parked, a retry would hand an event over a second time."""
        for letter in self.store.dead_letters(self.name, None):
            if letter.position > self.position and letter.status in ("parked", "skipped"):
                self.store.set_dead_letter_status(letter.id, "replayed")

    def _stand_by(self) -> None:
        self.state = "standby"
        self.lease_lost()
        self.wakeupAfter(RETRY_INTERVAL, _LeaseRetry())

    def save_checkpoint_fenced(self, store: EventStore, position: int) -> None:
        """Save the checkpoint, last in the transaction of the work it covers. Under a lease (a
        cluster) only if it is still where this subscriber left it: the lease decides who runs,
        this decides what commits. A member whose lease lapsed while it worked (its connection
        cut, the process paused) finds the checkpoint moved by the new holder:
        :class:`CheckpointMoved` rolls its transaction back, and :meth:`checkpoint_moved`."""
        if self.lease is None:
            store.save_checkpoint(self.name, position)
        elif not store.move_checkpoint(self.name, position, self.position):
            raise CheckpointMoved(f"{self.name}: the checkpoint moved from {self.position}")

    def checkpoint_moved(self) -> None:
        """After :class:`CheckpointMoved` (its work rolled back): stand by, as when the lease
        is found lost, and resume from the new holder's checkpoint if the lease comes back."""
        log().warning(
            "%s: its checkpoint moved from %d while it worked: another member runs it; this "
            "one's work since was rolled back and it stands by",
            self.name,
            self.position,
        )
        self._stand_by()

    def resumed(self) -> None:
        """Called when this member took the lease over and resumes from the checkpoint."""

    def lease_lost(self) -> None:
        """Called when this member found its lease gone: drop whatever is under way, so that
        nothing of it is saved over what the new holder saves."""

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
        self.after_report(idle)

    # -- the main loop ----------------------------------------------------------------------

    def _process(self) -> None:
        if self.state != "running" or self.busy():
            return
        rows, full = self.next_page()
        if not rows:
            if not self.in_flight():
                self._report(idle=True)
            return
        done, cut_short = self.process_page(rows)
        more = full or cut_short
        if self.state == "running" and not self.busy():
            # A process manager reports where it is only once nothing it dispatched is in
            # flight: a strong dispatch then also waits for the commands its events led to.
            if done and more:
                if not self.in_flight():
                    self._report(idle=False)
                self._kick()  # the next page after whatever else is in the mailbox
            elif not self.in_flight():
                self._report(idle=True)
        elif self.state in ("retrying", "stopped"):
            self._report(idle=self.state == "stopped")

    def _give(self, row: tuple[Any, ...], deliver: Callable[[Any, Metadata], None]) -> bool:
        """Decode one row and give it to ``deliver`` (data, metadata), under the failure policy.

        True if the subscriber moves past the event (delivered, skipped or parked); False if it
        must stop at it (stopped, or retrying later)."""
        recorded, meta, error = self._decode(row)
        if error is None:
            try:
                with telemetry.span("handle", self.stats, subscriber=self.name):
                    deliver(recorded.data if recorded else None, meta)
            except self.settings.stops:
                raise
            except BaseException as exc:  # (of its own: the event fails, not the subscriber)
                error = exc
        if error is not None and not self._policy(error, recorded, meta, row):
            return False
        self.handled += 1
        self.failures = 0  # "failures" counts in a row, on one event
        return True

    def _decode(
        self, row: tuple[Any, ...]
    ) -> tuple[RecordedEvent | None, Metadata, BaseException | None]:
        try:
            recorded = self.store.decode_row(row)
        except self.settings.stops:
            raise
        except BaseException as exc:
            meta = Metadata(
                position=row[0], event_id=row[1], stream_id=row[2], stream_version=row[3]
            )
            return None, meta, exc
        return recorded, Metadata.of(recorded), None

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
        self.last_error = f"position {row[0]}: {type(error).__name__}: {error_text(error)}"
        try:
            decision = self.subscriber.error(
                error, recorded.data if recorded else None, meta, self.failures
            )
        except self.settings.stops:
            raise
        except BaseException as exc:
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
                error_text(error),
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
        if letter.status != "parked":  # retried already (a second request), skipped, rebuilt
            return f"failed: dead letter {letter_id} is {letter.status}, not parked"
        refusal = self.redelivery_refusal()
        if refusal:
            return f"failed: {refusal}"
        recorded = None
        try:
            recorded = self.store.event_at(letter.position)
            if recorded is None:  # truncate_stream deleted it: nothing is left to retry
                self.store.set_dead_letter_status(letter_id, "truncated")
                return f"failed: the event at position {letter.position} is gone (truncated)"
            self.redeliver(recorded, Metadata.of(recorded), letter_id)
        except self.settings.stops:
            raise
        except BaseException as exc:
            self.store.park(
                self.name,
                recorded
                or _placeholder(
                    (letter.position, letter.event_id, letter.stream_id, letter.version)
                ),
                type(exc).__name__,
                error_text(exc),
                "".join(traceback.format_exception(exc)),
                letter.failures + 1,
            )
            return f"failed: {type(exc).__name__}: {error_text(exc)}"
        self.store.set_dead_letter_status(letter_id, "retried")  # (again: idempotent)
        return "retried"


def _placeholder(row: tuple[Any, ...]) -> RecordedEvent:
    """Enough of an unreadable event to park it."""
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
