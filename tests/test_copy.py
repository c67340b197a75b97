"""``backstage copy``: a whole store SQLite -> PostgreSQL -> SQLite (and memory), intact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backstage_actors._copy import copy_store
from backstage_actors.errors import BackstageError
from backstage_actors.store import EventStore
from backstage_actors.store.recorder import TABLES

from .store_conformance import ConfDeposited

BACKSTAGE = str(Path(sys.executable).with_name("backstage"))


def fill(where: str) -> None:
    with EventStore(where) as store:
        for n in range(1, 8):
            store.append(f"acct-{n % 3}", [ConfDeposited(f"a{n}", n)] * 2, metadata={"n": n})
        store.truncate_stream("acct-1", before_version=3)
        store.save_snapshot("acct-0", 2, {"balance": 3}, 2, "Acct")  # kept in its history
        store.save_snapshot("acct-0", 4, {"balance": 12}, 2, "Acct")
        store.save_checkpoint("balances", 9)
        [event] = list(store.read_all(from_position=5, limit=1))
        store.park("notifier", event, "ValueError", "boom", "Traceback...", 3)
        store.park("notifier", store.event_at(6), "KeyError", "x", "tb", 1, status="skipped")  # type: ignore[arg-type]
        store.save_process("transfers", "t-1", {"step": "withdrawn", "amount": 5})
        store.record_rejection("acct-1", {"command_id": "c-9", "command": "Pay"}, ValueError("no"))


def dump(where: str) -> dict[str, list[tuple[Any, ...]]]:
    with EventStore(where) as store:
        return {t: [tuple(r) for rows in store.recorder.export(t) for r in rows] for t in TABLES}


def test_a_store_goes_to_postgres_and_back_intact(tmp_path: Path, pg_dsn: str) -> None:
    source = str(tmp_path / "source.db")
    fill(source)
    before = dump(source)
    assert all(before[t] for t in TABLES)  # every table has something to copy

    seen: list[tuple[int, int]] = []
    copied = copy_store(source, pg_dsn, lambda done, total: seen.append((done, total)))
    assert copied == {t: len(rows) for t, rows in before.items()}
    assert seen[-1] == (sum(copied.values()), sum(copied.values()))
    assert dump(pg_dsn) == before

    back = str(tmp_path / "back.db")
    copy_store(pg_dsn, back)
    assert dump(back) == before
    with EventStore("memory:copy-test"):  # (a store in memory lives while one is open)
        copy_store(back, "memory:copy-test")
        assert dump("memory:copy-test") == before

    assert len(before["snapshot_history"]) == 2
    # The copies go on where the source stopped: positions, versions and ids continue.
    for where in (pg_dsn, back):
        with EventStore(where) as store:
            earlier = store.load_snapshot_at("acct-0", 3)
            assert earlier is not None and (earlier.version, earlier.state) == (2, {"balance": 3})
            [event] = store.append("acct-1", [ConfDeposited("z", 1)], expected_version=6)
            assert event.position == before["events"][-1][0] + 1
            store.park("x", event, "E", "e", "tb", 1)
            assert max(d.id for d in store.dead_letters(None, None)) == 3


def test_a_destination_that_is_not_empty_is_refused(tmp_path: Path, pg_dsn: str) -> None:
    source = str(tmp_path / "source.db")
    fill(source)
    with EventStore(pg_dsn) as store:
        store.save_checkpoint("old", 1)
    with pytest.raises(BackstageError, match=r"is not empty \(1 checkpoints\)"):
        copy_store(source, pg_dsn)
    assert dump(pg_dsn)["events"] == []


def test_the_cli_copies_and_refuses_with_exit_codes(tmp_path: Path, pg_dsn: str) -> None:
    source = str(tmp_path / "source.db")
    fill(source)
    copy = [BACKSTAGE, "copy", source, pg_dsn]
    done = subprocess.run(copy, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"copied {source} to postgresql://postgres:***@")
    assert ": 12 events, 1 streams," in done.stdout  # 14 appended, 2 truncated

    again = subprocess.run(copy, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "is not empty" in again.stderr
    missing = [BACKSTAGE, "copy", str(tmp_path / "nope.db"), str(tmp_path / "x.db")]
    gone = subprocess.run(missing, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 5 and "no such database" in gone.stderr


def test_export_pages_past_a_thousand_rows_in_key_order(pg_dsn: str) -> None:
    # Tables are read 1,000 rows at a time, by key: by position, and snapshot_history by
    # (stream, version), across a stream boundary.
    with EventStore(pg_dsn) as store:
        for n in range(25):
            store.append(f"acct-{n % 2}", [ConfDeposited(f"p{n}-{i}", i) for i in range(100)])
        for version in range(1, 1301):
            store.save_snapshot(f"snap-{version % 2}", version, {"v": version}, 1, "Acct")
    exported = dump(pg_dsn)
    positions = [row[0] for row in exported["events"]]
    assert positions == sorted(set(positions)) and len(positions) == 2500
    keys = [tuple(row[:2]) for row in exported["snapshot_history"]]
    assert keys == sorted(set(keys)) and len(keys) == 1300


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_copy_is_the_store_as_it_stood_when_the_copy_began(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """The application may go on writing to the source: the copy holds none of it. Read table
    by table instead, the events came from before and the checkpoints from after a writer
    moved on, and the copy's subscriber would skip the events it never got."""
    source = str(tmp_path / "live.db") if kind == "sqlite" else request.getfixturevalue("pg_dsn")
    fill(source)
    before = dump(source)
    writes: list[int] = []

    def meanwhile(done: int, total: int) -> None:
        if writes:
            return
        with EventStore(source) as writer:  # another connection, writing as an application would
            recorded = writer.append("acct-9", [ConfDeposited("late", 1)] * 3)
            writer.save_checkpoint("balances", recorded[-1].position)
            writer.save_process("transfers", "t-2", {"step": "begun"})
        writes.append(recorded[-1].position)

    copy = str(tmp_path / "copy.db")
    copied = copy_store(source, copy, meanwhile)
    assert writes, "the writer never ran"
    assert dump(copy) == before
    assert copied == {t: len(rows) for t, rows in before.items()}
    assert len(dump(source)["events"]) == len(before["events"]) + 3  # (the writes did land)
