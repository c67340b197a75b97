"""The runtime of a :class:`~backstage_actors.process_manager.ProcessManager`: one event at a time,
its commands dispatched and answered before the instance's state and the checkpoint are saved
together.

Command ids derive from the event's id, so an event delivered again after a crash dispatches the
same commands under the same names, and the aggregates answer them from the store.
"""

from __future__ import annotations

import uuid
from typing import Any

from ._protocol import Execute, Executed
from ._subscriber import SubscriberActor
from .aggregate import events_of
from .command import CommandItem, DispatchResult
from .handler import Metadata
from .process_manager import ProcessManager
from .store import RecordedEvent

__all__ = ["ProcessManagerActor"]

_COMMAND_NAMESPACE = uuid.UUID("0b9e6a4c-2f1d-4c55-9a43-7d2f1f6f5e21")


class _DispatchDue:
    """The answers to the commands of dispatch ``attempt`` are overdue."""

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt


class ProcessManagerActor(SubscriberActor):
    """Runs one :class:`ProcessManager`."""

    kind = "process_manager"
    cls: type[ProcessManager]

    def open(self) -> None:
        # The event whose commands are in flight: {"recorded", "manager", "action", "waiting",
        # "errors", "attempt"}; no page is read meanwhile.
        self.dispatching: dict[str, Any] | None = None

    def busy(self) -> bool:
        return self.dispatching is not None

    def router_known(self) -> None:
        if self.state == "waiting for router":
            self.state = "running"
            self._kick()

    def receive_other(self, message: Any, sender: Any) -> None:
        if isinstance(message, Executed):
            self._on_dispatched(message)

    def wakeup_other(self, payload: Any) -> None:
        if (
            isinstance(payload, _DispatchDue)
            and self.dispatching is not None
            and self.dispatching["attempt"] == payload.attempt
        ):
            self._dispatch_failed(TimeoutError("the dispatched commands were not answered in time"))

    def redelivery_refusal(self) -> str:
        return "process managers cannot retry a parked event out of order"

    def redeliver(self, recorded: RecordedEvent, meta: Metadata) -> None:
        raise NotImplementedError(self.redelivery_refusal())

    def process_page(self, rows: list[tuple[Any, ...]]) -> tuple[bool, bool]:
        return self._manage(rows), False

    def _manage(self, rows: list[tuple[Any, ...]]) -> bool:
        for row in rows:
            recorded, meta, error = self._decode(row)
            if error is None and recorded is not None:
                try:
                    if self._pm_step(recorded):
                        return False  # waiting for the router or for the commands' answers
                except Exception as exc:
                    error = exc
            if error is not None:
                if not self._policy(error, recorded, meta, row):
                    return False
                self._advance_pm(row[0], None)
        return True

    def _pm_step(self, recorded: RecordedEvent) -> bool:
        """Handle one event; True when it has to wait (commands in flight, no router yet)."""
        manager = self.cls()
        interest = manager.interested(recorded.data)
        if interest is None:
            self._advance_pm(recorded.position, None)
            return False
        action, process_id = interest
        state = self.store.load_process(self.name, process_id)
        if state is not None:
            manager.restore(state)
        manager.process_id = process_id
        commands = events_of(manager.handle(recorded.data))
        pending: dict[str, Any] = {"recorded": recorded, "manager": manager, "action": action}
        if not commands:
            self._finish_pm(pending)
            return False
        if self.router is None:
            self.state = "waiting for router"
            return True
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
        self.attempt += 1
        pending.update(waiting={item.request_id for item in items}, errors=[], attempt=self.attempt)
        self.dispatching = pending
        self.send(self.router, Execute(items, self.myAddress))
        self.wakeupAfter(manager.dispatch_timeout, _DispatchDue(self.attempt))
        return True

    def _on_dispatched(self, reply: Executed) -> None:
        pending = self.dispatching
        if pending is None:
            return
        for request_id, answer in reply.results:
            if request_id in pending["waiting"]:
                pending["waiting"].discard(request_id)
                if not isinstance(answer, DispatchResult):
                    pending["errors"].append(answer)
        if pending["waiting"]:
            return
        self.dispatching = None
        if pending["errors"]:
            self._dispatch_failed(pending["errors"][0], pending)
            return
        self._finish_pm(pending)
        self._process()

    def _dispatch_failed(self, error: BaseException, pending: dict[str, Any] | None = None) -> None:
        pending = pending or self.dispatching
        self.dispatching = None
        if pending is None:
            return
        recorded: RecordedEvent = pending["recorded"]
        row = (recorded.position, recorded.event_id, recorded.stream_id, recorded.version)
        if self._policy(error, recorded, Metadata.of(recorded), row):
            self._advance_pm(recorded.position, None)
            self._process()
        elif self.state in ("retrying", "stopped"):
            self._report(idle=self.state == "stopped")

    def _finish_pm(self, pending: dict[str, Any]) -> None:
        manager: ProcessManager = pending["manager"]
        recorded: RecordedEvent = pending["recorded"]
        manager.apply(recorded.data)
        state = None if pending["action"] == "stop" else manager.state()
        self._advance_pm(recorded.position, (manager.process_id, state))
        self.failures = 0

    def _advance_pm(
        self, position: int, instance: tuple[str, dict[str, Any] | None] | None
    ) -> None:
        with self.store.transaction():
            if instance is not None:
                self.store.save_process(self.name, instance[0], instance[1])
            self.store.save_checkpoint(self.name, position)
        self.position = position
        self.handled += 1
