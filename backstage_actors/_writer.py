"""The shard's writer: one transaction for every append its aggregates decided in one round.

A shard decides the commands that reached its aggregates together, then hands all their appends
to :func:`commit`, which stores them in one ``append_batches`` call (one transaction, one flush
to disk) and gives back one outcome per append: its recorded events, or the error that refused
it. An append that counted on a refused one of the same stream is refused too (the store does
that within a transaction), so no append is ever stored on a state that is not.

A storage error that fails the whole transaction is every append's outcome: nothing of it is
stored, and each caller hears of it (or has its command decided again, see ``_cells``).
"""

from __future__ import annotations

import logging
from typing import Any

from . import telemetry
from .errors import BackstageError
from .store import AppendRequest, EventStore

__all__ = ["Writer"]


def log() -> logging.Logger:
    return logging.getLogger(__name__)


class Writer:
    """Commits a round's appends for one shard, and counts its commits (for ``tree``/``top``)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.commits = 0
        self.appends = 0
        self.stats = telemetry.Stats()
        self.meter = telemetry.CommandMeter()  # commit batch sizes

    def commit(self, requests: list[AppendRequest]) -> list[Any]:
        """Store ``requests`` in one transaction; one outcome per request, in order."""
        if not requests:
            return []
        try:
            with telemetry.span("append", self.stats, appends=len(requests)):
                results: list[Any] = self.store.append_batches(requests)
        except BackstageError as exc:
            log().error("group commit of %d appends failed: %s", len(requests), exc)
            results = [exc] * len(requests)
        self.commits += 1
        self.appends += len(requests)
        self.meter.batch(len(requests))
        return results

    def describe(self) -> dict[str, Any]:
        return {
            "commits": self.commits,
            "appends": self.appends,
            "flushes": getattr(self.store.recorder, "flushes", None),
            "batch_sizes": self.meter.batches,
            "telemetry": self.stats.summary(),
        }
