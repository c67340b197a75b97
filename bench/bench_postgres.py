"""The PostgreSQL store against its peers on the same private server (started here, as the tests
start theirs: ``initdb`` in a temp dir, unix socket only, fsync on).

Run as ``python -m bench.bench_postgres [--quick]``. Skipped (no rows) without PostgreSQL binaries.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backstage_actors import _thespian
from backstage_actors.store import AppendRequest, EventStore

from . import _domain, bench_shards
from ._common import check, rates
from ._report import Row, main

__all__ = ["rows"]

log = logging.getLogger(__name__)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _server() -> Any:
    from tests.pg_fixture import PrivateServer, _bindir

    bindir = _bindir()
    if bindir is None:
        return None
    server = PrivateServer(bindir)
    server.start()
    return server


def _raw(dsn: str, per_commit: int) -> Callable[[], int]:
    """Raw psycopg: ``per_commit`` rows of a thin events-like table (6 columns, 3 indexes),
    then commit."""
    import psycopg

    conn = psycopg.connect(dsn)
    conn.execute(
        "CREATE TABLE raw_events (position BIGSERIAL PRIMARY KEY, event_id TEXT UNIQUE,"
        " stream_id TEXT, version BIGINT, type TEXT, data TEXT, UNIQUE (stream_id, version))"
    )
    conn.commit()
    count = [0]

    def step() -> int:
        rows = []
        for _ in range(per_commit):
            count[0] += 1
            n = count[0]
            rows.append((f"e{n}", "raw", n, "Credited", '{"wallet":"w","amount":1,"balance":1}'))
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO raw_events (event_id, stream_id, version, type, data)"
                " VALUES (%s, %s, %s, %s, %s)",
                rows,
            )
        conn.commit()
        return per_commit

    return step


def _raw_same(dsn: str, per_commit: int) -> Callable[[], int]:
    """Raw psycopg: the rows the store writes (same columns and values' sizes) into the same
    table (an ``events`` table of the store's schema, with its indexes, in a schema of its own),
    then commit: what the SQLite benchmarks' raw peer does there."""
    import psycopg

    EventStore(dsn).close()  # the tables
    conn = psycopg.connect(dsn)
    count = [0]
    stamp = "2026-12-03T15:00:00.000000+00:00"

    def step() -> int:
        rows = []
        for _ in range(per_commit):
            count[0] += 1
            n = count[0]
            rows.append(
                (
                    f"{uuid.uuid4().hex[:26]}-{n}",
                    "raw",
                    n,
                    "Credited",
                    1,
                    "bench._domain:Credited",
                    '{"wallet":"w","amount":1,"balance":1}',
                    "{}",
                    stamp,
                )
            )
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO events (event_id, stream_id, version, type, schema_version, topic,"
                " data, metadata, recorded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
        conn.commit()
        return per_commit

    return step


def _ours(store: EventStore, per_append: int, stream: str) -> Callable[[], int]:
    version = [0]

    def step() -> int:
        events = [_domain.Credited("w", 1, version[0] + i) for i in range(per_append)]
        store.append(stream, events, expected_version=version[0])
        version[0] += per_append
        return per_append

    return step


def _concurrent(store: EventStore, threads: int, per_thread: int, prefix: str) -> float:
    """Appends/s of ``threads`` callers appending single events to streams of their own."""
    barrier = threading.Barrier(threads + 1)
    failures: list[Any] = []

    def caller(index: int) -> None:
        barrier.wait()
        for version in range(per_thread):
            request = AppendRequest(
                f"{prefix}{index}", [_domain.Credited("w", 1, version)], version
            )
            [result] = store.append_batches([request])
            if isinstance(result, BaseException):
                failures.append(result)

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    assert not failures, failures[:3]
    return threads * per_thread / elapsed


def _alternating(store: EventStore, per_thread: int, rounds: int) -> tuple[float, float]:
    """Appends/s of one caller and of eight, measured in alternating rounds."""
    totals = {1: [0, 0.0], 8: [0, 0.0]}
    for n in range(rounds):
        for threads in (1, 8):
            count = per_thread * (2 if threads == 1 else threads) // rounds
            each = count // threads
            rate = _concurrent(store, threads, each, f"t{threads}-{n}-")
            totals[threads][0] += threads * each
            totals[threads][1] += threads * each / rate
    return totals[1][0] / totals[1][1], totals[8][0] / totals[8][1]


def _wake_ups(dsn: str, count: int) -> list[float]:
    """Seconds from an append's return to a waiting reader's wake-up (LISTEN/NOTIFY)."""
    writer, reader = EventStore(dsn), EventStore(dsn)
    woke: list[float] = []
    returned: list[float] = []
    ready = threading.Event()
    try:

        def wait_all() -> None:
            position = reader.last_position()
            for _ in range(count):
                ready.set()
                while not reader.wait_for_events(position, 5.0):
                    pass
                woke.append(time.perf_counter())
                position = reader.last_position()

        listener = threading.Thread(target=wait_all)
        listener.start()
        for i in range(count):
            ready.wait()
            ready.clear()
            time.sleep(0.005)  # the reader is in its wait (a pause between appends, not a sync)
            writer.append("n", [_domain.Credited("w", 1, i)])
            returned.append(time.perf_counter())
        listener.join()
    finally:
        writer.close()
        reader.close()
    return [max(0.0, w - r) for w, r in zip(woke, returned, strict=True)]


def _subscriber_wakes(server: Any, base: str, count: int) -> list[float]:
    """Seconds from an append's return (made outside the application, as another host would)
    to a running application's handler holding the event: NOTIFY, through the event bus on
    multiproc and the waker thread in-process."""
    dsn = server.dsn(server.new_schema())
    delays: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        lag_file = Path(scratch) / "lag"
        lag_file.touch()
        os.environ[_domain.LAG_FILE_ENV] = str(lag_file)  # (before the system forks)
        system = _domain.make_app(dsn, handlers=[_domain.LagProbe]).start(base=base)
        try:
            with EventStore(dsn) as outsider:
                for i in range(count + 1):
                    [event] = outsider.append("wake", [_domain.Credited("w", 1, i)], i)
                    returned = time.time()
                    deadline = time.monotonic() + 10
                    while True:
                        lines = lag_file.read_text().split("\n")
                        seen = [ln.split() for ln in lines if ln.startswith(f"{event.position} ")]
                        if seen:
                            break
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"no handler saw position {event.position}")
                        time.sleep(0.0005)
                    if i:  # (the first wakes a subscriber that may still be starting)
                        delays.append(max(0.0, float(seen[0][2]) - returned))
        finally:
            system.stop()
            del os.environ[_domain.LAG_FILE_ENV]
    return delays


def _cross_process(server: Any, per_client: int) -> tuple[float, float]:
    """Commands/s of 8 client processes, and of 1, dispatching credits to 1,000 live wallets of
    a multiproc application on PostgreSQL (its default shards, each group-committing its round)."""
    dsn = server.dsn(server.new_schema())
    live = 1_000
    system = _domain.make_app(dsn).start(base="multiproc", port=_thespian.free_port())
    try:
        check(system.dispatch_many([_domain.OpenWallet(f"live-{i}") for i in range(live)]))
        port = system.settings.admin_port
        one = bench_shards._clients(port, dsn, 1, per_client, False, live)
        eight = bench_shards._clients(port, dsn, 8, per_client, False, live)
    finally:
        system.stop()
    return eight, one


def _p1(server: Any, seconds: float) -> tuple[float, float]:
    """Warm aggregates, one command at a time: Backstage on PostgreSQL (in-process) vs
    eventsourcing 9.5.6's PostgreSQL recorder with its aggregate cache."""
    schema_ours, schema_es = server.new_schema(), server.new_schema()
    wallets = [f"w{i}" for i in range(10)]
    app = _domain.make_app(server.dsn(schema_ours))
    system = app.start(base="simple")
    es = _domain.EsBank(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": "postgres",
            "POSTGRES_HOST": str(server.dir),
            "POSTGRES_PORT": str(server.port),
            "POSTGRES_USER": server.user,
            "POSTGRES_PASSWORD": server.password,
            "POSTGRES_SCHEMA": schema_es,
            "AGGREGATE_CACHE_MAXSIZE": "100000",
        }
    )
    try:
        check(system.dispatch_many([_domain.OpenWallet(w) for w in wallets]))
        es_ids = []
        for _ in wallets:
            wallet = _domain.EsWallet()
            es.save(wallet)
            es_ids.append(wallet.id)
        for es_id in es_ids:
            es.repository.get(es_id)
        turn = {"ours": 0, "es": 0}

        def ours() -> int:
            i = turn["ours"] = turn["ours"] + 1
            system.dispatch(_domain.Credit(wallets[i % len(wallets)], 1))
            return 1

        def eventsourcing() -> int:
            i = turn["es"] = turn["es"] + 1
            wallet = es.repository.get(es_ids[i % len(es_ids)])
            wallet.credit(1)
            es.save(wallet)
            return 1

        measured = rates({"ours": ours, "es": eventsourcing}, seconds)
    finally:
        system.stop()
        es.close()
    return measured["ours"], measured["es"]


def _filled(server: Any, events: int) -> str:
    """A schema holding ``events`` events (100 per stream), written by the server itself."""
    import psycopg

    dsn = server.dsn(server.new_schema())
    EventStore(dsn).close()  # the tables
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (event_id, stream_id, version, type, schema_version, topic, data,"
            " metadata, recorded_at) SELECT 'fill-' || g, 'fill-' || (g / 100), (g %% 100) + 1,"
            ' \'Credited\', 1, \'bench._domain:Credited\', \'{"wallet":"w","amount":1,'
            "\"balance\":1}', '{}', '2026-01-01T00:00:00+00:00' FROM generate_series(0, %s) g",
            (events - 1,),
        )
        conn.execute("VACUUM ANALYZE events")
    return dsn


def _grown(server: Any, small: int, big: int, seconds: float) -> tuple[float, float]:
    """Milliseconds per single-event append with ``big`` events stored, and with ``small``."""
    stores = {"big": EventStore(_filled(server, big)), "small": EventStore(_filled(server, small))}
    try:
        steps = {name: _ours(store, 1, "grown") for name, store in stores.items()}
        measured = rates(steps, seconds, rounds=8)
    finally:
        for store in stores.values():
            store.close()
    return 1000 / measured["big"], 1000 / measured["small"]


def rows(quick: bool = False) -> list[Row]:
    """Every PostgreSQL figure; ``quick`` runs shorter."""
    seconds = 2.0 if quick else 6.0
    server = _server()
    if server is None:
        log.warning("no PostgreSQL binaries: bench_postgres skipped")
        return []
    result: list[Row] = []
    try:
        dsn = server.dsn(server.new_schema())
        with EventStore(dsn) as store:
            for per in (1, 100):
                stream = "single" if per == 1 else "hundred"
                store_dsn = dsn if per == 1 else server.dsn(server.new_schema())
                with EventStore(store_dsn) as each:
                    peers = {
                        "ours": _ours(each, per, stream),
                        "same": _raw_same(server.dsn(server.new_schema()), per),
                        "thin": _raw(server.dsn(server.new_schema()), per),
                    }
                    measured = rates(peers, seconds, rounds=6)
                what = "single-event appends" if per == 1 else "appends of 100 events"
                unit = "appends/s" if per == 1 else "events/s"
                target = "≥ 0.8x" if per == 1 else "≥ 1x"
                result.append(
                    Row(
                        f"PostgreSQL: {what}",
                        measured["ours"],
                        unit,
                        f"raw psycopg, {per} row(s) per commit, same table",
                        measured["same"],
                        target=target,
                    )
                )
                result.append(
                    Row(
                        f"PostgreSQL: {what}",
                        measured["ours"],
                        unit,
                        "raw psycopg, thin table (6 columns, 3 indexes)",
                        measured["thin"],
                        target=target,
                    )
                )
            per_thread = 50 if quick else 200
            # alternating rounds: the commit's cost moves with the machine's load
            one, eight = _alternating(store, per_thread, rounds=4)
            result.append(
                Row(
                    "PostgreSQL: 8 concurrent callers (group commit)",
                    eight,
                    "appends/s",
                    "one caller",
                    one,
                    target="≥ 4x",
                )
            )
        eight, one = _cross_process(server, 100 if quick else 400)
        result.append(
            Row(
                "PostgreSQL: 8 client processes, multiproc application (shards group-commit)",
                eight,
                "commands/s",
                "1 client process",
                one,
                target="≥ 4x",
            )
        )
        waits = _wake_ups(server.dsn(server.new_schema()), 30 if quick else 100)
        result.append(
            Row(
                "PostgreSQL: reader wake-up after an append (NOTIFY), median",
                statistics.median(waits) * 1000,
                "ms",
                target="≤ 5 ms",
                higher_is_better=False,
            )
        )
        for base in ("simple", "multiproc"):
            waits = _subscriber_wakes(server, base, 30 if quick else 100)
            result.append(
                Row(
                    f"PostgreSQL: subscriber wake-up after another host's append ({base} base),"
                    " median",
                    statistics.median(waits) * 1000,
                    "ms",
                    target="≤ 5 ms",
                    higher_is_better=False,
                )
            )
        big = 100_000 if quick else 1_000_000
        with_big, with_small = _grown(server, 10_000, big, seconds)
        result.append(
            Row(
                f"PostgreSQL: cost per append with {big:,} events stored",
                with_big,
                "ms",
                "the same with 10,000 stored",
                with_small,
                target="≤ 1.2x",
                higher_is_better=False,
            )
        )
        ours, theirs = _p1(server, seconds)
        result.append(
            Row(
                "PostgreSQL: P1 warm aggregates, dispatch (simple base)",
                ours,
                "commands/s",
                "eventsourcing 9.5.6 postgres, cache",
                theirs,
                target="≥ 1.3x",
            )
        )
    finally:
        server.remove()
    return result


if __name__ == "__main__":
    main(rows, __doc__)
