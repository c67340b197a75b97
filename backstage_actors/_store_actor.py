"""The event-store actor: group commit.

Appends that reach it while it is busy pile up in its mailbox; it takes each one into a buffer and
sends itself a :class:`Flush`, which the mailbox delivers only after every append that arrived
before it. The flush commits the whole buffer in one transaction (one fsync) and answers each
appender with its own outcome: one batch's ``WrongExpectedVersion`` fails only that batch.

An aggregate that pipelines (sends its appends without waiting, see ``AppendBatch``) has its
callers answered from here, in one message per caller and flush, and hears only of failures.
It decided its later commands on the state the failed append was to make, so once an append of
its epoch failed, its appends of that epoch to that stream are not tried (they fail as
superseded) until it rebuilt its state and sends from a newer epoch. Within one flush the store
does the same (``append_batches``: an append counting on a failed one fails too). Epochs are
times (``time.monotonic_ns``, one clock in-process): an append from an epoch older than this
store actor itself was handed on from a predecessor that may have seen its epoch fail, and is
refused the same way.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from supervisors import ChildAddress, SupervisedActor, WatchChildren

from . import telemetry
from ._names import EVENTS
from ._owner import OwnerLock
from ._protocol import (
    AppendBatch,
    Appended,
    AppendFailed,
    AppendResults,
    Executed,
    Flush,
    Settings,
)
from ._shared import shared_store
from .command import DispatchResult
from .errors import BackstageError, StorageError, WrongExpectedVersion
from .store import AppendRequest, EventStore

__all__ = ["StoreActor"]


def log() -> logging.Logger:
    return logging.getLogger(__name__)


class StoreActor(SupervisedActor):
    kind = "store"

    def on_start(self) -> None:
        self.settings: Settings = self.args["settings"]
        self.owner: OwnerLock | None = None
        if self.settings.exclusive:  # taken first: a refused start touches nothing
            self.owner = OwnerLock(self.settings.database, self._who())
        self.store: EventStore = shared_store(self.settings)
        self.buffer: list[tuple[Any, AppendBatch]] = []
        # stream id -> the epoch of a pipelined append that failed: what else that epoch sends
        # for the stream counted on it
        self.superseded: dict[str, int] = {}
        self.born = time.monotonic_ns()
        self.flush_pending = False
        self.listeners: list[Any] = []
        self.commits = 0
        self.appends = 0
        self.stats = telemetry.Stats()
        self.meter = telemetry.CommandMeter()  # commit batch sizes
        if self.supervisor is not None:
            self.send(self.supervisor, WatchChildren())

    def _who(self) -> dict[str, Any]:
        settings = self.settings
        return {"app": settings.app_name, "base": settings.base, "port": settings.admin_port}

    def on_exit(self) -> None:
        if self.owner is not None:
            self.owner.release()

    def on_stop(self) -> None:
        self.on_exit()

    def describe(self) -> dict[str, Any]:
        return {
            "database": self.settings.database,
            "synchronous": self.settings.synchronous,
            "last_position": self.store.last_position(),
            "commits": self.commits,
            "appends": self.appends,
            "telemetry": self.stats.summary(),
            "batch_sizes": self.meter.batches,
        }

    def receive(self, message: Any, sender: Any) -> None:
        if isinstance(message, AppendBatch):
            self.buffer.append((sender, message))
            if not self.flush_pending:
                self.flush_pending = True
                self.send(self.myAddress, Flush())
        elif isinstance(message, Flush):
            self.flush_pending = False
            self._flush()
        elif isinstance(message, ChildAddress) and message.name == EVENTS:
            self.listeners = [message.address] if message.address else []

    def _flush(self) -> None:
        buffer, self.buffer = self.buffer, []
        requests: list[AppendRequest] = []
        skipped: list[list[bool] | None] = []  # per pipelined batch: which appends are not tried
        for _, batch in buffer:
            if batch.reply_to is None:
                requests.extend(batch.requests)
                continue
            if not self.superseded and batch.tag >= self.born:  # every append is tried
                requests.extend(batch.requests)
                skipped.append(None)
                continue
            skip = [self._is_superseded(request, batch.tag) for request in batch.requests]
            requests.extend(r for r, s in zip(batch.requests, skip, strict=True) if not s)
            skipped.append(skip)
        try:
            with telemetry.span("append", self.stats, appends=len(requests)):
                results: list[Any] = self.store.append_batches(requests)
        except Exception as exc:  # every appender hears of it; none waits for a timeout
            log().error("group commit of %d appends failed: %s", len(requests), exc)
            if not isinstance(exc, BackstageError):
                exc = StorageError(f"the group commit failed: {type(exc).__name__}: {exc}")
            results = [exc] * len(requests)
        self.commits += 1
        self.appends += len(requests)
        self.meter.batch(len(requests))
        outcomes = iter(results)
        skips = iter(skipped)
        callers: list[_Caller] = []  # (addresses do not hash)
        last_position = 0
        for sender, batch in buffer:
            if batch.reply_to is None:
                outcome = [next(outcomes) for _ in batch.requests]
                self.send(sender, AppendResults(batch.tag, outcome))
            else:
                outcome = self._pipelined(sender, batch, next(skips), outcomes, callers)
            for recorded in outcome:
                if isinstance(recorded, list) and recorded:
                    last_position = max(last_position, recorded[-1].position)
        for caller in callers:
            if caller.results:
                self.send(caller.address, Executed(caller.results, caller.source))
        if last_position:
            for listener in self.listeners:
                self.send(listener, Appended(last_position))

    def _is_superseded(self, request: AppendRequest, epoch: int) -> bool:
        if epoch < self.born:
            return True
        failed_in = self.superseded.get(request.stream_id)
        if failed_in is None:
            return False
        if failed_in < epoch:  # the aggregate rebuilt since
            del self.superseded[request.stream_id]
            return False
        return True

    def _supersede(self, stream_id: str, epoch: int) -> None:
        """What ``epoch`` sends for ``stream_id`` from now on counted on a failed append."""
        self.superseded[stream_id] = max(epoch, self.superseded.get(stream_id, epoch))

    def _pipelined(
        self,
        sender: Any,
        batch: AppendBatch,
        skip: list[bool] | None,
        outcomes: Any,
        callers: list[_Caller],
    ) -> list[Any]:
        """Answer the callers of a pipelined batch; tell the aggregate what failed."""
        assert batch.items is not None
        caller = _Caller.of(callers, batch.reply_to)
        outcome: list[Any] = []
        failures = []
        restart = False
        for request, (item, attempt), superseded in zip(
            batch.requests, batch.items, skip or [False] * len(batch.requests), strict=True
        ):
            stream_id = request.stream_id
            if superseded:
                result: Any = WrongExpectedVersion.refusal(
                    stream_id,
                    request.expected_version,
                    "counting on an earlier append, which failed",
                )
            else:
                result = next(outcomes)
            if not request.events and not (isinstance(result, list) and result):
                # A repeat's look-up found no first attempt stored: run it again, uncharged.
                result = WrongExpectedVersion.refusal(
                    stream_id, request.expected_version, "its first attempt is not stored"
                )
            outcome.append(result)
            if isinstance(result, list):  # the aggregate sends appends with events only
                if request.answered_elsewhere(result):
                    # A command run again on a state that held its first attempt: the caller
                    # gets what was stored, and the aggregate must rebuild (what it decided
                    # after this, it decided on that state).
                    restart = True
                    self._supersede(stream_id, batch.tag)
                caller.answered_by(stream_id, sender)
                caller.results.append(
                    (
                        item.request_id,
                        DispatchResult(
                            stream_id,
                            result[-1].version,
                            result,
                            item.command_id,
                            item.correlation_id,
                        ),
                    )
                )
            else:
                failures.append((item, attempt, result))
                self._supersede(stream_id, batch.tag)
        if failures or restart:
            self.send(sender, AppendFailed(batch.tag, failures, batch.reply_to))
        return outcome


class _Caller:
    """One caller's answers from a flush; ``source`` is ``(stream id, address, lane)`` of the one
    aggregate that decided them all (the caller may send it its next commands directly)."""

    __slots__ = ("address", "results", "source")

    def __init__(self, address: Any) -> None:
        self.address = address
        self.results: list[tuple[str, Any]] = []
        self.source: tuple[str, Any, str | None] | None = None

    @classmethod
    def of(cls, callers: list[_Caller], address: Any) -> _Caller:
        for caller in callers:
            if caller.address is address or caller.address == address:
                return caller
        caller = cls(address)
        callers.append(caller)
        return caller

    def answered_by(self, stream_id: str, aggregate: Any) -> None:
        if not self.results:
            self.source = (stream_id, aggregate, None)  # (in-process: no lane)
        elif self.source is not None and self.source[0] != stream_id:
            self.source = None  # several aggregates
