"""Shard benchmarks (issue 15): P1c, P7 in-process; P7b, P8, P6b on a multiproc daemon.

- P1c: the first command to each of N new aggregates, in-process, one thread, against
  eventsourcing's create + save; and the rate of new aggregates with 10,000 live against 100.
- P7: 8 threads dispatching to 1,000 live aggregates through one running system, against one
  thread, and against eventsourcing driven by 8 threads. Its ceiling: the same with no flush at
  all (``synchronous="NORMAL"``), and what one hand-off between two threads costs here.
- P7b: 8 client processes against a daemon on live aggregates, against one client.
- P8: 8 client processes, every command to a new aggregate, against eventsourcing's create +
  save in-process in one thread.
- P6b: the RSS of every process of the daemon after commands to 100,000 aggregates, against
  after 1,000.

Run as ``python -m bench.bench_shards [--quick]``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from backstage_actors import _thespian
from backstage_actors._daemon import log_defs

from . import _domain, _shard_clients
from ._common import check, tempdir
from ._report import Row, main

__all__ = ["rows"]

log = logging.getLogger(__name__)


def _es_create(directory: Path, count: int) -> float:
    """eventsourcing 9.5.6: create + save of ``count`` new aggregates, one thread; per second."""
    es = _domain.es_app(str(directory / "es-new.db"), cache=True)
    try:
        start = time.perf_counter()
        for _ in range(count):
            es.save(_domain.EsWallet())
        return count / (time.perf_counter() - start)
    finally:
        es.close()


def _p1c(directory: Path, count: int) -> list[Row]:
    """Backstage's and eventsourcing's new aggregates in alternating chunks (the machine's pace
    drifts); the rate and CPU time of new aggregates with 100 live and with ``count`` more."""
    system = _domain.make_app(str(directory / "p1c.db")).start(base="simple")
    es = _domain.es_app(str(directory / "es-new.db"), cache=True)
    try:
        for i in range(100):
            system.dispatch(_domain.OpenWallet(f"warm-{i}"))
        sample, chunks = 500, 10

        def new(prefix: str, n: int) -> tuple[float, float]:
            """Seconds of wall time and of CPU time for ``n`` new aggregates."""
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(n):
                system.dispatch(_domain.OpenWallet(f"{prefix}-{i}"))
            return time.perf_counter() - start, time.process_time() - cpu

        def es_new(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                es.save(_domain.EsWallet())
            return time.perf_counter() - start

        at_100 = new("a", sample)
        ours = theirs = 0.0
        for chunk in range(chunks):
            ours += new(f"b{chunk}", count // chunks)[0]
            theirs += es_new(count // chunks)
        at_many = new("c", sample)
        live = sum(s["live"] for s in _shards(system))
    finally:
        system.stop()
        es.close()
    done = count // chunks * chunks
    return [
        Row(
            f"P1c first command to {done:,} new aggregates, in-process",
            done / ours,
            "commands/s",
            "eventsourcing 9.5.6 create + save, alternating chunks",
            done / theirs,
            target="≥ 1.5x",
        ),
        Row(
            f"P1c new aggregates with {live:,} live",
            sample / at_many[0],
            "commands/s",
            "the same with 100 live",
            sample / at_100[0],
            target="≥ 0.9x",
        ),
        Row(
            f"P1c CPU per new aggregate with {live:,} live",
            at_many[1] / sample * 1e6,
            "µs",
            "the same with 100 live",
            at_100[1] / sample * 1e6,
            higher_is_better=False,
        ),
    ]


def _live_at_once(directory: Path, many: int, count: int) -> list[Row]:
    """New aggregates with 100 live and with ``many`` more, in two processes at the same time
    (so both meet the same machine state): the rate and CPU time of each."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [
        context.Process(
            target=_shard_clients.new_aggregates,
            args=(str(directory), live, count, barrier, results),
        )
        for live in (0, many)
    ]
    for process in processes:
        process.start()
    try:
        found = {
            live: (rate, cpu) for live, rate, cpu in (results.get(timeout=600) for _ in processes)
        }
    finally:
        for process in processes:
            process.join(60)
            if process.is_alive():
                process.kill()
    for live, (rate, _) in found.items():
        if isinstance(rate, str):
            raise RuntimeError(f"the process with {live} live failed: {rate}")
    (few_rate, few_cpu), (many_rate, many_cpu) = found[0], found[many]
    return [
        Row(
            f"P1c new aggregates with {many + 100:,} live, at the same time as",
            many_rate,
            "commands/s",
            "the same with 100 live",
            few_rate,
            target="≥ 0.9x",
        ),
        Row(
            f"P1c CPU per new aggregate with {many + 100:,} live, at the same time as",
            many_cpu,
            "µs",
            "the same with 100 live",
            few_cpu,
            higher_is_better=False,
        ),
    ]


def _shards(system: Any) -> list[dict[str, Any]]:
    router = next(c for c in system.tree()["children"] if c["name"] == "router")
    return list(router["children"])


def _threads(count: int, seconds: float, step: Any) -> float:
    done = [0] * count
    stop = time.monotonic() + seconds

    def run(index: int) -> None:
        i = 0
        while time.monotonic() < stop:
            step(index, i)
            i += 1
        done[index] = i

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - start)


def _one_and_eight(database: Path, aggregates: int, seconds: float, **options: Any) -> list[float]:
    """Commands/s of 1 thread, then of 8 threads, dispatching to ``aggregates`` live wallets."""
    system = _domain.make_app(str(database), **options).start(base="simple")
    try:
        check(system.dispatch_many([_domain.OpenWallet(f"w{i}") for i in range(aggregates)]))

        def dispatch(index: int, i: int) -> None:
            system.dispatch(_domain.Credit(f"w{(index * 131 + i) % aggregates}", 1))

        return [_threads(count, seconds, dispatch) for count in (1, 8)]
    finally:
        system.stop()


def _handoff(rounds: int = 20_000) -> float:
    """µs for one thread to wake another and be woken back (two locks, a ping-pong): what each
    hand-off between callers costs on this machine, whatever the work."""
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()

    def other() -> None:
        for _ in range(rounds):
            ping.acquire()
            pong.release()

    thread = threading.Thread(target=other)
    thread.start()
    start = time.perf_counter()
    for _ in range(rounds):
        ping.release()
        pong.acquire()
    elapsed = time.perf_counter() - start
    thread.join()
    return elapsed / rounds * 1e6


def _p7(directory: Path, aggregates: int, seconds: float) -> list[Row]:
    one, eight = _one_and_eight(directory / "p7.db", aggregates, seconds)
    # The ceiling: the same callers with no flush at all (synchronous=NORMAL: nothing to share),
    # so what is left is the Python work, one interpreter lock and the hand-offs between threads.
    one_unflushed, eight_unflushed = _one_and_eight(
        directory / "p7-normal.db", aggregates, seconds, synchronous="NORMAL"
    )
    handoff = _handoff()
    es = _domain.es_app(str(directory / "es-p7.db"), cache=True)
    try:
        ids = []
        for _ in range(aggregates):
            wallet = _domain.EsWallet()
            es.save(wallet)
            ids.append(wallet.id)
        lock = threading.Lock()  # its cache and its connection: one command at a time is safe

        def es_command(index: int, i: int) -> None:
            with lock:
                wallet = es.repository.get(ids[(index * 131 + i) % aggregates])
                wallet.credit(1)
                es.save(wallet)

        es_eight = _threads(8, seconds, es_command)
    finally:
        es.close()
    return [
        Row(
            "P7 dispatch, in-process, 8 threads",
            eight,
            "commands/s",
            "1 thread",
            one,
            target="≥ 4x",
        ),
        Row(
            "P7 dispatch, in-process, 8 threads",
            eight,
            "commands/s",
            "eventsourcing 9.5.6, 8 threads",
            es_eight,
            target="≥ 5x",
        ),
        Row(
            "P7's ceiling: 8 threads with no flush at all (synchronous=NORMAL)",
            eight_unflushed,
            "commands/s",
            "1 thread, flushed (P7's peer)",
            one,
        ),
        Row(
            "P7's ceiling: 8 threads with no flush at all (synchronous=NORMAL)",
            eight_unflushed,
            "commands/s",
            "1 thread with no flush",
            one_unflushed,
        ),
        Row(
            "a thread hand-off here (lock ping-pong round trip, 2 wake-ups)",
            handoff,
            "µs",
            "P1's dispatch, flushed (1 / P7's 1-thread rate)",
            1e6 / one,
            higher_is_better=False,
        ),
    ]


def _clients(port: int, database: str, clients: int, count: int, new: bool, live: int) -> float:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(clients)
    results = context.Queue()
    processes = [
        context.Process(
            target=_shard_clients.command_client,
            args=(port, database, index, count, new, live, barrier, results),
        )
        for index in range(clients)
    ]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=600) for _ in processes]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    spans = []
    for index, report in reports:
        if isinstance(report, str):
            raise RuntimeError(f"client {index} failed: {report}")
        spans.append(report)
    total = sum(count for count, _, _ in spans)
    return total / (max(end for *_, end in spans) - min(start for _, start, _ in spans))


def _daemon(directory: Path, name: str) -> tuple[Any, int, str]:
    database = str(directory / f"{name}.db")
    port = _thespian.free_port()
    system = _domain.make_app(database).start(
        base="multiproc", port=port, log_defs=log_defs(str(directory / f"{name}.log"))
    )
    return system, port, database


def _family_rss(system: Any) -> float:
    """MiB of RSS of the daemon's processes (the admin and everything under it)."""
    pid = _shards(system)[0]["pid"]
    admin = psutil.Process(pid)
    while True:  # up to the admin: the last Python process before this one or init
        parent = admin.parent()
        if parent is None or parent.pid in (1, os.getpid()):
            break
        if "python" not in " ".join(parent.cmdline()):
            break
        admin = parent
    family = [admin, *admin.children(recursive=True)]
    return sum(p.memory_info().rss for p in family) / 2**20


def _multiproc(directory: Path, quick: bool) -> list[Row]:
    rows = _daemon_rates(directory, 200 if quick else 1_000)
    rows.append(_p6b(directory, 20_000 if quick else 100_000))
    return rows


def _daemon_rates(directory: Path, per_client: int) -> list[Row]:
    """P7b and P8 on one daemon."""
    live = 1_000
    system, port, database = _daemon(directory, "p7b")
    try:
        check(system.dispatch_many([_domain.OpenWallet(f"live-{i}") for i in range(live)]))
        one = _clients(port, database, 1, per_client, False, live)
        eight = _clients(port, database, 8, per_client, False, live)
        new = _clients(port, database, 8, per_client, True, live)
    finally:
        system.stop()
    es = _es_create(directory, 2_000)
    return [
        Row(
            "P7b dispatch, daemon, 8 client processes, live",
            eight,
            "commands/s",
            "1 client",
            one,
            target="≥ 3x",
        ),
        Row(
            "P8 dispatch, daemon, 8 client processes, each to a new aggregate",
            new,
            "commands/s",
            "eventsourcing 9.5.6 create + save, in-process, 1 thread",
            es,
            target="≥ 1x",
        ),
    ]


def _p6b(directory: Path, many: int) -> Row:
    system, _, _ = _daemon(directory, "p6b")
    try:
        check(system.dispatch_many([_domain.OpenWallet(f"m{i}") for i in range(1_000)]))
        few_rss = _family_rss(system)
        for first in range(1_000, many, 1_000):
            check(
                system.dispatch_many(
                    [_domain.OpenWallet(f"m{i}") for i in range(first, first + 1_000)], timeout=600
                )
            )
        many_rss = _family_rss(system)
    finally:
        system.stop()
    return Row(
        f"P6b RSS of the daemon's processes after commands to {many:,} aggregates",
        many_rss,
        "MiB",
        "the same after 1,000",
        few_rss,
        target="≤ 1.5x",
        higher_is_better=False,
    )


def rows(quick: bool = False) -> list[Row]:
    with tempdir() as directory:
        found = _p1c(directory, 2_000 if quick else 10_000)
        found += _live_at_once(directory, 10_000, 1_000 if quick else 3_000)
        found += _p7(directory, 1_000, 3.0 if quick else 10.0)
        found += _multiproc(directory, quick)
    return found


if __name__ == "__main__":
    main(rows, __doc__)
