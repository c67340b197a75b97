"""Event-store benchmarks: appends, group commit, reads and append cost as the store grows, each
against raw sqlite3 (or eventsourcing 9.5.6) on the same machine, in the same run.

Every database is a file in a temporary directory, WAL, ``synchronous=FULL``.
Run as ``python -m bench.bench_store [--quick]``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import queue
import random
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import closing
from pathlib import Path
from typing import Any

from backstage_actors import EventStore
from backstage_actors.store import AppendRequest

from . import _children, _domain
from ._common import RAW_INSERT, event_rows, rates, raw_connection, tempdir
from ._domain import Credited
from ._report import Row, main

__all__ = ["rows"]

log = logging.getLogger(__name__)


def _credits(wallet: str, balance: int, count: int) -> list[Credited]:
    return [Credited(wallet, 1, balance + i + 1) for i in range(count)]


class _Streams:
    """Round-robin over ``n`` streams, tracking each one's version (what an aggregate knows)."""

    def __init__(self, n: int, prefix: str = "Wallet-w") -> None:
        self.ids = [f"{prefix}{i}" for i in range(n)]
        self.versions = [0] * n
        self.turn = 0

    def next(self, count: int) -> tuple[str, int]:
        """The next stream and its version before appending ``count`` events."""
        index = self.turn % len(self.ids)
        self.turn += 1
        version = self.versions[index]
        self.versions[index] += count
        return self.ids[index], version


def _appender(store: EventStore, per_append: int) -> Callable[[], int]:
    streams = _Streams(100)

    def step() -> int:
        stream_id, version = streams.next(per_append)
        wallet = stream_id.split("-", 1)[1]
        store.append(stream_id, _credits(wallet, version, per_append), expected_version=version)
        return per_append

    return step


def _raw_inserter(conn: sqlite3.Connection, per_transaction: int) -> Callable[[], int]:
    streams = _Streams(100)

    def step() -> int:
        stream_id, version = streams.next(per_transaction)
        rows = event_rows(stream_id, version + 1, per_transaction, version)
        conn.execute("BEGIN")
        if per_transaction == 1:
            conn.execute(RAW_INSERT, rows[0])
        else:
            conn.executemany(RAW_INSERT, rows)
        conn.execute("COMMIT")
        return per_transaction

    return step


def _appends(directory: Path, per_append: int, seconds: float, limit: int) -> tuple[float, float]:
    path = directory / f"store-{per_append}.db"
    with (
        EventStore(str(path)) as store,
        closing(raw_connection(directory / f"raw-{path.name}")) as raw,
    ):
        found = rates(
            {"ours": _appender(store, per_append), "raw": _raw_inserter(raw, per_append)},
            seconds,
            limit,
        )
    return found["ours"], found["raw"]


# -- group commit -------------------------------------------------------------------------------


class _Committer(threading.Thread):
    """One writer for many appenders, as the store actor is: with ``group`` it commits whatever
    appends are waiting in one transaction; without, one transaction per append."""

    def __init__(self, store: EventStore, group: bool) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.group = group
        self.inbox: queue.Queue[tuple[AppendRequest, Future[Any]] | None] = queue.Queue()
        self.commits = 0

    def submit(self, request: AppendRequest) -> Future[Any]:
        future: Future[Any] = Future()
        self.inbox.put((request, future))
        return future

    def run(self) -> None:
        while (first := self.inbox.get()) is not None:
            waiting = [first]
            while True:
                try:
                    more = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.inbox.put(None)
                    break
                waiting.append(more)
            batches = [waiting] if self.group else [[item] for item in waiting]
            for batch in batches:
                results = self.store.append_batches([request for request, _ in batch])
                self.commits += 1
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)


def _group_commit_run(path: Path, group: bool, threads: int, per_thread: int) -> float:
    with EventStore(str(path)) as store:
        committer = _Committer(store, group)
        committer.start()
        failures: list[Any] = []

        def appender(index: int) -> None:
            wallet = f"g{index}"
            for version in range(per_thread):
                request = AppendRequest(
                    f"Wallet-{wallet}", _credits(wallet, version, 1), expected_version=version
                )
                result = committer.submit(request).result()
                if not isinstance(result, list):
                    failures.append(result)

        workers = [threading.Thread(target=appender, args=(i,)) for i in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - start
        committer.inbox.put(None)
        committer.join()
        if failures:
            raise RuntimeError(f"{len(failures)} appends failed, the first: {failures[0]!r}")
        log.info(
            "group commit=%s: %d appends in %d commits",
            group,
            threads * per_thread,
            committer.commits,
        )
        return threads * per_thread / elapsed


# -- reads --------------------------------------------------------------------------------------


def _processes_appending(path: Path, shared: bool, processes: int, per_process: int) -> float:
    """Commits/s of ``processes`` processes appending one event per commit at once."""
    EventStore(str(path)).close()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(
            target=_children.shared_flush_appender,
            args=(str(path), shared, n, per_process, barrier, results),
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    spans = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(60)
    return processes * per_process / (max(e for _, e in spans) - min(s for s, _ in spans))


def _fill(store: EventStore, events: int, streams: int = 100, batch: int = 1000) -> None:
    per_stream = events // streams
    for s in range(streams):
        for version in range(0, per_stream, batch):
            count = min(batch, per_stream - version)
            store.append(
                f"Wallet-r{s}", _credits(f"r{s}", version, count), expected_version=version
            )


def _read_all(directory: Path, events: int, repeats: int) -> tuple[float, float]:
    path = directory / "read-all.db"
    with EventStore(str(path)) as store:
        _fill(store, events)
        ours = []
        for _ in range(repeats):
            start = time.perf_counter()
            count = sum(1 for _ in store.read_all())
            ours.append(time.perf_counter() - start)
            assert count == events, count
    raw = []
    with closing(raw_connection(path)) as conn:
        for _ in range(repeats):
            start = time.perf_counter()
            for row in conn.execute(
                "SELECT position, event_id, stream_id, version, type, schema_version, topic, data,"
                " metadata, recorded_at FROM events ORDER BY position"
            ):
                json.loads(row[7])
                json.loads(row[8])
            raw.append(time.perf_counter() - start)
    return events / statistics.median(ours), events / statistics.median(raw)


def _read_stream(directory: Path, events: int, repeats: int) -> tuple[float, float]:
    """ms to read one stream of ``events`` events: Backstage ``read_stream`` vs eventsourcing."""
    with EventStore(str(directory / "read-stream.db")) as store:
        for version in range(0, events, 1000):
            store.append("Wallet-long", _credits("long", version, 1000), expected_version=version)
        ours = []
        for _ in range(repeats):
            start = time.perf_counter()
            count = sum(1 for _ in store.read_stream("Wallet-long"))
            ours.append(time.perf_counter() - start)
            assert count == events, count
    es = _domain.es_app(str(directory / "es-read-stream.db"), cache=False)
    try:
        wallet = _domain.EsWallet()
        for _ in range(events - 1):
            wallet.credit(1)
        es.save(wallet)
        theirs = []
        for _ in range(repeats):
            start = time.perf_counter()
            count = sum(1 for _ in es.events.get(wallet.id))
            theirs.append(time.perf_counter() - start)
            assert count == events, count
    finally:
        es.close()
    return statistics.median(ours) * 1000, statistics.median(theirs) * 1000


# -- append cost as the store grows -------------------------------------------------------------


def _bulk_fill(path: Path, events: int, per_stream: int = 100) -> list[str]:
    """``events`` pre-serialized rows in one transaction (fast, not through ``append``)."""
    conn = raw_connection(path, synchronous="OFF")
    streams = [f"Wallet-b{i}" for i in range(events // per_stream)]
    try:
        conn.execute("BEGIN")

        def rows() -> Iterator[tuple[Any, ...]]:
            for stream_id in streams:
                yield from event_rows(stream_id, 1, per_stream)

        conn.executemany(RAW_INSERT, rows())
        conn.executemany(
            "INSERT INTO streams (stream_id, version) VALUES (?, ?)",
            ((s, per_stream) for s in streams),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return streams


def _append_cost(directory: Path, small: int, big: int, rounds: int, per_round: int) -> Row:
    stores: dict[int, tuple[EventStore, list[str], dict[str, int]]] = {}
    timings: dict[int, list[float]] = {small: [], big: []}
    try:
        for size in (small, big):
            start = time.perf_counter()
            path = directory / f"grown-{size}.db"
            streams = _bulk_fill(path, size)
            log.info("filled %s events in %.1fs", f"{size:,}", time.perf_counter() - start)
            stores[size] = (EventStore(str(path)), streams, dict.fromkeys(streams, 100))
        pick = random.Random(7)
        for _ in range(rounds):
            for size in (small, big):
                store, streams, versions = stores[size]
                start = time.perf_counter()
                for _ in range(per_round):
                    stream_id = pick.choice(streams)
                    version = versions[stream_id]
                    store.append(
                        stream_id, _credits(stream_id, version, 1), expected_version=version
                    )
                    versions[stream_id] = version + 1
                timings[size].append((time.perf_counter() - start) / per_round * 1e6)
    finally:
        for store, _, _ in stores.values():
            store.close()
    figure = f"append cost with {big:,} events stored (single append)"
    peer = f"the same with {small:,} stored"
    median = statistics.median
    return Row(
        figure,
        median(timings[big]),
        "µs/append",
        peer,
        median(timings[small]),
        target="≤ 1.2x",
        higher_is_better=False,
    )


def rows(quick: bool = False) -> list[Row]:
    """Every event-store figure; ``quick`` runs smaller sizes for less time."""
    seconds = 1.0 if quick else 4.0
    result: list[Row] = []
    with tempdir() as directory:
        ours, raw = _appends(directory, 1, seconds, 20_000 if quick else 100_000)
        result.append(
            Row(
                "single-event appends (1 event/commit)",
                ours,
                "appends/s",
                "raw sqlite3 insert + commit",
                raw,
            )
        )
        ours, raw = _appends(directory, 100, seconds, 100_000 if quick else 1_000_000)
        result.append(
            Row(
                "appends of 100 events",
                ours,
                "events/s",
                "raw sqlite3, 100 rows per transaction",
                raw,
                target="≥ 0.5x",
            )
        )
        threads, per_thread = 8, (100 if quick else 500)
        grouped = _group_commit_run(directory / "grouped.db", True, threads, per_thread)
        single = _group_commit_run(directory / "ungrouped.db", False, threads, per_thread)
        result.append(
            Row(
                f"group commit, {threads} concurrent appenders (append_batches)",
                grouped,
                "events/s",
                "the same appends, 1 transaction each",
                single,
            )
        )
        processes, per_process = 8, (200 if quick else 1000)
        shared = _processes_appending(directory / "shared.db", True, processes, per_process)
        sqlite_full = _processes_appending(directory / "full.db", False, processes, per_process)
        result.append(
            Row(
                f"{processes} processes appending at once (1 event/commit, shared flushes)",
                shared,
                "appends/s",
                "the same with SQLite's own FULL flush in each commit",
                sqlite_full,
            )
        )
        events = 10_000 if quick else 100_000
        ours, raw = _read_all(directory, events, 3)
        result.append(
            Row(
                f"read_all over {events:,} events",
                ours,
                "events/s",
                "raw sqlite3 SELECT + json.loads",
                raw,
            )
        )
        ours_ms, theirs_ms = _read_stream(directory, 10_000, 3 if quick else 7)
        result.append(
            Row(
                "read_stream of one 10,000-event stream",
                ours_ms,
                "ms",
                "eventsourcing 9.5.6 events.get (SQLite)",
                theirs_ms,
                higher_is_better=False,
            )
        )
        big = 100_000 if quick else 1_000_000
        result.append(
            _append_cost(directory, 10_000, big, 3 if quick else 7, 200 if quick else 500)
        )
    return result


if __name__ == "__main__":
    main(rows, __doc__)
