"""History figures: ``state_of`` deep in a long stream, export throughput against raw sqlite3 +
json.dumps, and ``trace`` of a saga in a large store. Run: ``python -m bench.bench_history
[--quick]`` (part of ``python -m bench.run``)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from backstage_actors import EventStore
from backstage_actors._export import export_events
from backstage_actors.history import query_rows, state_of, trace
from backstage_actors.store.records import EventQuery
from tests.history_domain import Credited, SnapLedger

from ._common import tempdir
from ._report import Row, main

__all__ = ["rows"]


def _best(work: Any, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def bench_state_of(directory: str) -> dict[str, float]:
    with EventStore(os.path.join(directory, "state.db")) as store:
        # A snapshot every 100 events, as the live aggregate takes them: all are kept.
        for hundred in range(1, 101):
            store.append("SnapLedger-x", [Credited(1, "n", {}) for _ in range(100)])
            version = hundred * 100
            state = {"balance": version, "count": version, "notes": []}
            store.save_snapshot("SnapLedger-x", version, state)
        at_5000 = _best(lambda: state_of(store, SnapLedger, "x", version=5000))
        at_5099 = _best(lambda: state_of(store, SnapLedger, "x", version=5099))
        # Only the latest snapshot (10,000), as before the history was kept: a replay from 1.
        store.recorder.conn.execute("DELETE FROM snapshot_history WHERE version < 10000")
        latest_only = _best(lambda: state_of(store, SnapLedger, "x", version=5000))
    return {
        "state_of_v5000_ms": at_5000 * 1000,
        "state_of_v5099_ms": at_5099 * 1000,
        "state_of_v5000_latest_only_ms": latest_only * 1000,
    }


def _fill(store: EventStore, count: int, saga_every: int = 0) -> str:
    """``count`` events in streams of 100; returns the correlation id of one 50-event saga."""
    saga = str(uuid.uuid4())
    conn = store.recorder.conn
    stamp = datetime.now(UTC).isoformat()
    rows = []
    for n in range(count):
        correlation = saga if 500_000 <= n < 500_050 else f"c{n // 10}"
        meta = json.dumps(
            {
                "command_id": f"k{n}",
                "correlation_id": correlation,
                "causation_id": f"k{n}",
                "command": "Credit",
                "user": f"u{n % 100}",
            }
        )
        rows.append(
            (
                str(uuid.uuid4()),
                f"s-{n // 100}",
                n % 100 + 1,
                "Credited",
                2,
                "tests.history_domain:Credited",
                '{"amount": 1, "note": "n", "live": {}}',
                meta,
                stamp,
            )
        )
        if len(rows) == 50_000:
            with store.transaction():
                conn.executemany(
                    "INSERT INTO events (event_id, stream_id, version, type, schema_version, topic,"
                    " data, metadata, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            rows = []
    return saga


def bench_export_and_trace(directory: str, count: int) -> dict[str, float]:
    path = os.path.join(directory, "big.db")
    with EventStore(path) as store:
        saga = _fill(store, count)
        started = time.perf_counter()
        export_events(store, os.path.join(directory, "out.jsonl"))
        ours = count / (time.perf_counter() - started)
        started = time.perf_counter()
        conn = sqlite3.connect(path)
        with open(os.path.join(directory, "raw.jsonl"), "w") as out:
            for row in conn.execute(
                "SELECT position, event_id, stream_id, version, type, schema_version,"
                " data, metadata, recorded_at FROM events ORDER BY position"
            ):
                out.write(json.dumps(row) + "\n")
        raw = count / (time.perf_counter() - started)
        conn.close()
        tree_ms = _best(lambda: trace(store, saga)) * 1000
        assert trace(store, saga)["events"] == 50
        started = time.perf_counter()

        found = sum(1 for _ in query_rows(store, EventQuery(metadata=(("user", "u7"),))))
        where_s = time.perf_counter() - started
        started = time.perf_counter()
        by_corr = sum(
            1 for _ in query_rows(store, EventQuery(metadata=(("correlation_id", "c77"),)))
        )
        corr_ms = (time.perf_counter() - started) * 1000
    return {
        "export_events_per_s": ours,
        "raw_sqlite_json_events_per_s": raw,
        "export_ratio": ours / raw,
        "trace_50_event_saga_ms": tree_ms,
        "where_user_scan_s": where_s,
        "where_user_found": found,
        "where_correlation_ms": corr_ms,
        "where_correlation_found": by_corr,
    }


def rows(quick: bool = False) -> list[Row]:
    count = 100_000 if quick else 1_000_000
    with tempdir() as directory:
        figures = bench_state_of(str(directory))
        figures.update(bench_export_and_trace(str(directory), count))
    return [
        Row(
            "state_of at v5,000 of 10,000 events, snapshots every 100",
            figures["state_of_v5000_ms"],
            "ms",
            "the same from the latest snapshot only (a replay from 1)",
            figures["state_of_v5000_latest_only_ms"],
            target="≤ 2 ms",
            higher_is_better=False,
        ),
        Row(
            "state_of at v5,099 (99 events past a snapshot)",
            figures["state_of_v5099_ms"],
            "ms",
            target="≤ 2 ms",
            higher_is_better=False,
        ),
        Row(
            f"export of {count:,} events to JSON lines",
            figures["export_events_per_s"],
            "events/s",
            "raw sqlite3 SELECT + json.dumps",
            figures["raw_sqlite_json_events_per_s"],
            target="≥ 0.5x",
        ),
        Row(
            f"trace of a 50-event saga among {count:,} events",
            figures["trace_50_event_saga_ms"],
            "ms",
            target="≤ 50 ms",
            higher_is_better=False,
        ),
        Row(
            f"events --where correlation_id (indexed), {count:,} events",
            figures["where_correlation_ms"],
            "ms",
            higher_is_better=False,
        ),
    ]


if __name__ == "__main__":
    main(rows, __doc__)
