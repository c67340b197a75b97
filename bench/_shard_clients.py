"""Client processes of ``bench_shards`` (importable by module path: they are spawned)."""

from __future__ import annotations

import time
from typing import Any

from . import _domain

__all__ = ["command_client"]


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
