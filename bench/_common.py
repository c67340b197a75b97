"""Helpers the benchmark modules share: temporary databases, the raw-SQLite peer, timing loops,
fresh child processes and the description of the machine."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import platform
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from backstage_actors.event import event_topic
from backstage_actors.store._sqlite_schema import SCHEMA

from ._domain import Credited
from ._report import Row

__all__ = [
    "RAW_INSERT",
    "check",
    "event_rows",
    "in_fresh_process",
    "machine",
    "module_rows",
    "rates",
    "raw_connection",
    "run_for",
    "tempdir",
]

T = TypeVar("T")

#: The insert the event store does, for the raw peer (same table, same columns).
RAW_INSERT = (
    "INSERT INTO events (event_id, stream_id, version, type, schema_version, topic, data,"
    " metadata, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
CREDITED_TOPIC = event_topic(Credited)


def check(results: list[Any]) -> int:
    """How many ``dispatch_many`` results there are; RuntimeError if any is an error."""
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} commands failed: {failed[0]!r}")
    return len(results)


@contextmanager
def tempdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="backstage-bench-") as path:
        yield Path(path)


def raw_connection(path: str | Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A plain sqlite3 connection on ``path`` with the event store's tables, WAL, ``synchronous``."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.executescript(SCHEMA)
    return conn


def event_rows(
    stream_id: str, first_version: int, count: int, start_balance: int = 0
) -> list[tuple[Any, ...]]:
    """``count`` serialized ``Credited`` rows of ``stream_id`` (the columns of :data:`RAW_INSERT`)."""
    wallet = stream_id.split("-", 1)[-1]
    stamp = datetime.now(UTC).isoformat()
    return [
        (
            str(uuid.uuid4()),
            stream_id,
            first_version + i,
            "Credited",
            1,
            CREDITED_TOPIC,
            json.dumps({"wallet_id": wallet, "amount": 1, "balance": start_balance + i + 1}),
            "{}",
            stamp,
        )
        for i in range(count)
    ]


def run_for(step: Callable[[], int], seconds: float, limit: int) -> tuple[int, float]:
    """Call ``step()`` (it returns how many items it did) until ``seconds`` passed or ``limit``
    items were done; returns ``(items, elapsed seconds)``."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while done < limit:
        done += step()
        if time.perf_counter() >= deadline:
            break
    return done, time.perf_counter() - start


def rates(
    steps: dict[str, Callable[[], int]],
    seconds: float,
    limit: int = 10**9,
    rounds: int = 2,
) -> dict[str, float]:
    """Items per second of each step (as for :func:`run_for`; steps keep their own state), each
    given ``seconds`` and ``limit`` items in all, in alternating rounds so that a noisy neighbour
    slows them alike."""
    items = dict.fromkeys(steps, 0)
    elapsed = dict.fromkeys(steps, 0.0)
    for _ in range(rounds):
        for name, step in steps.items():
            done, took = run_for(step, seconds / rounds, max(1, limit // rounds))
            items[name] += done
            elapsed[name] += took
    return {name: items[name] / elapsed[name] for name in steps}


def in_fresh_process(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a new interpreter (spawned, so nothing of this process leaks in)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def module_rows(module: str, quick: bool, level: int) -> list[Row]:
    """``bench.<module>.rows(quick)``, logging at ``level`` (the body of a fresh process)."""
    import importlib

    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    return list(importlib.import_module(f"bench.{module}").rows(quick))


def machine() -> str:
    """One line: cores, CPU, Python, SQLite, Thespian and eventsourcing versions."""
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, Thespian {version('thespian')}, "
        f"eventsourcing {version('eventsourcing')}, {platform.system()} {platform.release()}"
    )
