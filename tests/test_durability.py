"""Durable commits shared between processes: ``EventStore(shared_flush=True)``.

The store then runs SQLite at ``synchronous=NORMAL`` and flushes the WAL itself after its turn;
the counters in the lock file say which commits a flush has covered.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest

from backstage_actors.errors import StorageError
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


_OTHER_CONNECTION = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("INSERT INTO checkpoints VALUES ('other', 1, 'now')")
conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
conn.close()
"""


@pytest.mark.process
def test_a_store_flushes_the_wal_sqlite_writes_without_asking_its_attributes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush asks nothing of the WAL's attributes (on ext4 a stat between two writes made every
    fdatasync ~60 µs slower, a seventh of a dispatch), and another process's connection coming,
    checkpointing the log to nothing and going leaves the file the store flushes in place: SQLite
    deletes a WAL only when its last connection closes or a connection leaves WAL mode."""
    database = tmp_path / "events.db"
    store = EventStore(str(database), shared_flush=True)
    recorder: Any = store.recorder
    try:
        store.append("s-0", [Flushed("w", 0)])
        wal = recorder._wal.fd
        assert wal is not None
        subprocess.run([sys.executable, "-c", _OTHER_CONNECTION, str(database)], check=True)
        asked: list[Any] = []  # stats, and the directory fsync of a reopened log
        for name in ("fstat", "stat", "fsync"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, lambda *a, real=real: asked.append(a) or real(*a))
        for seq in range(1, 6):
            store.append(f"s-{seq}", [Flushed("w", seq)])
        monkeypatch.undo()
        assert asked == []
        assert recorder._wal.fd == wal
        kept, current = os.fstat(wal), os.stat(f"{database}-wal")
        assert (kept.st_ino, kept.st_nlink) == (current.st_ino, 1)
        assert kept.st_size > 0  # the appends after the truncation went to this file
    finally:
        store.close()
    assert counters(database) == (6, 6)


def _synced_is_sqlites(store: EventStore, wal_path: Path) -> bool:
    """Whether the file the store's flushes sync is the WAL at ``wal_path``."""
    synced, current = os.fstat(store.recorder._wal.fd), os.stat(wal_path)  # type: ignore[attr-defined]
    return (synced.st_dev, synced.st_ino, synced.st_nlink) == (current.st_dev, current.st_ino, 1)


def test_a_store_whose_connection_leaves_wal_mode_and_comes_back_flushes_the_new_log(
    tmp_path: Path,
) -> None:
    """Leaving WAL mode deletes the log and going back makes a new one (SQLite's way to change
    the page size): the next flush syncs the new file, not the deleted one it had open."""
    database = tmp_path / "events.db"
    with EventStore(str(database), shared_flush=True) as store:
        store.append("s-0", [Flushed("w", 0)])
        first = os.fstat(store.recorder._wal.fd).st_ino  # type: ignore[attr-defined]
        for statement in ("PRAGMA journal_mode=DELETE", "VACUUM", "PRAGMA journal_mode=WAL"):
            store.conn.execute(statement)
        store.append("s-1", [Flushed("w", 1)])
        assert _synced_is_sqlites(store, Path(f"{database}-wal"))
        assert os.fstat(store.recorder._wal.fd).st_ino != first  # type: ignore[attr-defined]


def test_a_store_whose_directory_is_renamed_keeps_flushing_its_log(tmp_path: Path) -> None:
    """The log renamed with its directory is still the file SQLite writes: the flush goes on
    syncing it (it is not looked for again at the old path, where nothing is)."""
    (tmp_path / "before").mkdir()
    with EventStore(str(tmp_path / "before" / "events.db"), shared_flush=True) as store:
        store.append("s-0", [Flushed("w", 0)])
        (tmp_path / "before").rename(tmp_path / "after")
        store.append("s-1", [Flushed("w", 1)])
        assert _synced_is_sqlites(store, tmp_path / "after" / "events.db-wal")
    assert counters(tmp_path / "after" / "events.db") == (2, 2)


def test_a_store_opened_through_a_symlink_flushes_the_wal_beside_the_real_file(
    tmp_path: Path,
) -> None:
    """SQLite keeps the WAL beside the database's real file; a file at the link's ``-wal`` path
    (a stray one here) is not what gets flushed."""
    (tmp_path / "real").mkdir()
    real, link = tmp_path / "real" / "events.db", tmp_path / "events.db"
    EventStore(str(real)).close()
    link.symlink_to(real)
    Path(f"{link}-wal").write_bytes(b"")
    with EventStore(str(link), shared_flush=True) as store:
        store.append("s-0", [Flushed("w", 0)])
        assert _synced_is_sqlites(store, Path(f"{real}-wal"))


def test_a_database_opened_through_a_symlink_and_by_its_path_has_one_lock_file(
    tmp_path: Path,
) -> None:
    """Both take turns on, and count their commits in, the lock file beside the real file."""
    (tmp_path / "real").mkdir()
    real, link = tmp_path / "real" / "events.db", tmp_path / "events.db"
    EventStore(str(real)).close()
    link.symlink_to(real)
    with (
        EventStore(str(real), shared_flush=True) as by_path,
        EventStore(str(link), shared_flush=True) as by_link,
    ):
        by_path.append("s-0", [Flushed("w", 0)])
        by_link.append("s-1", [Flushed("w", 1)])
    assert counters(real) == (2, 2)
    assert not Path(f"{link}.lock").exists()


def test_a_caller_whose_commit_a_flush_covered_does_not_wait_for_the_next_one(
    tmp_path: Path,
) -> None:
    """In-process callers wait for the flush of their commit (``flush_through``): one covered by
    the flush that just ended returns at once, even if another caller starts the next flush
    first (it used to queue behind that flush on a lock)."""
    store = EventStore(str(tmp_path / "events.db"), shared_flush=True)
    recorder: Any = store.recorder
    recorder.defer_flush = True
    store.append("s-1", [Flushed("w", 1)])
    first = recorder.deferred
    began = [threading.Event(), threading.Event()]
    go_on = [threading.Event(), threading.Event()]
    syncs = iter(range(2))
    real_sync = recorder._wal

    def held_sync() -> None:  # the disk, held until the test lets it go on
        n = next(syncs)
        began[n].set()
        assert go_on[n].wait(10)
        real_sync()

    recorder._wal = held_sync
    covered = threading.Event()
    flushing = threading.Thread(target=recorder.flush_through, args=(first,))
    flushing.start()
    assert began[0].wait(5)  # the flush of the first commit is on its way to the disk
    store.append("s-2", [Flushed("w", 2)])
    second = recorder.deferred
    later = threading.Thread(target=recorder.flush_through, args=(second,))
    later.start()
    waiter = threading.Thread(target=lambda: (recorder.flush_through(first), covered.set()))
    waiter.start()
    go_on[0].set()
    assert began[1].wait(5)  # the second commit's flush has begun, and is held
    try:
        assert covered.wait(5)  # the first commit's second caller did not wait for it
    finally:
        go_on[1].set()
        for thread in (flushing, later, waiter):
            thread.join(10)
        recorder._wal = real_sync
        store.close()
    assert counters(tmp_path / "events.db") == (2, 2)


def test_closing_the_store_waits_for_a_running_flush_and_flushes_for_waiting_callers(
    tmp_path: Path,
) -> None:
    """The application stopping closes the store while callers may still wait for the flush of
    their commits: the close waits for a running fdatasync (its descriptor is never closed under
    it), makes a last flush, and a caller that comes after it finds its commit flushed (it got an
    AssertionError from the closed lock file before)."""
    store = EventStore(str(tmp_path / "events.db"), shared_flush=True)
    recorder: Any = store.recorder
    recorder.defer_flush = True
    store.append("s-1", [Flushed("w", 1)])
    first = recorder.deferred
    began, go_on = threading.Event(), threading.Event()
    real_sync = recorder._wal

    class HeldSync:  # the disk, held until the test lets it go on
        def __call__(self) -> None:
            began.set()
            assert go_on.wait(10)
            real_sync()

        def close(self) -> None:
            real_sync.close()

    recorder._wal = HeldSync()
    flushing = threading.Thread(target=recorder.flush_through, args=(first,))
    flushing.start()
    assert began.wait(5)
    store.append("s-2", [Flushed("w", 2)])
    second = recorder.deferred
    closing = threading.Thread(target=store.close)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive()  # it waits for the flush under way
    go_on.set()
    flushing.join(10)
    closing.join(10)
    assert not closing.is_alive()
    recorder.flush_through(second)  # flushed by the close: returns, no error
    assert recorder._turns.known_flushed >= second


class FailsOnce:
    """The WAL's fdatasync failing once with EIO, then succeeding: what Linux does after a
    write-back error (it reports the error once and may have dropped the pages). A real failing
    disk cannot be had in a test; the store's own sync runs otherwise."""

    def __init__(self, sync: Any) -> None:
        self.sync = sync
        self.failed = False

    def __call__(self) -> None:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EIO, "Input/output error")
        self.sync()

    def close(self) -> None:
        self.sync.close()


def test_after_a_failed_flush_no_later_commit_is_acknowledged(tmp_path: Path) -> None:
    """A failed fdatasync may have lost pages that the next, successful one does not cover:
    from then on the store acknowledges nothing committed after its last good flush."""
    store = EventStore(str(tmp_path / "events.db"), shared_flush=True)
    try:
        store.append("s-1", [Flushed("w", 1)])  # flushed: acknowledged
        recorder: Any = store.recorder
        recorder._wal = FailsOnce(recorder._wal)
        with pytest.raises(StorageError, match="cannot flush"):
            store.append("s-2", [Flushed("w", 2)])
        with pytest.raises(StorageError, match="reopen the store"):
            store.append("s-3", [Flushed("w", 3)])  # its fdatasync would succeed: refused
        with pytest.raises(StorageError, match="reopen the store"):
            recorder.flush_through(recorder._turns.known_flushed + 1)
        assert [e.stream_id for e in store.read_all()][:1] == ["s-1"]
    finally:
        store.close()
    with EventStore(str(tmp_path / "events.db"), shared_flush=True) as reopened:
        reopened.append("s-4", [Flushed("w", 4)])  # a new store flushes again
