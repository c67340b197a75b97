"""The shard's writer: one transaction for every append its aggregates decided in one round.

A shard decides the commands that reached its aggregates together, then hands all their appends
to :func:`commit`, which stores them in one ``append_batches`` call (one transaction, one flush
to disk) and gives back one outcome per append: its recorded events, or the error that refused
it. An append that counted on a refused one of the same stream is refused too (the store does
that within a transaction), so no append is ever stored on a state that is not.

A storage error that fails the whole transaction is every append's outcome: nothing of it is
stored, and each caller hears of it (or has its command decided again, see ``_cells``).

A round's answers may also count on stored events its decisions read: a cell rebuilt, a named
command found stored. With shared flushes another process's commit is visible before its flush,
so such a round counts on every commit written so far: its own commit does that (numbered after
the reads, its flush covers every commit they saw), and a round that numbered none takes a
``barrier``.

On SQLite a commit's flush to disk is left for later: every answer carries the last commit the
shard made (``durable_at``), which its state may count on even when it records nothing, and is
given only once a flush that covers that commit has ended
(:meth:`SQLiteRecorder.flush_through`). In-process the server of the batch flushes it (see
``_combiner``), outside any lock other callers wait on, so the next batch is decided and
committed while it waits, and one fdatasync covers them all; on multiproc the shard flushes
before it sends the round's answers (:meth:`Writer.on_disk`), after its turn on the database,
so other shards commit meanwhile. A flush that failed fails every answer that counts on it,
and every later one (the store refuses to acknowledge anything until it is opened again).
"""

from __future__ import annotations

import logging
from typing import Any

from . import telemetry
from .errors import BackstageError, StorageError
from .store import AppendRequest, EventStore

__all__ = ["Writer"]


def log() -> logging.Logger:
    return logging.getLogger(__name__)


class Writer:
    """Commits a round's appends for one shard, and counts its commits (for ``tree``/``top``)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        # The flush of a commit is left until its answers are given (see ``durable_at``).
        recorder: Any = store.recorder
        self.recorder = recorder
        self.defers = hasattr(recorder, "flush_through")
        if self.defers:
            recorder.defer_flush = True
        # The last commit left to the callers to flush: every answer from now on may count on
        # it (even one without an append), so each carries it (0: none).
        self.durable_at = 0
        # SQLite's data_version when the last barrier was taken (see counts_on_reads).
        self.barrier_at: int | None = None
        # Every commit made before this writer is on disk before it answers anything: its
        # aggregates rebuild from them, and the shard it replaces may have died between a
        # commit and its flush (killed, or in-process a crash that lost the commit's answers).
        self.flush_all()
        self.commits = 0
        self.appends = 0
        self.stats = telemetry.Stats()
        self.meter = telemetry.CommandMeter()  # commit batch sizes

    def commit(self, requests: list[AppendRequest], read: bool = False) -> list[Any]:
        """Store ``requests`` in one transaction; one outcome per request, in order. ``read``:
        the round's decisions counted on what they read from the store (see ``counts_on_reads``).
        """
        if not requests:
            if read:
                self.counts_on_reads()
            return []
        try:
            with telemetry.span("append", self.stats, appends=len(requests)):
                results: list[Any] = self.store.append_batches(requests)
        except Exception as exc:  # every appender hears of it; none waits for a timeout
            log().error("group commit of %d appends failed: %s", len(requests), exc)
            if not isinstance(exc, BackstageError):
                exc = StorageError(f"the group commit failed: {type(exc).__name__}: {exc}")
            results = [exc] * len(requests)
        self.commits += 1
        if self.defers and self.recorder.deferred:
            self.durable_at, self.recorder.deferred = self.recorder.deferred, 0
        elif read:  # (refused whole: no commit of this round was numbered after the reads)
            self.counts_on_reads()
        self.appends += len(requests)
        self.meter.batch(len(requests))
        return results

    def flush_all(self) -> None:
        """Return once every commit written so far (by any process) is on disk."""
        barrier = getattr(self.recorder, "barrier", None)
        if barrier is not None:
            self.recorder.flush_through(barrier())

    def on_disk(self, answers: list[Any]) -> list[Any]:
        """``answers`` (``(reply_to, request_id, answer, stream_id)``) once the commits they
        count on are on disk, for callers that cannot flush (multiproc): each answer becomes
        the storage error if that flush fails."""
        if not self.defers or not self.durable_at:
            return answers
        try:
            self.recorder.flush_through(self.durable_at)
        except BackstageError as exc:
            return [
                (reply_to, request_id, exc, stream) for reply_to, request_id, _, stream in answers
            ]
        return answers

    def counts_on_reads(self) -> None:
        """The round's answers count on what it read from the store (a cell rebuilt, a named
        command found stored), which may be another connection's commit not flushed yet (its
        frames are visible before its writer's fdatasync), and the round numbered no commit of
        its own after those reads: from now on answers count on every commit written so far.
        Unless no other connection committed since the last barrier (SQLite's
        ``data_version``): what the round read was all there then, and answers count on it."""
        if not self.defers:
            return
        version = self.recorder.data_version()
        if version != self.barrier_at:
            self.durable_at = max(self.durable_at, self.recorder.barrier())
            self.barrier_at = version

    def interrupted(self) -> None:
        """A round was interrupted (perhaps between its commit and the line that numbers it):
        from now on answers count on every commit written so far."""
        if self.defers:
            self.durable_at = max(self.durable_at, self.recorder.barrier())

    def describe(self) -> dict[str, Any]:
        return {
            "commits": self.commits,
            "appends": self.appends,
            "flushes": getattr(self.recorder, "flushes", None),
            "batch_sizes": self.meter.batches,
            "telemetry": self.stats.summary(),
        }
