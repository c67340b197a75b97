"""Client processes of ``bench_shards`` (importable by module path: they are spawned)."""

from __future__ import annotations

import os
import time
from typing import Any

from . import _domain

__all__ = ["command_client", "new_aggregates"]


def command_client(
    port: int,
    database: str,
    index: int,
    count: int,
    new: bool,
    live: int,
    barrier: Any,
    results: Any,
) -> None:
    """Attach, then dispatch ``count`` commands once every client is ready: each to a new wallet
    (``new``), or credits to ``live`` wallets opened before. Reports ``(count, start, end)``."""
    try:
        system = _domain.make_app(database).attach(port=port, database=database)
        system.dispatch(_domain.Credit(f"live-{index % max(1, live)}", 1), timeout=30.0)  # warm
        barrier.wait(120)
        start = time.time()
        for i in range(count):
            if new:
                system.dispatch(_domain.OpenWallet(f"new-{index}-{i}"), timeout=30.0)
            else:
                system.dispatch(_domain.Credit(f"live-{(index * 7 + i) % live}", 1), timeout=30.0)
        results.put((index, (count, start, time.time())))
    except BaseException as exc:
        barrier.abort()
        results.put((index, f"{type(exc).__name__}: {exc}"))
        raise


def new_aggregates(directory: str, live: int, count: int, barrier: Any, results: Any) -> None:
    """In-process, in a process of its own: open ``live`` wallets, then (once every such process
    is ready) ``count`` new ones, one after another. Reports ``(live, per second, CPU µs each)``."""
    system = _domain.make_app(os.path.join(directory, f"live-{live}.db")).start(base="simple")
    try:
        for first in range(0, live, 1_000):
            system.dispatch_many(
                [_domain.OpenWallet(f"pre-{i}") for i in range(first, first + 1_000)]
            )
        for i in range(100):
            system.dispatch(_domain.OpenWallet(f"warm-{i}"))
        barrier.wait(300)
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(count):
            system.dispatch(_domain.OpenWallet(f"new-{i}"))
        elapsed, used = time.perf_counter() - start, time.process_time() - cpu
        results.put((live, count / elapsed, used / count * 1e6))
    except BaseException as exc:
        barrier.abort()
        results.put((live, f"{type(exc).__name__}: {exc}", 0.0))
        raise
    finally:
        system.stop()
