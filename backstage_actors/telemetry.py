"""Telemetry: timed events from every long-lived actor, in the spirit of Commanded's.

Each process keeps counters and durations per event name (``dispatch``, ``execute``, ``append``,
``rebuild``, ``handle``; a projection that catches up a page at once emits one ``handle`` for
the page, with ``events`` among the measurements and the mean as ``duration``); actors report
theirs in the supervision tree, which is what
``backstage status`` shows. Code running in the same process can also :func:`attach` a handler
that is called with ``(event, measurements, metadata)`` for every event emitted there.

A :class:`CommandMeter` counts answered commands by type and outcome, with a latency histogram,
and the appends behind them: each aggregate actor keeps one and hands its counts to the router
now and then (:meth:`CommandMeter.take`); the router adds them up per aggregate type and shows
them in the tree, where ``backstage top`` and the Prometheus endpoint read them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .errors import CommandRejected, DispatchTimeout

__all__ = [
    "BATCH_BUCKETS",
    "LATENCY_BUCKETS",
    "OUTCOMES",
    "CommandMeter",
    "Span",
    "Stats",
    "attach",
    "detach",
    "emit",
    "finish",
    "histogram_quantile",
    "outcome_of",
    "span",
    "stats",
]

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

#: Upper bounds (seconds) of the command latency histogram's buckets; the last bucket is +Inf.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Upper bounds (appends per commit) of the group-commit batch size histogram.
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
#: How a command's answer counts: ``timeout`` only where a client gave up waiting.
OUTCOMES = ("ok", "rejected", "failed", "timeout")


def outcome_of(answer: object) -> str:
    """``ok`` for a result, ``rejected`` when the aggregate refused, ``failed`` otherwise."""
    if isinstance(answer, CommandRejected):
        return "rejected"
    if isinstance(answer, DispatchTimeout):
        return "timeout"
    return "failed" if isinstance(answer, BaseException) else "ok"


def _histogram(size: int) -> dict[str, Any]:
    return {"buckets": [0] * (size + 1), "sum": 0.0}


def _observe(histogram: dict[str, Any], bounds: tuple[float, ...], value: float) -> None:
    index = 0
    while index < len(bounds) and value > bounds[index]:
        index += 1
    histogram["buckets"][index] += 1
    histogram["sum"] += value


def _add_histogram(into: dict[str, Any], other: dict[str, Any]) -> None:
    into["buckets"] = [a + b for a, b in zip(into["buckets"], other["buckets"], strict=True)]
    into["sum"] += other["sum"]


def histogram_quantile(q: float, counts: list[int], bounds: tuple[float, ...]) -> float | None:
    """The ``q`` quantile of non-cumulative bucket ``counts`` over ``bounds``, interpolated
    within its bucket as Prometheus's ``histogram_quantile`` does (None without observations;
    the last finite bound when it falls in the +Inf bucket)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if seen + count >= rank and count:
            if index >= len(bounds):
                return float(bounds[-1])
            lower = bounds[index - 1] if index else 0.0
            return float(lower + (bounds[index] - lower) * (rank - seen) / count)
        seen += count
    return float(bounds[-1])


class CommandMeter:
    """Answered commands per command type (by outcome, with a latency histogram), appends, events
    appended and commit batch sizes; plain data in and out, so it travels in messages and JSON."""

    def __init__(self) -> None:
        self.commands: dict[str, dict[str, Any]] = {}
        self.appends = 0
        self.events = 0
        self.batches = _histogram(len(BATCH_BUCKETS))

    def command(self, name: str, outcome: str, seconds: float) -> None:
        entry = self.commands.get(name)
        if entry is None:
            entry = self.commands[name] = {
                "outcomes": {},
                "latency": _histogram(len(LATENCY_BUCKETS)),
            }
        entry["outcomes"][outcome] = entry["outcomes"].get(outcome, 0) + 1
        _observe(entry["latency"], LATENCY_BUCKETS, seconds)

    def appended(self, appends: int, events: int) -> None:
        self.appends += appends
        self.events += events

    def batch(self, size: int) -> None:
        """One commit of ``size`` appends (a group commit when it is more than one)."""
        _observe(self.batches, BATCH_BUCKETS, size)

    def __bool__(self) -> bool:
        return bool(self.commands or self.appends or self.batches["sum"])

    def summary(self) -> dict[str, Any]:
        return {
            "commands": self.commands,
            "appends": self.appends,
            "events": self.events,
            "batch_sizes": self.batches,
        }

    def take(self) -> dict[str, Any]:
        """What was counted since the last ``take`` (and forget it): a delta for :meth:`add`."""
        delta = self.summary()
        self.commands, self.appends, self.events = {}, 0, 0
        self.batches = _histogram(len(BATCH_BUCKETS))
        return delta

    def add(self, delta: dict[str, Any]) -> None:
        for name, entry in delta.get("commands", {}).items():
            mine = self.commands.setdefault(
                name, {"outcomes": {}, "latency": _histogram(len(LATENCY_BUCKETS))}
            )
            for outcome, count in entry["outcomes"].items():
                mine["outcomes"][outcome] = mine["outcomes"].get(outcome, 0) + count
            _add_histogram(mine["latency"], entry["latency"])
        self.appends += delta.get("appends", 0)
        self.events += delta.get("events", 0)
        if "batch_sizes" in delta:
            _add_histogram(self.batches, delta["batch_sizes"])


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
