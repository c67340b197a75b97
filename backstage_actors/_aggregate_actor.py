"""The actor that hosts one aggregate instance: its mailbox serializes that aggregate's commands.

On start it rebuilds the state from the latest snapshot plus the events after it. Each batch of
commands is executed in order; a command's events are checked (they must serialize) and applied,
then all the batch's appends are committed together, either by this actor (``direct``) or through
the store actor's group commit (``actor``). If another writer got there first, the actor catches
up from the store and runs the commands again, up to ``max_retries`` times.

In-process, an aggregate without snapshots pipelines: it sends every append to the store actor
and goes on with its next commands without waiting, on the state it applied. The store actor
answers the callers and tells the aggregate only of failures (:class:`AppendFailed`); the
aggregate then rebuilds from the store, starts a new epoch, and retries or answers those
commands. Appends of the old epoch that counted on a failed one are not stored (see
``_store_actor``), so no command is ever stored on a state that is not. (A command rejected, or
answered without events, while an earlier append was pending was decided on the state that
append was to make: if it fails, that answer stands although nothing of it is stored.)

An exception from ``execute`` is a rejection (the command's sender gets :class:`CommandRejected`);
one from ``apply`` is a crash: every command of the batch gets :class:`AggregateFailed`, nothing of
the batch is stored, and a fresh instance rebuilds from the store. An aggregate whose stored events
cannot be applied answers every command with :class:`AggregateFailed` instead of crash-looping.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from typing import Any

from thespian.actors import WakeupMessage, WatchMessage

from supervisors import Failure, SupervisedActor

from . import _lane, _thespian, telemetry
from ._ids import event_id
from ._protocol import (
    AppendBatch,
    Appended,
    AppendFailed,
    AppendResults,
    CommandStats,
    Execute,
    Executed,
    Listeners,
    Settings,
    Touched,
)
from ._rejections import note_refusals
from ._shared import shared_store
from .aggregate import Aggregate, decide
from .command import CommandItem, DispatchResult
from .errors import (
    AggregateFailed,
    BackstageError,
    CommandRejected,
    UnhandledCommand,
    WrongExpectedVersion,
)
from .store import AppendRequest, EventStore, RecordedEvent
from .store._codec import encode_event

__all__ = ["AggregateActor"]

TOUCH_EVERY = 5.0  # seconds, at most, between two Touched messages of a busy aggregate
MAX_NAMED = 256  # appends of named commands an aggregate keeps to send again (see _named)
REPORT_EVERY = 1.0  # seconds, at least, between two CommandStats of a busy aggregate


class _ReportDue:
    """Wakeup payload: counts are waiting to be reported."""


def log() -> logging.Logger:
    return logging.getLogger(__name__)


class AggregateActor(SupervisedActor):
    kind = "aggregate"

    def on_start(self) -> None:
        self.lanes: _lane.LaneServer | None = None  # opened last, once the state is rebuilt
        self.settings: Settings = self.args["settings"]
        self.cls: type[Aggregate] = self.args["aggregate"]
        self.stream_id: str = self.args["stream_id"]
        self.identity: str = self.args["identity"]
        self.store: EventStore = shared_store(self.settings)
        self.store_actor: Any = self.args.get("store_actor")
        self.listeners: list[Any] = list(self.args.get("listeners", []))
        self.queue: deque[tuple[Execute, int]] = deque()
        self.in_flight: (
            tuple[Execute, int, dict[str, Any], list[tuple[int, CommandItem]]] | None
        ) = None
        self._requests: list[AppendRequest] = []  # the in-flight appends
        self._ending = False
        self.broken: str | None = None
        self._snapshot_at: int | None = None
        self._touched = 0.0
        # How often a busy aggregate tells the router it is in use (the router passivates by
        # idle time and recency): often enough for its lifespan, not with every command. The
        # price: under the cap, recency is known to within TOUCH_EVERY, so a busy aggregate can
        # be stopped before one used once a little later (it is rebuilt at its next command).
        lifespan = self.args.get("lifespan")
        self._touch_every = min(TOUCH_EVERY, lifespan / 4) if lifespan else TOUCH_EVERY
        self.stats = telemetry.Stats()
        # Answers by command type and outcome, reported to the router (see telemetry).
        self.meter = telemetry.CommandMeter()
        self._began: dict[str, tuple[float, str]] = {}  # request id -> (perf_counter, type)
        self._reported = time.monotonic()
        self._report_due = False
        self._tag = 0
        self._via_actor = self.settings.append_via == "actor"
        # Pipelined appends (see the module's docstring) carry the epoch of the state they were
        # decided on; a rebuild after a failure starts a newer one. Time-based, so that a later
        # instance of this aggregate is newer too.
        self._pipelines = self._via_actor and not self.cls.snapshot_every
        self._epoch = time.monotonic_ns()
        # The appends of named commands sent in this epoch: a repeat of one is sent again, not
        # run again (its first attempt may still be on its way to the store).
        self._named: dict[str, AppendRequest] = {}
        self.aggregate = self._rebuild()
        self.lanes = self._open_lanes()
        self._source = (self.stream_id, self.myAddress, self.lanes.name if self.lanes else None)

    def _open_lanes(self) -> _lane.LaneServer | None:
        """Multiproc: a local socket for clients that know this aggregate (see ``_lane``)."""
        if self.settings.base == "simple" or not _lane.available():
            return None
        try:
            system = _thespian.system_key(self)
            name = system and _lane.name_for(system, self.settings.database, self.stream_id)
            return _lane.LaneServer(name)
        except OSError as exc:
            log().warning("%s: no lane (%s); clients send by message", self.stream_id, exc)
            return None

    def watched(self) -> list[int]:
        return self.lanes.filenos() if self.lanes is not None else []

    def on_exit(self) -> None:
        self._hang_up()

    def _hang_up(self) -> None:
        """Leaving service: clients that find the lane closed go by the router. (Its descriptor
        numbers stay taken: Thespian may still watch them while it sends our last messages.)"""
        if self.lanes is not None:
            self.lanes.hang_up()

    def describe(self) -> dict[str, Any]:
        node: dict[str, Any] = {
            "stream_id": self.stream_id,
            "version": self.aggregate.version,
            "telemetry": self.stats.summary(),
        }
        if self.broken:
            node["broken"] = self.broken
        if self.lanes is not None:
            node["lane"] = self.lanes.describe()
        return node

    # -- state ------------------------------------------------------------------------------

    def _fresh(self) -> Aggregate:
        aggregate = self.cls()
        aggregate.id = self.identity
        aggregate.version = 0
        return aggregate

    def _rebuild(self) -> Aggregate:
        aggregate = self._fresh()
        snapshot = self.store.load_snapshot(self.stream_id, self.cls.snapshot_version)
        if snapshot is not None:
            try:
                aggregate.restore_snapshot(snapshot.state)
                aggregate.version = snapshot.version
            except Exception as exc:
                log().warning(
                    "%s: ignoring a snapshot that cannot be restored: %s", self.stream_id, exc
                )
                aggregate = self._fresh()
        self._catch_up(aggregate)
        return aggregate

    def _catch_up(self, aggregate: Aggregate) -> None:
        try:
            for version, event in self.store.stream_events(self.stream_id, aggregate.version):
                aggregate.apply(event)
                aggregate.version = version
        except Exception as exc:
            # A stored event this code cannot apply: answer errors rather than crash-loop.
            self.broken = (
                f"{self.stream_id}: cannot rebuild: applying the event at version "
                f"{aggregate.version + 1} raised {type(exc).__name__}: {exc}"
            )
            log().error("%s", self.broken, exc_info=exc)

    # -- commands ---------------------------------------------------------------------------

    def receive(self, message: Any, sender: Any) -> None:
        if isinstance(message, Execute):
            if message.stream_id is not None:
                self._direct(message, sender)
                return
            self.queue.append((message, 0))
            self._pump()
        elif isinstance(message, WatchMessage):
            self._on_lanes(message.ready)
        elif isinstance(message, AppendResults):
            if message.tag == self._tag:
                self._on_results(message.results)
        elif isinstance(message, AppendFailed):
            self._on_failed(message)
        elif isinstance(message, Listeners):
            self.listeners = list(message.listeners)
            if message.store_actor != self.store_actor and self.store_actor is not None:
                # The store actor restarted: what it had buffered for us is gone (the callers of
                # pipelined appends get DispatchTimeout: the outcome is unknown to us too).
                if self.in_flight is not None:
                    self._fail_in_flight("the store actor restarted")
                elif self._pipelines:
                    self._start_epoch()
            self.store_actor = message.store_actor
        elif isinstance(message, Failure):
            self._fail_in_flight(f"the store actor failed: {message.message}")
        elif isinstance(message, WakeupMessage) and isinstance(message.payload, _ReportDue):
            self._report_due = False
            self._report()

    def _on_lanes(self, ready: list[int]) -> None:
        if self.lanes is None:
            return
        for connection, request in self.lanes.ready(ready):
            if isinstance(request, Execute) and request.stream_id is not None:
                self._direct(Execute(request.items, connection, False, request.stream_id), None)
            else:
                self._answer(connection, Executed([]))

    def _direct(self, execute: Execute, sender: Any) -> None:
        """A client sent straight here (it learnt the address from an earlier answer)."""
        plain = Execute(execute.items, execute.reply_to or sender, execute.grouped)
        if execute.stream_id != self.stream_id:
            # The address now belongs to another aggregate: the router knows the way.
            if not self._refuse_by_lane(plain):
                self.send(self.supervisor, plain)
            return
        now = time.monotonic()
        if now - self._touched >= self._touch_every:
            self._touched = now
            self.send(self.supervisor, Touched(self.stream_id))
        self.queue.append((plain, 0))
        self._pump()

    def on_stop(self) -> None:
        """Stopped (passivated, or the application stops) while the store actor has our append:
        make it here, so that its callers get their answers rather than a timeout. The store
        actor's copy then finds the events stored (same event ids) and stores nothing twice.
        Commands still queued go back to the router, for the next instance."""
        self._ending = True
        self._hang_up()
        if self.in_flight is not None:
            self._tag += 1  # the store actor's answer, if any, is not waited for
            try:
                results: list[Any] = self.store.append_batches(self._requests)
            except BackstageError as exc:
                results = [exc] * len(self._requests)
            self._on_results(results)
        self._hand_back_queue()
        self._report()

    # -- counting ---------------------------------------------------------------------------

    def _count(self, results: list[tuple[str, Any]]) -> None:
        """Count answers leaving for their callers (each command once, on its first answer)."""
        now = time.perf_counter()
        for request_id, answer in results:
            began = self._began.pop(request_id, None)
            if began is not None:
                self.meter.command(began[1], telemetry.outcome_of(answer), now - began[0])
        if self.meter:
            self._maybe_report()

    def _maybe_report(self) -> None:
        wait = REPORT_EVERY - (time.monotonic() - self._reported)
        if wait <= 0:
            self._report()
        elif not self._report_due:
            self._report_due = True
            self.wakeupAfter(wait, _ReportDue())

    def _report(self) -> None:
        self._reported = time.monotonic()
        if self.meter and self.supervisor is not None:
            self.send(self.supervisor, CommandStats(self.cls.__name__, self.meter.take()))

    def _hand_back_queue(self) -> None:
        """Commands still queued go to the next instance, through the supervisor."""
        while self.queue:
            queued, _ = self.queue.popleft()
            if not self._refuse_by_lane(queued):
                self.hand_back(queued, self.supervisor)

    def _refuse_by_lane(self, execute: Execute) -> bool:
        """Commands that came by lane are not handed on (their ``reply_to`` is a connection of
        this process): they are answered with nothing, and their client goes by the router."""
        if not isinstance(execute.reply_to, _lane.LaneConnection):
            return False
        self._answer(execute.reply_to, Executed([]))
        return True

    def _answer(self, reply_to: Any, answer: Executed) -> None:
        """Send ``answer`` to a client's address, or on the lane connection it came by."""
        if self._began:
            self._count(answer.results)
        if isinstance(reply_to, _lane.LaneConnection):
            if self.lanes is not None:
                self.lanes.answer(reply_to, answer)
        else:
            self.send(reply_to, answer)

    def _pump(self) -> None:
        while self.queue and self.in_flight is None and not self._ending:
            execute, attempt = self.queue.popleft()
            self._run(execute, attempt)

    def _run(self, execute: Execute, attempt: int) -> None:
        if self.broken:
            self._reply(
                execute, {item.request_id: AggregateFailed(self.broken) for item in execute.items}
            )
            return
        answers: dict[str, Any] = {}
        pending: list[tuple[int, CommandItem]] = []
        requests: list[AppendRequest] = []
        aggregate = self.aggregate
        pipelined = self._pipelines and self.store_actor is not None
        now = time.perf_counter()
        for item in execute.items:
            if item.request_id not in self._began:
                self._began[item.request_id] = (now, type(item.command).__name__)
            if item.idempotent:
                sent = self._named.get(item.command_id) if pipelined else None
                if sent is not None:
                    # Its first attempt may still be on its way: the store actor looks it up
                    # after it (an append without events, which never writes).
                    requests.append(
                        AppendRequest(
                            self.stream_id, [], sent.expected_version, None, sent.event_ids
                        )
                    )
                    pending.append((len(requests) - 1, item))
                    continue
                stored = self._already_done(item)
                if stored is not None:
                    answers[item.request_id] = stored
                    continue
            name = type(item.command).__name__
            started = time.perf_counter()
            try:
                events = decide(aggregate, item.command)
            except UnhandledCommand as exc:  # a mistake in the aggregate, not a refusal
                self._executed(name, started)
                answers[item.request_id] = exc
                continue
            except Exception as exc:
                self._executed(name, started)
                answers[item.request_id] = CommandRejected(name, type(exc).__name__, str(exc))
                continue
            self._executed(name, started)
            if not events:
                answers[item.request_id] = DispatchResult(
                    self.stream_id, aggregate.version, [], item.command_id, item.correlation_id
                )
                continue
            try:
                encoded = [encode_event(e, True, self.settings.limits) for e in events]
            except BackstageError as exc:
                answers[item.request_id] = exc
                continue
            expected = aggregate.version
            try:
                for event in events:
                    aggregate.apply(event)
            except Exception as exc:
                self._crash_batch(execute, exc, name)
                raise
            aggregate.version += len(events)
            ids = [event_id(item.command_id, i) for i in range(len(events))]
            request = AppendRequest(self.stream_id, encoded, expected, item.metadata, ids)
            requests.append(request)
            pending.append((len(requests) - 1, item))
            if pipelined and item.idempotent:
                self._remember_named(item.command_id, request)
        if not requests:
            self._reply(execute, answers)
            return
        if pipelined:
            if answers:  # rejections, repeats, commands without events: answered from here
                self._reply(execute, answers, partial=True)
            items = [(item, attempt) for _, item in pending]
            # The store actor answers these callers: they count as answered now (one that
            # fails and runs again counts again when it is answered).
            self.meter.appended(len(requests), sum(len(r.events) for r in requests))
            self._count([(item.request_id, None) for _, item in pending])
            # (In-process only, where there are no lanes: reply_to is an address.)
            self.send(self.store_actor, AppendBatch(requests, self._epoch, execute.reply_to, items))
            return
        self.in_flight = (execute, attempt, answers, pending)
        self._requests = requests
        if execute.grouped and self._via_actor and self.store_actor is not None:
            self._tag += 1
            self.send(self.store_actor, AppendBatch(requests, self._tag))
        else:
            try:
                with telemetry.span(
                    "append", self.stats, stream_id=self.stream_id, appends=len(requests)
                ):
                    results: list[Any] = self.store.append_batches(requests)
            except BackstageError as exc:
                results = [exc] * len(requests)
            self.meter.batch(len(requests))
            self._on_results(results)

    def _executed(self, command: str, started: float) -> None:
        metadata = {"stream_id": self.stream_id, "command": command}
        telemetry.finish("execute", self.stats, started, metadata)

    def _already_done(self, item: CommandItem) -> DispatchResult | None:
        """A command named by its caller (``idempotent``) and stored before is answered, not run
        again."""
        first = event_id(item.command_id, 0)
        version = self.store.event_version(first, self.stream_id)
        if version is None:
            return None
        events = []
        for event in self.store.read_stream(self.stream_id, from_version=version):
            if event.metadata.get("command_id") != item.command_id:
                break
            events.append(event)
        return DispatchResult(
            self.stream_id, events[-1].version, events, item.command_id, item.correlation_id
        )

    def _on_results(self, results: list[Any]) -> None:
        if self.in_flight is None:
            return
        execute, attempt, answers, pending = self.in_flight
        self.in_flight = None
        retry: list[tuple[CommandItem, int]] = []
        last_position = 0
        failed = False
        for index, item in pending:
            result = results[index]
            if isinstance(result, list):
                recorded: list[RecordedEvent] = result
                self.meter.appended(1, len(recorded))
                last_position = max(last_position, recorded[-1].position if recorded else 0)
                version = recorded[-1].version if recorded else self.aggregate.version
                answers[item.request_id] = DispatchResult(
                    self.stream_id, version, recorded, item.command_id, item.correlation_id
                )
            else:
                failed = True
                again = self._next_attempt(result, attempt)
                if again is None:
                    answers[item.request_id] = result
                else:
                    retry.append((item, again))
        if failed:
            # What was applied speculatively is not all stored: start over from the store.
            self._start_epoch()
        elif self.cls.snapshot_every:
            self._maybe_snapshot()
        if last_position and not self._via_actor:
            for listener in self.listeners:
                self.send(listener, Appended(last_position))
        if retry:
            self._reply(execute, answers, partial=True)
            self._run_again(retry, execute.reply_to, execute.grouped)
        else:
            self._reply(execute, answers)
        self._pump()

    def _on_failed(self, failed: AppendFailed) -> None:
        """Pipelined appends failed: what this state was built on is not all stored."""
        if failed.epoch >= self._epoch:
            self._start_epoch()
        retry: list[tuple[CommandItem, int]] = []
        answers: list[tuple[str, Any]] = []
        for item, attempt, error in failed.failures:
            again = self._next_attempt(error, attempt)
            if again is None:
                answers.append((item.request_id, error))
            else:
                retry.append((item, again))
        if answers:
            self._answer(failed.reply_to, Executed(answers, self._source))
        self._run_again(retry, failed.reply_to, True)
        self._pump()

    def _next_attempt(self, error: Any, attempt: int) -> int | None:
        """The attempt at which a failed command runs again, or None: its caller gets ``error``.
        Only a conflict of its own counts against ``max_retries``: one refused for counting on
        another failed append runs again at the same attempt."""
        if not isinstance(error, WrongExpectedVersion):
            return None
        if error.refused:
            return attempt
        return attempt + 1 if attempt < self.settings.max_retries else None

    def _run_again(
        self, retry: list[tuple[CommandItem, int]], reply_to: Any, grouped: bool
    ) -> None:
        """Queue ``retry`` first, in its order (one Execute per run of equal attempts)."""
        runs = [
            (Execute([item for item, _ in run], reply_to, grouped), attempt)
            for attempt, run in itertools.groupby(retry, key=lambda pair: pair[1])
        ]
        self.queue.extendleft(reversed(runs))

    def _start_epoch(self) -> None:
        """Rebuild from the store. Whatever the old epoch sent is stored or refused by now."""
        self.aggregate = self._rebuild()
        self._epoch = max(self._epoch + 1, time.monotonic_ns())
        self._named.clear()

    def _remember_named(self, command_id: str, request: AppendRequest) -> None:
        self._named[command_id] = request
        if len(self._named) > MAX_NAMED:
            del self._named[next(iter(self._named))]

    def _fail_in_flight(self, reason: str) -> None:
        if self.in_flight is not None:
            self._tag += 1  # a late answer to the abandoned append is ignored
            error = AggregateFailed(f"{self.stream_id}: {reason}; the outcome is unknown")
            self._on_results([error] * len(self.in_flight[3]))

    def _maybe_snapshot(self) -> None:
        every = self.cls.snapshot_every
        aggregate = self.aggregate
        if not every or aggregate.version == 0:
            return
        last = self._snapshot_at
        if last is None:
            snapshot = self.store.load_snapshot(self.stream_id)
            last = self._snapshot_at = snapshot.version if snapshot else 0
        if aggregate.version - last >= every:
            try:
                self.store.save_snapshot(
                    self.stream_id,
                    aggregate.version,
                    aggregate.snapshot_state(),
                    self.cls.snapshot_version,
                    self.cls.__name__,
                )
                self._snapshot_at = aggregate.version
            except BackstageError as exc:
                log().warning("%s: snapshot not saved: %s", self.stream_id, exc)

    def _crash_batch(self, execute: Execute, exc: Exception, name: str) -> None:
        message = (
            f"{self.stream_id}: {name}: applying its events raised {type(exc).__name__}: {exc}"
        )
        self._reply(execute, {item.request_id: AggregateFailed(message) for item in execute.items})
        # Commands queued behind the batch go to the next instance, not down with this one.
        self._hand_back_queue()

    def _reply(self, execute: Execute, answers: dict[str, Any], partial: bool = False) -> None:
        note_refusals(self.store, self.stream_id, execute.items, answers)  # for backstage trace
        results = [
            (item.request_id, answers[item.request_id])
            for item in execute.items
            if item.request_id in answers
        ]
        if results or not partial:
            self._answer(execute.reply_to, Executed(results, self._source))
