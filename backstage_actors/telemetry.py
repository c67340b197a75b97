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
from collections.abc import Callable
from typing import Any

__all__ = ["Span", "Stats", "attach", "detach", "emit", "finish", "span", "stats"]

Handler = Callable[[str, dict[str, float], dict[str, Any]], None]

_handlers: list[Handler] = []


class Stats:
    """Count, total and maximum duration per event name."""

    def __init__(self) -> None:
        self._events: dict[str, list[float]] = {}  # name -> [count, total, maximum]

    def record(self, event: str, duration: float) -> None:
        entry = self._events.get(event)
        if entry is None:
            self._events[event] = [1, duration, duration]
            return
        entry[0] += 1
        entry[1] += duration
        if duration > entry[2]:
            entry[2] = duration

    def record_many(self, event: str, count: int, total: float) -> None:
        """``count`` events that took ``total`` seconds together (their mean is the maximum)."""
        entry = self._events.setdefault(event, [0, 0.0, 0.0])
        entry[0] += count
        entry[1] += total
        entry[2] = max(entry[2], total / count)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "count": int(count),
                "mean_ms": round(total / count * 1000, 3),
                "max_ms": round(maximum * 1000, 3),
            }
            for name, (count, total, maximum) in self._events.items()
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
    if not _handlers:
        return
    for handler in list(_handlers):
        try:
            handler(event, measurements, metadata or {})
        except Exception:
            logging.getLogger(__name__).exception(
                "telemetry handler %r failed on %s", handler, event
            )


def span(event: str, own: Stats | None = None, **metadata: Any) -> Span:
    """Time the block and emit ``event`` with its ``duration`` (seconds) when it ends; ``own``
    also records it in an actor's own statistics (in-process, many actors share the global)."""
    return Span(event, own, metadata)


class Span:
    """What :func:`span` returns: a context manager that yields its metadata (a class, not a
    generator: it runs several times per command)."""

    __slots__ = ("event", "metadata", "own", "started")

    def __init__(self, event: str, own: Stats | None, metadata: dict[str, Any]) -> None:
        self.event = event
        self.own = own
        self.metadata = metadata
        self.started = 0.0

    def __enter__(self) -> dict[str, Any]:
        self.started = time.perf_counter()
        return self.metadata

    def __exit__(self, *exc_info: object) -> None:
        finish(self.event, self.own, self.started, self.metadata)


def finish(event: str, own: Stats | None, started: float, metadata: dict[str, Any]) -> None:
    """End a timed block begun at ``started`` (``time.perf_counter()``), as a span does: for
    code that runs for every command, where a span's object costs more than the timing."""
    duration = time.perf_counter() - started
    if own is not None:
        own.record(event, duration)
    emit(event, {"duration": duration}, metadata)
