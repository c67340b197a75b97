"""The event-store actor: group commit.

Appends that reach it while it is busy pile up in its mailbox; it takes each one into a buffer and
sends itself a :class:`Flush`, which the mailbox delivers only after every append that arrived
before it. The flush commits the whole buffer in one transaction (one fsync) and answers each
appender with its own outcome: one batch's ``WrongExpectedVersion`` fails only that batch.
"""

from __future__ import annotations

import logging
from typing import Any

from supervisors import ChildAddress, SupervisedActor, WatchChildren

from . import telemetry
from ._protocol import AppendBatch, Appended, AppendResults, Flush, Settings
from ._shared import shared_store
from .errors import BackstageError
from .store import AppendRequest, EventStore

__all__ = ["StoreActor"]


def log() -> logging.Logger:
    return logging.getLogger(__name__)


class StoreActor(SupervisedActor):
    kind = "store"

    def on_start(self) -> None:
        self.settings: Settings = self.args["settings"]
        self.store: EventStore = shared_store(self.settings)
        self.buffer: list[tuple[Any, Any, list[AppendRequest]]] = []
        self.flush_pending = False
        self.listeners: list[Any] = []
        self.commits = 0
        self.appends = 0
        self.stats = telemetry.Stats()
        if self.supervisor is not None:
            self.send(self.supervisor, WatchChildren())

    def describe(self) -> dict[str, Any]:
        return {
            "database": self.settings.database,
            "synchronous": self.settings.synchronous,
            "last_position": self.store.last_position(),
            "commits": self.commits,
            "appends": self.appends,
            "telemetry": self.stats.summary(),
        }

    def receive(self, message: Any, sender: Any) -> None:
        if isinstance(message, AppendBatch):
            self.buffer.append((sender, message.tag, message.requests))
            if not self.flush_pending:
                self.flush_pending = True
                self.send(self.myAddress, Flush())
        elif isinstance(message, Flush):
            self.flush_pending = False
            self._flush()
        elif isinstance(message, ChildAddress) and message.name == "events":
            self.listeners = [message.address] if message.address else []

    def _flush(self) -> None:
        buffer, self.buffer = self.buffer, []
        requests = [request for _, _, batch in buffer for request in batch]
        try:
            with telemetry.span("append", self.stats, appends=len(requests)):
                results: list[Any] = self.store.append_batches(requests)
        except BackstageError as exc:
            log().error("group commit of %d appends failed: %s", len(requests), exc)
            results = [exc] * len(requests)
        self.commits += 1
        self.appends += len(requests)
        start = 0
        last_position = 0
        for sender, tag, batch in buffer:
            answers = results[start : start + len(batch)]
            start += len(batch)
            self.send(sender, AppendResults(tag, answers))
            for answer in answers:
                if isinstance(answer, list) and answer:
                    last_position = max(last_position, answer[-1].position)
        if last_position:
            for listener in self.listeners:
                self.send(listener, Appended(last_position))
