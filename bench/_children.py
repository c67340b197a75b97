"""Code that runs in child processes the benchmarks spawn (it must be importable by module path)."""

from __future__ import annotations

import resource
import time
from typing import Any

from . import _domain
from ._common import check

__all__ = ["ClientReport", "dispatch_client", "rss_after_aggregates", "shared_flush_appender"]

ECHO_NAME = "bench-echo"

#: ``(phase, commands, start, end)`` per phase, epoch seconds: the parent merges the clients' spans.
ClientReport = list[tuple[str, int, float, float]]


def dispatch_client(
    port: int, database: str, index: int, count: int, aggregates: int, barrier: Any, results: Any
) -> None:
    """One client of P2: attach, ask the echo actor ``count`` times, then dispatch ``count``
    commands to ``aggregates`` wallets; each phase starts when every client is ready."""
    from backstage_actors import _thespian

    report: ClientReport = []
    try:
        actor_system = _thespian.attach(port)
        echo = actor_system.createActor(_domain.Echo, globalName=ECHO_NAME)
        system = _domain.make_app(database).attach(actor_system, database=database)
        for i in range(3):  # warm up: connections, the router's address
            actor_system.ask(echo, i, 10.0)
        system.dispatch(_domain.Credit(f"p{index % aggregates}", 1), timeout=30.0)
        barrier.wait(120)
        start = time.time()
        for i in range(count):
            reply = actor_system.ask(echo, i, 10.0)
            if reply != i:
                raise RuntimeError(f"echo answered {reply!r} to {i}")
        report.append(("echo", count, start, time.time()))
        barrier.wait(120)
        start = time.time()
        for i in range(count):
            system.dispatch(_domain.Credit(f"p{(index * 7 + i) % aggregates}", 1), timeout=30.0)
        report.append(("dispatch", count, start, time.time()))
    except BaseException as exc:
        barrier.abort()
        results.put((index, f"{type(exc).__name__}: {exc}"))
        raise
    # Never shut the attached actor system down: that would stop the benchmark's system.
    results.put((index, report))


def rss_after_aggregates(database: str, aggregates: int, batch: int = 1_000) -> tuple[float, float]:
    """Peak RSS (MiB) of a fresh process after one command to each of ``aggregates`` wallets
    (in-process), and the seconds it took."""
    app = _domain.make_app(database)
    start = time.perf_counter()
    with app.start(base="simple") as system:
        for first in range(0, aggregates, batch):
            commands = [
                _domain.OpenWallet(f"m{i}") for i in range(first, min(aggregates, first + batch))
            ]
            check(system.dispatch_many(commands, timeout=600))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak, time.perf_counter() - start


def shared_flush_appender(
    path: str, shared: bool, writer: int, count: int, barrier: Any, results: Any
) -> None:
    """Append ``count`` single-event commits to ``path`` once every appender is ready; report
    ``(start, end)`` in epoch seconds."""
    from backstage_actors import EventStore

    with EventStore(path, shared_flush=shared) as store:
        barrier.wait(120)
        start = time.time()
        for i in range(count):
            store.append(f"flush-{writer}-{i % 50}", [_domain.Credited("w", 1, i)])
        results.put((start, time.time()))
