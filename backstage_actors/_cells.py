"""A shard's aggregates: one cell per live aggregate, run in rounds (no Thespian here).

A cell is an aggregate's state and its own mailbox: its commands run one at a time, in order.
The shard runs its cells in rounds, each in four named steps:

1. **decide**: every cell with work takes its whole mailbox and runs each command on its state,
   applying the events it decides (a command may count on the one before it);
2. **encode** (in decide): the events become the rows of one append per command;
3. **commit**: the round's appends, of every cell, are stored in one transaction (``_writer``);
4. **answer**: each cell walks its decisions in order. Up to its first append that failed, the
   answers stand. From there on, what it decided counted on a state that is not stored: the
   cell rebuilds from the store; the command whose append failed runs again (a conflict, up to
   ``max_retries``) or gets its error, and every later command goes back to the front of the
   mailbox, to be decided again in the next round.

So the invariant is one sentence: **no answer leaves a round before the commit holding every
append its state counted on, and none is given from a state whose append failed.** Work is
decided ahead (a whole mailbox per round); answers are held. What a round reads from the store
(a cell rebuilt, a named command found stored) may be another process's commit that is not on
disk yet: such a round's answers count on every commit written so far (``Writer.commit``).

An exception in ``apply`` crashes that cell only: its command gets :class:`AggregateFailed`,
what the cell decided before it in the round is committed, and the cell rebuilds from the store
before its next command. So does anything else raised by the aggregate's code that is not an
``Exception`` (a ``BaseException`` of its own), in ``execute`` too, except what ``stops`` names
(``Settings.stops``: in-process, Ctrl-C and ``sys.exit()``), which interrupts the round (see
:meth:`Cells._interrupted`). A cell whose stored events cannot be applied is broken: it answers
every command with :class:`AggregateFailed` (rather than crash-looping) until it is passivated.

Cells are kept in an ``OrderedDict`` by last use: passivation (the cap, idle lifespans) drops
them from its front, O(1) per new aggregate.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from typing import Any

import attrs

from . import telemetry
from ._ids import event_id
from ._rejections import note_refusals
from ._writer import Writer
from .aggregate import Aggregate, decide
from .command import CommandItem, DispatchResult
from .errors import (
    AggregateFailed,
    BackstageError,
    CommandRejected,
    InvalidCommand,
    StorageError,
    StoredEventError,
    UnhandledCommand,
    UnregisteredCommand,
    WrongExpectedVersion,
    error_text,
)
from .limits import DEFAULT_LIMITS, Limits
from .router import Router
from .store import AppendRequest, EventStore, RecordedEvent
from .store._codec import encode_event

__all__ = ["Answer", "Cells"]

# (reply_to, request_id, answer, stream_id): one answer leaving the shard.
Answer = tuple[Any, str, Any, str | None]


def log() -> logging.Logger:
    return logging.getLogger(__name__)


@attrs.define(slots=True)
class Work:
    """A command in a cell's mailbox: who waits for it, and its attempt (conflicts retried)."""

    item: CommandItem
    reply_to: Any
    attempt: int = 0
    began: float = 0.0


@attrs.define(slots=True)
class Decision:
    """What a round decided for one command: an answer now, or an append (``index`` into the
    round's requests), or the same as an earlier command of the round (a named repeat)."""

    work: Work
    answer: Any = None
    index: int = -1
    same_as: Decision | None = None
    result: Any = None  # the outcome, once settled


class Cell:
    """One live aggregate: its state (None: to rebuild before its next command) and mailbox."""

    __slots__ = (
        "broken",
        "cls",
        "identity",
        "last_failure",
        "last_used",
        "lifespan",
        "mailbox",
        "restarts",
        "snapshot_at",
        "state",
        "stream_id",
    )

    def __init__(
        self, stream_id: str, identity: str, cls: type[Aggregate], lifespan: float | None
    ) -> None:
        self.stream_id = stream_id
        self.identity = identity
        self.cls = cls
        self.lifespan = lifespan
        self.state: Aggregate | None = None
        self.mailbox: deque[Work] = deque()
        self.broken: str | None = None
        self.snapshot_at: int | None = None
        self.last_used = 0.0
        self.restarts = 0  # crashes of its ``apply`` (each rebuilt it from the store)
        self.last_failure: str | None = None

    def describe(self) -> dict[str, Any]:
        """Its node in ``tree`` (under its shard)."""
        node: dict[str, Any] = {
            "name": self.stream_id,
            "kind": "aggregate",
            "status": "running",
            "restarts": self.restarts,
            "version": self.state.version if self.state is not None else None,
            "queued": len(self.mailbox),
            "children": [],
        }
        if self.broken:
            node["broken"] = self.broken
        if self.last_failure:
            node["last_failure"] = self.last_failure
        return node


def _names_another(metadata: dict[str, Any], item: CommandItem) -> bool:
    """Whether the command that ``metadata`` describes (stored, or earlier in a round) is not
    ``item``, which bears its name: another type, or fields of another digest (a command named
    by its caller carries the digest of its fields; an older event, or a name the system gave,
    none: the type alone is compared)."""
    digest = item.metadata.get("command_digest")
    return metadata.get("command") != type(item.command).__name__ or bool(
        digest and metadata.get("command_digest") not in (None, digest)
    )


class Cells:
    """The aggregates of one shard and their rounds (see the module's docstring)."""

    def __init__(
        self,
        store: EventStore,
        router: Router,
        max_retries: int = 3,
        max_live: int = 10_000,
        lifespan: float | None = None,
        limits: Limits = DEFAULT_LIMITS,
        stops: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit),
    ) -> None:
        self.store = store
        self.router = router
        self.max_retries = max_retries
        self.max_live = max(1, max_live)
        self.lifespan = lifespan
        self.limits = limits
        self.stops = stops  # what interrupts a round rather than failing a command
        self.writer = Writer(store)
        self.cells: OrderedDict[str, Cell] = OrderedDict()  # least recently used first
        self.ready: dict[str, Cell] = {}  # cells with work, in arrival order
        self.passivated = 0
        self.restarts = 0
        self.shortest_lifespan: float | None = None  # of the cells made so far
        self.last_position = 0  # of the last round's commit
        # This round's decisions counted on stored events they read (see Writer.commit).
        self.read = False
        self.stats = telemetry.Stats()
        self.meters: dict[str, telemetry.CommandMeter] = {}  # aggregate type -> counts

    # -- arrival ----------------------------------------------------------------------------

    def submit(self, items: list[CommandItem], reply_to: Any) -> list[Answer]:
        """Queue ``items`` in their cells; answers for those that cannot be routed."""
        errors: list[Answer] = []
        now = time.monotonic()
        began = time.perf_counter()
        for item in items:
            try:
                route, stream_id, identity = self.router.stream_of(item.command, self.limits)
            except (UnregisteredCommand, InvalidCommand) as exc:
                errors.append((reply_to, item.request_id, exc, None))
                continue
            cell = self.cells.get(stream_id)
            if cell is None:
                lifespan = route.lifespan if route.lifespan is not None else self.lifespan
                cell = self.cells[stream_id] = Cell(stream_id, identity, route.aggregate, lifespan)
                if lifespan is not None and (
                    self.shortest_lifespan is None or lifespan < self.shortest_lifespan
                ):
                    self.shortest_lifespan = lifespan
            else:
                self.cells.move_to_end(stream_id)
            cell.last_used = now
            cell.mailbox.append(Work(item, reply_to, 0, began))
            self.ready[stream_id] = cell
        return errors

    @property
    def live(self) -> int:
        return len(self.cells)

    # -- a round ----------------------------------------------------------------------------

    def run_round(self) -> list[Answer]:
        """Decide, commit and answer what the cells with work have in their mailboxes."""
        ready, self.ready = self.ready, {}
        self.read = False
        try:
            requests: list[AppendRequest] = []
            rounds = [(cell, self._decide(cell, requests)) for cell in ready.values()]
            results = self.writer.commit(requests, self.read)
            answers: list[Answer] = []
            for cell, decisions in rounds:
                self._answer(cell, decisions, results, answers)
                if cell.mailbox:
                    self.ready[cell.stream_id] = cell
        except BaseException:
            self._interrupted(ready)
            raise
        self._make_room()
        return answers

    def _interrupted(self, ready: dict[str, Cell]) -> None:
        """The round was interrupted (``KeyboardInterrupt``, a ``BaseException`` of user code):
        what it decided may or may not be stored, and its answers are lost (their callers hear
        that the outcome is unknown). Each of its cells rebuilds from the store before its next
        command, those with work left stay ready, and the next answers count on every commit."""
        for cell in ready.values():
            cell.state = None
            if cell.mailbox:
                self.ready[cell.stream_id] = cell
        self.writer.interrupted()

    def _decide(self, cell: Cell, requests: list[AppendRequest]) -> list[Decision]:
        taken = list(cell.mailbox)
        cell.mailbox.clear()
        state, error = self._state(cell)
        if state is None:
            return [Decision(work, error) for work in taken]
        decisions: list[Decision] = []
        named: dict[str, Decision] = {}
        for position, work in enumerate(taken):
            item = work.item
            if item.idempotent:
                first = named.get(item.command_id)
                if first is not None:
                    if _names_another(first.work.item.metadata, item):
                        decisions.append(
                            Decision(
                                work,
                                InvalidCommand(
                                    f"command_id {item.command_id!r} names two different "
                                    "commands: give each a name of its own"
                                ),
                            )
                        )
                        continue
                    decisions.append(Decision(work, same_as=first))
                    continue
                try:
                    stored = self._already_done(cell, item)
                except BackstageError as exc:  # cannot tell now: not run, the caller hears why
                    decisions.append(Decision(work, exc))
                    continue
                if stored is not None:
                    decisions.append(Decision(work, stored))
                    continue
            decision = self._decide_one(cell, state, work, requests)
            decisions.append(decision)
            if cell.state is None:  # apply raised: the rest waits for the rebuilt state
                cell.mailbox.extend(taken[position + 1 :])
                break
            if item.idempotent:
                named[item.command_id] = decision
        return decisions

    def _decide_one(
        self, cell: Cell, state: Aggregate, work: Work, requests: list[AppendRequest]
    ) -> Decision:
        item = work.item
        name = type(item.command).__name__
        started = time.perf_counter()
        try:
            events = decide(state, item.command)
        except UnhandledCommand as exc:  # a mistake in the aggregate, not a refusal
            return Decision(work, exc)
        except Exception as exc:
            return Decision(work, CommandRejected(name, type(exc).__name__, error_text(exc)))
        except self.stops:
            raise
        except BaseException as exc:  # not a refusal: the aggregate's code broke down
            return Decision(work, self._crash(cell, name, exc, "deciding"))
        finally:
            metadata = {"stream_id": cell.stream_id, "command": name}
            telemetry.finish("execute", self.stats, started, metadata)
        if not events:
            return Decision(
                work,
                DispatchResult(
                    cell.stream_id, state.version, [], item.command_id, item.correlation_id
                ),
            )
        try:
            encoded = [encode_event(event, True, self.limits) for event in events]
        except BackstageError as exc:
            return Decision(work, exc)
        expected = state.version
        try:
            for event in events:
                state.apply(event)
        except self.stops:
            raise
        except BaseException as exc:
            return Decision(work, self._crash(cell, name, exc, "applying its events"))
        state.version += len(events)
        ids = [event_id(item.command_id, i) for i in range(len(events))]
        requests.append(AppendRequest(cell.stream_id, encoded, expected, item.metadata, ids))
        return Decision(work, index=len(requests) - 1)

    def _crash(self, cell: Cell, name: str, exc: BaseException, doing: str) -> AggregateFailed:
        """The aggregate's code broke down: this cell restarts from the store (what it decided
        before in the round is committed first); the command gets the error returned."""
        message = (
            f"{cell.stream_id}: {name}: {doing} raised {type(exc).__name__}: {error_text(exc)}"
        )
        log().error("%s", message, exc_info=exc)
        self.restarts += 1
        cell.restarts += 1
        cell.last_failure = message
        cell.state = None
        return AggregateFailed(message)

    def _answer(
        self, cell: Cell, decisions: list[Decision], results: list[Any], answers: list[Answer]
    ) -> None:
        """Settle one cell's decisions against the commit's outcomes, in order."""
        again: list[Work] = []  # decided on a state that is lost: decided again, first
        lost = False  # an append of this cell failed: what follows counted on it
        last = 0
        for decision in decisions:
            work = decision.work
            if lost:
                again.append(work)
                continue
            if decision.same_as is not None:
                decision.result = decision.same_as.result
            elif decision.index < 0:
                decision.result = decision.answer
            else:
                outcome = results[decision.index]
                if isinstance(outcome, list):
                    decision.result = self._recorded(cell, work.item, outcome)
                    if outcome:
                        last = max(last, outcome[-1].position)
                else:
                    cell.state = None  # rebuilt from the store before its next command
                    lost = True
                    attempt = self._next_attempt(outcome, work.attempt)
                    if attempt is not None:
                        again.append(Work(work.item, work.reply_to, attempt, work.began))
                        continue
                    decision.result = outcome
            answers.append(self._answered(cell, work, decision.result))
        if again:
            cell.mailbox.extendleft(reversed(again))
        self.last_position = max(self.last_position, last)
        if last and cell.cls.snapshot_every and cell.state is not None:
            self._maybe_snapshot(cell)

    def _recorded(self, cell: Cell, item: CommandItem, recorded: list[RecordedEvent]) -> Any:
        version = recorded[-1].version if recorded else 0
        self._meter(cell).appended(1, len(recorded))
        return DispatchResult(
            cell.stream_id, version, recorded, item.command_id, item.correlation_id
        )

    def _answered(self, cell: Cell, work: Work, answer: Any) -> Answer:
        if isinstance(answer, BaseException):  # for backstage trace
            note_refusals(self.store, cell.stream_id, [work.item], {work.item.request_id: answer})
        meter = self._meter(cell)
        meter.command(
            type(work.item.command).__name__,
            telemetry.outcome_of(answer),
            time.perf_counter() - work.began,
        )
        return (work.reply_to, work.item.request_id, answer, cell.stream_id)

    def _meter(self, cell: Cell) -> telemetry.CommandMeter:
        meter = self.meters.get(cell.cls.__name__)
        if meter is None:
            meter = self.meters[cell.cls.__name__] = telemetry.CommandMeter()
        return meter

    def _next_attempt(self, error: Any, attempt: int) -> int | None:
        """The attempt at which a command whose append failed runs again, or None: its caller
        gets ``error``. Only a conflict runs again, up to ``max_retries``."""
        if not isinstance(error, WrongExpectedVersion):
            return None
        if error.refused:
            return attempt
        return attempt + 1 if attempt < self.max_retries else None

    # -- state ------------------------------------------------------------------------------

    def _state(self, cell: Cell) -> tuple[Aggregate | None, Any]:
        """The cell's state, rebuilt from the store if need be, or None and the error that
        its commands get (a broken aggregate, or the store cannot be read now)."""
        if cell.state is None and cell.broken is None:
            try:
                cell.state = self._rebuild(cell)
                self.read = self.read or cell.state.version > 0
            except BackstageError as exc:
                return None, exc
            except self.stops:
                raise
            except BaseException as exc:  # its class cannot even be made: no use retrying now
                what = f"{type(exc).__name__}: {error_text(exc)}"
                message = f"{cell.stream_id} cannot start: {what}"
                log().error("%s", message, exc_info=exc)
                return None, AggregateFailed(message)
        if cell.broken is not None:
            return None, AggregateFailed(cell.broken)
        return cell.state, None

    def _fresh(self, cell: Cell) -> Aggregate:
        aggregate = cell.cls()
        aggregate.id = cell.identity
        aggregate.version = 0
        return aggregate

    def _rebuild(self, cell: Cell) -> Aggregate:
        aggregate = self._fresh(cell)
        if cell.cls.snapshot_every:  # (no snapshot is looked up for a class that saves none)
            snapshot = self.store.load_snapshot(cell.stream_id, cell.cls.snapshot_version)
            if snapshot is not None:
                try:
                    aggregate.restore_snapshot(snapshot.state)
                    aggregate.version = snapshot.version
                except self.stops:
                    raise
                except BaseException as exc:
                    log().warning(
                        "%s: ignoring a snapshot that cannot be restored: %s", cell.stream_id, exc
                    )
                    aggregate = self._fresh(cell)
        try:
            for version, event in self.store.stream_events(cell.stream_id, aggregate.version):
                if version != aggregate.version + 1:  # truncated, and no snapshot covers it
                    cell.broken = (
                        f"{cell.stream_id}: cannot rebuild: the events from version"
                        f" {aggregate.version + 1} to {version - 1} were truncated and no usable"
                        f" snapshot at or after version {version - 1} is kept"
                    )
                    log().error("%s", cell.broken)
                    break
                aggregate.apply(event)
                aggregate.version = version
        except StorageError:
            raise  # the store cannot be read now: the next command tries again
        except self.stops:
            raise
        except BaseException as exc:
            # A stored event this code cannot read or apply: answer errors, no crash loop.
            # (a stored row that cannot be read names itself: it may be a page's later row)
            where = (
                ""
                if isinstance(exc, StoredEventError)
                else f"the event at version {aggregate.version + 1}: "
            )
            cell.broken = (
                f"{cell.stream_id}: cannot rebuild: {where}{type(exc).__name__}: {error_text(exc)}"
            )
            log().error("%s", cell.broken, exc_info=exc)
        return aggregate

    def _already_done(self, cell: Cell, item: CommandItem) -> DispatchResult | None:
        """A command named by its caller and stored before is answered, not run again."""
        first = event_id(item.command_id, 0)
        version = self.store.event_version(first, cell.stream_id)
        if version is None:
            return None
        self.read = True
        events: list[RecordedEvent] = []
        for event in self.store.read_stream(cell.stream_id, from_version=version):
            if event.metadata.get("command_id") != item.command_id:
                break
            if not events and _names_another(event.metadata, item):
                raise InvalidCommand(
                    f"command_id {item.command_id!r} already names another command on "
                    f"{cell.stream_id} ({event.metadata.get('command')}): give this one a name "
                    "of its own"
                )
            events.append(event)
        return DispatchResult(
            cell.stream_id, events[-1].version, events, item.command_id, item.correlation_id
        )

    def _maybe_snapshot(self, cell: Cell) -> None:
        aggregate = cell.state
        every = cell.cls.snapshot_every
        if aggregate is None or not every or aggregate.version == 0:
            return
        if cell.snapshot_at is None:
            snapshot = self.store.load_snapshot(cell.stream_id)
            cell.snapshot_at = snapshot.version if snapshot else 0
        if aggregate.version - cell.snapshot_at >= every:
            try:
                self.store.save_snapshot(
                    cell.stream_id,
                    aggregate.version,
                    aggregate.snapshot_state(),
                    cell.cls.snapshot_version,
                    cell.cls.__name__,
                )
                cell.snapshot_at = aggregate.version
            except BackstageError as exc:
                log().warning("%s: snapshot not saved: %s", cell.stream_id, exc)

    # -- passivation ------------------------------------------------------------------------

    def _make_room(self) -> None:
        """Drop least recently used idle cells until at most ``max_live`` are left (a cell
        with work is used now: it moves to the back)."""
        looked = 0
        while len(self.cells) > self.max_live and looked < len(self.cells):
            stream_id, cell = next(iter(self.cells.items()))
            if cell.mailbox:
                self.cells.move_to_end(stream_id)
                looked += 1
                continue
            del self.cells[stream_id]
            self.passivated += 1

    def drop(self, stream_ids: list[str]) -> list[Work]:
        """Passivate these cells now, busy or not (their member no longer owns them, see
        ``_shard``); the commands queued in them are returned, to be handed over."""
        handed: list[Work] = []
        for stream_id in stream_ids:
            cell = self.cells.pop(stream_id, None)
            if cell is not None:
                self.ready.pop(stream_id, None)
                handed.extend(cell.mailbox)
                self.passivated += 1
        return handed

    def sweep(self, now: float) -> None:
        """Drop the cells idle past their lifespan. Cells are in order of use: the sweep stops
        at the first one used within the shortest lifespan (all after it were used later)."""
        shortest = self.shortest_lifespan
        if shortest is None:
            return
        for stream_id, cell in list(self.cells.items()):
            idle = now - cell.last_used
            if idle < shortest:
                break
            if cell.lifespan is not None and idle >= cell.lifespan and not cell.mailbox:
                del self.cells[stream_id]
                self.passivated += 1

    def describe(self, window: int = 50) -> dict[str, Any]:
        """The shard's counts, and its ``window`` most recently used aggregates as children."""
        recent: list[dict[str, Any]] = []
        for cell in reversed(self.cells.values()):
            if len(recent) >= window:
                break
            recent.append(cell.describe())
        return {
            "children": recent,
            "live": len(self.cells),
            "max_live": self.max_live,
            "passivated": self.passivated,
            "aggregate_restarts": self.restarts,
            "writer": self.writer.describe(),
        }
