"""The runtime of a :class:`~backstage_actors.process_manager.ProcessManager`: events in order,
the commands of several instances in flight at once, each instance's state and the checkpoint
saved together.

Events are handled in log order, and the commands of up to ``max_in_flight`` of them are in
flight at once, as long as they belong to different process instances: throughput is not one
round trip per event. (One event at a time, a process manager behind a busy router fell
thousands of events behind.) An instance's next event waits until its previous one is saved.
Steps are finished strictly in log order, their states and the checkpoint saved in one
transaction, so a restart replays exactly what was not saved.

What costs per event is kept constant: the rest of a page read is kept until it is scanned (a
window held up scans a row or two per answer), the commands of the steps scanned in one go leave
in one message per destination, and one wakeup at a time watches the earliest deadline.

Command ids derive from the event's id, so an event delivered again after a crash dispatches the
same commands under the same names, and the aggregates answer them from the store.
"""

from __future__ import annotations

import time
import uuid
from bisect import bisect_left
from collections import OrderedDict, deque
from typing import Any

from . import _serialization as ser
from ._protocol import Execute, Executed
from ._subscriber import CheckpointMoved, SubscriberActor
from .aggregate import events_of
from .command import CommandItem, DispatchResult
from .errors import CommandRejected
from .handler import Metadata
from .process_manager import ProcessManager
from .store import RecordedEvent

__all__ = ["ProcessManagerActor"]

_COMMAND_NAMESPACE = uuid.UUID("0b9e6a4c-2f1d-4c55-9a43-7d2f1f6f5e21")
MAX_KNOWN = 1000  # aggregate addresses a process manager keeps, most recently used


class _DispatchDue:
    """Time to look for steps whose answers are overdue (one such wakeup is pending at most)."""


class _Step:
    """One event the process manager has scanned, in log order: passed over (``done`` from the
    start), or handled with commands in flight, or failed (``error``)."""

    __slots__ = (
        "action",
        "deadline",
        "done",
        "error",
        "manager",
        "meta",
        "position",
        "process_id",
        "recorded",
        "row",
        "state_text",
        "waiting",
    )

    def __init__(
        self, row: tuple[Any, ...], recorded: RecordedEvent | None, meta: Metadata
    ) -> None:
        self.row = row
        self.meta = meta
        self.position: int = row[0]
        self.recorded = recorded
        self.manager: ProcessManager | None = None
        self.action = ""
        self.process_id: str | None = None
        self.waiting: set[str] = set()
        self.deadline = 0.0  # monotonic time by which its commands must be answered
        self.error: BaseException | None = None
        self.done = True
        self.state_text: str | None = None  # the JSON state _save stores (after apply)


class ProcessManagerActor(SubscriberActor):
    """Runs one :class:`ProcessManager`."""

    kind = "process_manager"
    cls: type[ProcessManager]

    def open(self) -> None:
        # Set while no page may be read: {"blocked": why} (too many in flight, an instance's
        # previous step not saved yet).
        self.dispatching: dict[str, Any] | None = None
        self._pm_steps: deque[_Step] = deque()  # scanned, not yet saved, in log order
        self._pm_aggregates: OrderedDict[str, Any] = OrderedDict()  # stream id -> address
        # Rows read but not scanned yet: a contiguous read that started at _pm_ahead_from, so
        # any suffix of it is what the store holds from that suffix's first position on. A
        # process manager held up by its window scans a row or two per answer; without this it
        # read (and dropped) a whole page per answer.
        self._pm_ahead: list[tuple[Any, ...]] = []
        self._pm_ahead_from = 0
        # Commands of the steps scanned in one go, by destination, sent together at the end of
        # the scan: one message per shard or aggregate rather than one per event.
        self._pm_outbox: list[tuple[Any, str | None, list[CommandItem]]] = []
        self._pm_timer = False  # a _DispatchDue wakeup is pending

    def busy(self) -> bool:
        return self.dispatching is not None

    def router_known(self) -> None:
        if self.state == "waiting for router":
            self.state = "running"
            self._kick()

    def lease_lost(self) -> None:
        """Give up the steps in flight: their late answers and timeouts then find no step, and
        no state or checkpoint of them is saved over the new holder's (it runs them again from
        the checkpoint, under the same command names)."""
        self._pm_steps.clear()
        self._pm_ahead = []
        self._pm_outbox = []
        self.dispatching = None

    def resumed(self) -> None:
        self.lease_lost()  # (nothing of an earlier holding is left to save)

    def receive_other(self, message: Any, sender: Any) -> None:
        if isinstance(message, Executed):
            self._on_dispatched(message)

    def wakeup_other(self, payload: Any) -> None:
        if isinstance(payload, _DispatchDue):
            self._pm_timer = False
            self._overdue(time.monotonic())

    def redelivery_refusal(self) -> str:
        return "process managers cannot retry a parked event out of order"

    def redeliver(self, recorded: RecordedEvent, meta: Metadata, letter_id: int = 0) -> None:
        raise NotImplementedError(self.redelivery_refusal())

    def process_page(self, rows: list[tuple[Any, ...]]) -> tuple[bool, bool]:
        return self._manage(rows), False

    @property
    def _steps(self) -> deque[_Step]:
        return self._pm_steps

    def _window(self) -> int:
        return max(1, int(self.cls.max_in_flight))

    def in_flight(self) -> bool:
        """Whether steps wait for answers or saving (it is not idle then)."""
        return bool(self._pm_steps)

    def read_from(self) -> int:
        """The position to read on from: past what is scanned (a process manager's steps may
        be in flight beyond its checkpoint)."""
        steps = self._pm_steps
        return (steps[-1].position if steps else self.position) + 1

    def next_page(self) -> tuple[list[tuple[Any, ...]], bool]:
        """The unscanned rest of the last page when it is still ahead, else a new page. Rows
        from the rest count as "more may follow": the store is read again once they are gone."""
        start = self.read_from()
        ahead = self._pm_ahead
        if ahead and self._pm_ahead_from <= start <= ahead[-1][0]:
            del ahead[: bisect_left(ahead, start, key=lambda row: row[0])]
            self._pm_ahead_from = start
            return list(ahead), True
        rows = self.store.read_page(start, self.page_size)
        self._pm_ahead, self._pm_ahead_from = list(rows), start
        return rows, len(rows) == self.page_size

    def _manage(self, rows: list[tuple[Any, ...]]) -> bool:
        """Scan ``rows``; False when it must wait (too many in flight, an instance busy)."""
        try:
            return self._scan(rows)
        finally:
            self._send_outbox()

    def _scan(self, rows: list[tuple[Any, ...]]) -> bool:
        steps = self._steps
        for row in rows:
            if row[0] <= (steps[-1].position if steps else self.position):
                continue
            if sum(1 for step in steps if not step.done) >= self._window():
                self.dispatching = {"blocked": "in flight"}
                return False
            recorded, meta, error = self._decode(row)
            step = _Step(row, recorded, meta)
            if error is None and recorded is not None:
                try:
                    if not self._pm_step(step):
                        return False  # this instance is busy, or no router yet
                except self.settings.stops:
                    raise
                except BaseException as exc:
                    step.error, step.done = exc, True
            else:
                step.error = error
            steps.append(step)
        self._finish_steps()
        return self.state == "running"

    def _pm_step(self, step: _Step) -> bool:
        """Handle one event; False when it cannot be taken yet (its instance is busy, no
        router): it is not scanned, and scanning resumes with it."""
        recorded = step.recorded
        assert recorded is not None
        manager = self.cls()
        assert isinstance(manager, ProcessManager)
        interest = manager.interested(recorded.data)
        if interest is None:
            return True
        action, process_id = interest
        if any(other.process_id == process_id for other in self._steps):
            self._finish_steps()  # its earlier step may be finished, only not saved
            if self.state != "running":
                return False
            if any(other.process_id == process_id for other in self._steps):
                self.dispatching = {"blocked": process_id}  # its state is not saved yet
                return False
        state = self.store.load_process(self.name, process_id)
        if state is not None:
            manager.restore(state)
        manager.process_id = process_id
        commands = events_of(manager.handle(recorded.data))
        step.manager, step.action, step.process_id = manager, action, process_id
        if not commands:
            return True
        if self.router is None:
            self.state = "waiting for router"
            return False
        correlation = recorded.metadata.get("correlation_id") or recorded.event_id
        items = []
        for index, command in enumerate(commands):
            command_id = str(
                uuid.uuid5(_COMMAND_NAMESPACE, f"{self.name}/{recorded.event_id}/{index}")
            )
            metadata = {
                "command_id": command_id,
                "correlation_id": correlation,
                "causation_id": recorded.event_id,
                "command": type(command).__name__,
                "process_manager": self.name,
                "process_id": process_id,
            }
            items.append(CommandItem(str(uuid.uuid4()), command, metadata, idempotent=True))
        step.waiting, step.done = {i.request_id for i in items}, False
        step.deadline = time.monotonic() + manager.dispatch_timeout
        address, stream_id = self._way(items)
        for parcel in self._pm_outbox:  # a few destinations at most (addresses do not hash)
            if parcel[1] == stream_id and parcel[0] == address:
                parcel[2].extend(items)
                break
        else:
            self._pm_outbox.append((address, stream_id, items))
        if not self._pm_timer:
            self._pm_timer = True
            self.wakeupAfter(manager.dispatch_timeout, _DispatchDue())
        return True

    def _send_outbox(self) -> None:
        """Send the commands the scan gathered: one message per destination."""
        outbox, self._pm_outbox = self._pm_outbox, []
        for address, stream_id, items in outbox:
            self.send(address, Execute(items, self.myAddress, len(items) > 1, stream_id))

    def _way(self, items: list[CommandItem]) -> tuple[Any, str | None]:
        """Where to send ``items`` (an address, and the stream it is for when that is an
        aggregate's): straight to their aggregate when one aggregate takes them all and it
        answered before (so a router busy starting aggregates does not hold up commands for
        live ones), else to the router. A message to an aggregate that is gone comes back to
        the router as a dead letter, and one that moved is handed to it."""
        routes = self.args.get("routes")
        known = self._aggregates
        if routes is not None and known:
            try:
                streams = {routes.stream_of(item.command)[1] for item in items}
            except Exception:
                streams = set()
            if len(streams) == 1:
                [stream_id] = streams
                address = known.get(stream_id)
                if address is not None:
                    return address, stream_id
        return self.router, None

    @property
    def _aggregates(self) -> OrderedDict[str, Any]:
        return self._pm_aggregates

    def _learn(self, reply: Executed) -> None:
        if reply.source is None or not reply.results:
            return
        stream_id, address, _ = reply.source
        if not stream_id:  # a batch's shard: it names no stream to go straight to
            return
        if not all(isinstance(a, (DispatchResult, CommandRejected)) for _, a in reply.results):
            self._aggregates.pop(stream_id, None)
            return
        known = self._aggregates
        known[stream_id] = address
        known.move_to_end(stream_id)
        while len(known) > MAX_KNOWN:
            known.popitem(last=False)

    def _on_dispatched(self, reply: Executed) -> None:
        self._learn(reply)
        answered = False
        for request_id, answer in reply.results:
            step = next((s for s in self._steps if request_id in s.waiting), None)
            if step is None:
                continue  # late: its step was given up
            step.waiting.discard(request_id)
            if not isinstance(answer, DispatchResult) and step.error is None:
                step.error = answer
            if not step.waiting:
                step.done = answered = True
        if answered:
            self._resume()

    def _overdue(self, now: float) -> None:
        """Fail the steps whose answers are overdue; wake up again for the next deadline."""
        late = [s for s in self._steps if not s.done and s.deadline <= now]
        for step in late:
            self._aggregates.clear()  # some may be gone: the router knows the way
            error = TimeoutError("the dispatched commands were not answered in time")
            step.error, step.done, step.waiting = error, True, set()
        pending = [s.deadline for s in self._steps if not s.done]
        if pending:
            self._pm_timer = True
            self.wakeupAfter(max(0.0, min(pending) - now) + 0.001, _DispatchDue())
        if late:
            self._resume()

    def _resume(self) -> None:
        self._finish_steps()
        if self.state == "running":
            self.dispatching = None
            self._process()
        elif self.state in ("retrying", "stopped"):
            self._report(idle=self.state == "stopped")

    def _finish_steps(self) -> None:
        """Save the finished steps at the head, in order: states and checkpoint together."""
        steps = self._steps
        finished: list[_Step] = []
        while steps and steps[0].done:
            step = steps[0]
            if step.error is None:
                self._applied(step)  # (user code: its failure is the step's error)
            if step.error is not None:
                self._save(finished)
                finished = []
                if not self._policy(step.error, step.recorded, step.meta, step.row):
                    # Retried later from the checkpoint: what is in flight is given up (its
                    # commands are named: sent again, they are answered from the store).
                    steps.clear()
                    self.dispatching = None
                    return
                step.error, step.manager = None, None  # parked or skipped: passed over
            finished.append(steps.popleft())
        self._save(finished)

    def _applied(self, step: _Step) -> None:
        """Apply a finished step's event to its instance and take the state to save; an error
        of ``apply`` or ``state`` becomes the step's, for the error policy."""
        manager = step.manager
        if manager is None or step.recorded is None:
            return
        try:
            manager.apply(step.recorded.data)
            state = None if step.action == "stop" else manager.state()
            # Encoded here, once (what _save stores): an unserializable state fails its step,
            # named by its path, before anything of the step is saved.
            step.state_text = None if state is None else ser.dumps(state, f"{self.name} state")
        except self.settings.stops:
            raise
        except BaseException as exc:
            step.error = exc

    def _save(self, finished: list[_Step]) -> None:
        if not finished:
            return
        try:
            with self.store.transaction():
                for step in finished:
                    manager = step.manager
                    if manager is None or step.recorded is None:
                        continue
                    self.store.save_process(self.name, manager.process_id, step.state_text)
                self.save_checkpoint_fenced(self.store, finished[-1].position)
        except CheckpointMoved:  # (nothing of these steps saved over the new holder's)
            self.checkpoint_moved()
            return
        self.position = finished[-1].position
        self.handled += len(finished)
        self.failures = 0
