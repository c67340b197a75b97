"""Durable commits shared between processes: ``EventStore(shared_flush=True)``.

The store then runs SQLite at ``synchronous=NORMAL`` and flushes the WAL itself after its turn;
the counters in the lock file say which commits a flush has covered.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import attrs
import pytest

from backstage_actors.store import EventStore
from backstage_actors.store._durability import Turns

from .conftest import run_at_once
from .store_conformance import EventStoreConformance


@attrs.frozen
class Flushed:
    writer: str
    seq: int


class TestSharedFlushEventStore(EventStoreConformance):
    """The whole store contract holds with flushes outside the write lock."""

    def make_store(self, path: Path, *, page_size: int | None = None) -> EventStore:
        return EventStore(str(path), page_size=page_size or 1000, shared_flush=True)


def counters(database: Path) -> tuple[int, int]:
    """(committed, flushed) as the lock file beside ``database`` holds them."""
    committed, flushed = struct.unpack(
        "<QQ", (database.parent / f"{database.name}.lock").read_bytes()[:16]
    )
    return committed, flushed


def in_turn(turns: Turns) -> int:
    """Count a commit during a turn, as the store does; its number."""
    turns.begin_turn()
    try:
        return turns.committed()
    finally:
        turns.end_turn()


def test_a_flush_covers_every_commit_written_before_it(tmp_path: Path) -> None:
    turns = Turns(str(tmp_path / "db"))
    turns.open()
    syncs: list[int] = []

    def sync() -> None:
        syncs.append(counters(tmp_path / "db")[0])  # what was committed when the flush began

    first, second = in_turn(turns), in_turn(turns)
    # The first committer flushes both; the second finds its commit covered.
    assert turns.flush(first, sync) is True
    assert turns.flush(second, sync) is False
    third = in_turn(turns)
    assert turns.flush(third, sync) is True  # committed after that flush began: flushed again
    assert syncs == [2, 3]
    assert counters(tmp_path / "db") == (3, 3)
    turns.close()


@pytest.mark.parametrize("shared", [True, False])
def test_every_acknowledged_append_is_flushed(tmp_path: Path, shared: bool) -> None:
    database = tmp_path / "events.db"
    with EventStore(str(database), shared_flush=shared) as store:
        for seq in range(3):
            store.append(f"s-{seq}", [Flushed("w", seq)])
        synchronous = store.conn.execute("PRAGMA synchronous").fetchone()[0]
    if shared:
        assert synchronous == 1  # NORMAL: the store flushes, after its turn
        assert counters(database) == (3, 3)
    else:
        assert synchronous == 2  # FULL: SQLite flushes inside COMMIT
        assert counters(database) == (0, 0)


def shared_writer(path: str, writer: str, count: int, barrier: Any, results: Any) -> None:
    try:
        with EventStore(path, shared_flush=True) as store:
            barrier.wait(timeout=60)
            for seq in range(count):
                store.append(f"{writer}-{seq % 10}", [Flushed(writer, seq)])
        results.put((writer, None))
    except BaseException as exc:
        results.put((writer, f"{type(exc).__name__}: {exc}"))


@pytest.mark.process
def test_processes_appending_at_once_share_flushes_and_lose_nothing(tmp_path: Path) -> None:
    database = tmp_path / "events.db"
    EventStore(str(database)).close()
    per_writer = 150
    reports = run_at_once(shared_writer, [(str(database), n, per_writer) for n in ("a", "b", "c")])

    assert [error for _, error in reports] == [None, None, None]
    # Every commit counted, and a flush that began after it covered it.
    assert counters(database) == (3 * per_writer, 3 * per_writer)
    with EventStore(str(database)) as store:
        events = list(store.read_all())
        for name in ("a", "b", "c"):
            assert [e.data.seq for e in events if e.data.writer == name] == list(range(per_writer))
