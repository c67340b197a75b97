"""Command dispatch benchmarks (P1, P1b, P2, P3, P6), each against eventsourcing 9.5.6, raw
sqlite3 or raw Thespian on the same machine, in the same run.

Both sides use SQLite files in a temporary directory, WAL, ``synchronous=FULL``, and a wallet
aggregate that records one event per command (``bench._domain``).
Run as ``python -m bench.bench_dispatch [--quick]``. ``BENCH_P6_AGGREGATES=N`` changes P6's size
(default 100,000; 10,000 with ``--quick``): past 10,000 live aggregates every new one passivates
another, which is what P6 is about and what takes most of the full run's time.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import statistics
import time
from pathlib import Path
from typing import Any

from backstage_actors import EventStore, _thespian
from backstage_actors._daemon import log_defs

from . import _children, _domain
from ._common import RAW_INSERT, check, event_rows, in_fresh_process, rates, raw_connection, tempdir
from ._report import Row, main

__all__ = ["rows"]

log = logging.getLogger(__name__)


# -- P1 / P1b: in-process, one aggregate actor per wallet ----------------------------------------


def _in_process(directory: Path, aggregates: int, seconds: float) -> list[Row]:
    """P1 and P1b: each loop runs ``seconds`` in all, in alternating rounds."""
    wallets = [f"w{i}" for i in range(aggregates)]
    es = _domain.es_app(str(directory / "es-p1.db"), cache=True)
    raw = raw_connection(directory / "raw-p1.db")
    store = EventStore(str(directory / "store-p1.db"))
    app = _domain.make_app(str(directory / "p1.db"))
    system = app.start(base="simple")
    try:
        check(system.dispatch_many([_domain.OpenWallet(w) for w in wallets]))
        es_ids = []
        for _ in wallets:
            wallet = _domain.EsWallet()
            es.save(wallet)
            es_ids.append(wallet.id)
        for es_id in es_ids:  # warm the aggregate cache, as Backstage's actors are warm
            es.repository.get(es_id)
        turn = {"dispatch": 0, "es": 0, "raw": 0, "store": 0}
        versions = [1] * aggregates
        stored = [0] * aggregates  # the versions of store_alone's streams

        def dispatch() -> int:
            i = turn["dispatch"] = turn["dispatch"] + 1
            system.dispatch(_domain.Credit(wallets[i % aggregates], 1))
            return 1

        def dispatch_many() -> int:
            return check(system.dispatch_many([_domain.Credit(w, 1) for w in wallets]))

        def eventsourcing() -> int:
            i = turn["es"] = turn["es"] + 1
            wallet = es.repository.get(es_ids[i % aggregates])
            wallet.credit(1)
            es.save(wallet)
            return 1

        def store_alone() -> int:
            # What a dispatch costs at least: its aggregate's append, without any actor.
            i = turn["store"] = turn["store"] + 1
            index = i % aggregates
            event = _domain.Credited(wallets[index], 1, i)
            store.append(f"Wallet-{wallets[index]}", [event], expected_version=stored[index])
            stored[index] += 1
            return 1

        def raw_sqlite() -> int:
            i = turn["raw"] = turn["raw"] + 1
            index = i % aggregates
            versions[index] += 1
            [row] = event_rows(f"Wallet-{wallets[index]}", versions[index], 1)
            raw.execute("BEGIN")
            raw.execute(RAW_INSERT, row)
            raw.execute("COMMIT")
            return 1

        found = rates(
            {
                "dispatch": dispatch,
                "dispatch_many": dispatch_many,
                "es": eventsourcing,
                "raw": raw_sqlite,
                "store": store_alone,
            },
            seconds,
            rounds=2,
        )
    finally:
        system.stop()
        es.close()
        raw.close()
        store.close()
    es_peer = "eventsourcing 9.5.6 get + command + save, cache on"
    return [
        Row(
            f"P1 dispatch, in-process, {aggregates:,} aggregates",
            found["dispatch"],
            "commands/s",
            es_peer,
            found["es"],
            target="≥ 1.3x",
        ),
        Row(
            f"P1 dispatch, in-process, {aggregates:,} aggregates",
            found["dispatch"],
            "commands/s",
            "raw sqlite3, 1 event per transaction",
            found["raw"],
            target="≥ 0.6x",
        ),
        Row(
            "P1's ceiling: EventStore.append alone, 1 event per commit, no actors",
            found["store"],
            "appends/s",
            es_peer,
            found["es"],
        ),
        Row(
            f"P1b dispatch_many, in-process, {aggregates:,} aggregates",
            found["dispatch_many"],
            "commands/s",
            es_peer,
            found["es"],
            target="≥ 10x",
        ),
    ]


# -- P2: multiproc, 8 client processes -----------------------------------------------------------


def _span(reports: list[_children.ClientReport], phase: str) -> float:
    spans = [entry for report in reports for entry in report if entry[0] == phase]
    total = sum(count for _, count, _, _ in spans)
    return total / (max(end for *_, end in spans) - min(start for _, _, start, _ in spans))


def _multiproc(directory: Path, clients: int, aggregates: int, per_client: int) -> Row:
    database = str(directory / "p2.db")
    port = _thespian.free_port()
    app = _domain.make_app(database)
    system = app.start(base="multiproc", port=port, log_defs=log_defs(str(directory / "p2.log")))
    context = multiprocessing.get_context("spawn")
    processes: list[Any] = []
    try:
        start = time.perf_counter()
        check(system.dispatch_many([_domain.OpenWallet(f"p{i}") for i in range(aggregates)]))
        log.info("P2: %d aggregate processes up in %.1fs", aggregates, time.perf_counter() - start)
        system.actor_system.createActor(_domain.Echo, globalName=_children.ECHO_NAME)
        barrier = context.Barrier(clients)
        results = context.Queue()
        for index in range(clients):
            process = context.Process(
                target=_children.dispatch_client,
                args=(port, database, index, per_client, aggregates, barrier, results),
            )
            process.start()
            processes.append(process)
        reports: list[_children.ClientReport] = []
        for _ in range(clients):
            try:
                index, report = results.get(timeout=600)
            except queue.Empty:
                raise RuntimeError("a P2 client did not report within 600s") from None
            if isinstance(report, str):
                raise RuntimeError(f"P2 client {index} failed: {report}")
            reports.append(report)
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()
        system.stop()
    return Row(
        f"P2 dispatch, multiproc, {clients} client processes, {aggregates} aggregates",
        _span(reports, "dispatch"),
        "commands/s",
        f"raw Thespian ask to an echo actor, same {clients} clients",
        _span(reports, "echo"),
        target="≥ 0.5x",
    )


# -- P3: rebuilding one aggregate from 10,000 events ---------------------------------------------


def _rebuild(directory: Path, events: int, samples: int) -> list[Row]:
    database = str(directory / "p3.db")
    plain = [f"big{k}" for k in range(samples)]
    snapped = [f"snap{k}" for k in range(samples)]
    with EventStore(database) as store:
        for prefix, wallets in (("Wallet", plain), ("SnapshotWallet", snapped)):
            for wallet in wallets:
                for version in range(0, events, 1000):
                    credits = [
                        _domain.Credited(wallet, 1, version + i + 1)
                        for i in range(min(1000, events - version))
                    ]
                    store.append(f"{prefix}-{wallet}", credits, expected_version=version)
    app = _domain.make_app(database)
    with app.start(base="simple") as system:  # one command each: the actor saves a snapshot
        for wallet in snapped:
            system.dispatch(_domain.SnapCredit(wallet, 1))
    cold: list[float] = []
    from_snapshot: list[float] = []
    with app.start(base="simple") as system:  # a fresh system: every aggregate starts cold
        system.dispatch(_domain.OpenWallet("warm-up"))
        for wallet, snap in zip(plain, snapped, strict=True):
            start = time.perf_counter()
            result = system.dispatch(_domain.Peek(wallet))
            cold.append((time.perf_counter() - start) * 1000)
            assert result.version == events, result
            start = time.perf_counter()
            result = system.dispatch(_domain.SnapPeek(snap))
            from_snapshot.append((time.perf_counter() - start) * 1000)
            assert result.version == events + 1, result
    es_cold, es_snapshot = _es_rebuild(directory, events, samples)
    median = statistics.median
    return [
        Row(
            f"P3 rebuild one aggregate of {events:,} events (cold actor: start, rebuild, answer)",
            median(cold),
            "ms",
            "eventsourcing 9.5.6 repository.get, no cache",
            median(es_cold),
            target="≤ 0.25x",
            higher_is_better=False,
        ),
        Row(
            f"P3 the same from a snapshot (snapshot_every={_domain.SnapshotWallet.snapshot_every})",
            median(from_snapshot),
            "ms",
            "eventsourcing 9.5.6 get from a snapshot",
            median(es_snapshot),
            target="≤ 2 ms",
            higher_is_better=False,
        ),
    ]


def _es_rebuild(directory: Path, events: int, samples: int) -> tuple[list[float], list[float]]:
    path = str(directory / "es-p3.db")
    writer = _domain.es_app(path, cache=False, snapshots=True)
    plain, snapped = [], []
    try:
        for ids in (plain, snapped):
            for _ in range(samples):
                wallet = _domain.EsWallet()
                for _ in range(events - 1):
                    wallet.credit(1)
                writer.save(wallet)
                ids.append(wallet.id)
        for es_id in snapped:
            writer.take_snapshot(es_id)
    finally:
        writer.close()
    reader = _domain.es_app(path, cache=False, snapshots=True)
    cold, from_snapshot = [], []
    try:
        reader.repository.get(plain[0], version=1)  # warm up: connection and classes
        for es_id, snap_id in zip(plain, snapped, strict=True):
            start = time.perf_counter()
            wallet = reader.repository.get(es_id)
            cold.append((time.perf_counter() - start) * 1000)
            assert wallet.version == events, wallet.version
            start = time.perf_counter()
            wallet = reader.repository.get(snap_id)
            from_snapshot.append((time.perf_counter() - start) * 1000)
            assert wallet.version == events, wallet.version
    finally:
        reader.close()
    return cold, from_snapshot


# -- P6: memory after many aggregates ------------------------------------------------------------


def _memory(directory: Path, few: int, many: int) -> Row:
    small, small_seconds = in_fresh_process(
        _children.rss_after_aggregates, str(directory / "p6-few.db"), few
    )
    big, big_seconds = in_fresh_process(
        _children.rss_after_aggregates, str(directory / "p6-many.db"), many
    )
    log.info("P6: %d aggregates in %.1fs, %d in %.1fs", few, small_seconds, many, big_seconds)
    return Row(
        f"P6 peak RSS after commands to {many:,} aggregates (in-process)",
        big,
        "MiB",
        f"the same after {few:,} aggregates",
        small,
        target="≤ 1.5x",
        higher_is_better=False,
    )


def rows(quick: bool = False) -> list[Row]:
    """Every dispatch figure; ``quick`` runs smaller sizes for less time."""
    result: list[Row] = []
    with tempdir() as directory:
        result += _in_process(directory, 1000, 1.5 if quick else 5.0)
        # Few hot aggregates, and a hundred. 1,500 commands per client: with 500, a client's
        # first command to each of a hundred aggregates (its lane's connection) weighed ~20 %.
        result.append(_multiproc(directory, 8, 10, 100 if quick else 1500))
        result.append(_multiproc(directory, 8, 100, 100 if quick else 1500))
        result += _rebuild(directory, 10_000, 3 if quick else 7)
        many = int(os.environ.get("BENCH_P6_AGGREGATES", 10_000 if quick else 100_000))
        result.append(_memory(directory, 1000, many))
    return result


if __name__ == "__main__":
    main(rows, __doc__)
