"""Telemetry: timed events from every long-lived actor, in the spirit of Commanded's.

Each process keeps counters and durations per event name (``dispatch``, ``execute``, ``append``,
``rebuild``, ``handle``; a projection that catches up a page at once emits one ``handle`` for
the page, with ``events`` among the measurements and the mean as ``duration``); actors report
theirs in the supervision tree, which is what
``backstage status`` shows. Code running in the same process can also :func:`attach` a handler
that is called with ``(event, measurements, metadata)`` for every event emitted there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Stats", "attach", "detach", "emit", "span", "stats"]

Handler = Callable[[str, dict[str, float], dict[str, Any]], None]

_handlers: list[Handler] = []


class Stats:
    """Count, total and maximum duration per event name."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.totals: dict[str, float] = {}
        self.maxima: dict[str, float] = {}

    def record(self, event: str, duration: float) -> None:
        self.counts[event] = self.counts.get(event, 0) + 1
        self.totals[event] = self.totals.get(event, 0.0) + duration
        self.maxima[event] = max(self.maxima.get(event, 0.0), duration)

    def record_many(self, event: str, count: int, total: float) -> None:
        """``count`` events that took ``total`` seconds together (their mean is the maximum)."""
        self.counts[event] = self.counts.get(event, 0) + count
        self.totals[event] = self.totals.get(event, 0.0) + total
        self.maxima[event] = max(self.maxima.get(event, 0.0), total / count)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "count": count,
                "mean_ms": round(self.totals[name] / count * 1000, 3),
                "max_ms": round(self.maxima[name] * 1000, 3),
            }
            for name, count in self.counts.items()
        }


stats = Stats()


def attach(handler: Handler) -> None:
    """Call ``handler(event, measurements, metadata)`` for each event emitted in this process."""
    _handlers.append(handler)


def detach(handler: Handler) -> None:
    if handler in _handlers:
        _handlers.remove(handler)


def emit(
    event: str, measurements: dict[str, float], metadata: dict[str, Any] | None = None
) -> None:
    if "duration" in measurements:
        stats.record(event, measurements["duration"])
    for handler in list(_handlers):
        try:
            handler(event, measurements, metadata or {})
        except Exception:
            logging.getLogger(__name__).exception(
                "telemetry handler %r failed on %s", handler, event
            )


@contextmanager
def span(event: str, own: Stats | None = None, **metadata: Any) -> Iterator[dict[str, Any]]:
    """Time the block and emit ``event`` with its ``duration`` (seconds) when it ends; ``own``
    also records it in an actor's own statistics (in-process, many actors share the global)."""
    started = time.perf_counter()
    try:
        yield metadata
    finally:
        duration = time.perf_counter() - started
        if own is not None:
            own.record(event, duration)
        emit(event, {"duration": duration}, metadata)
