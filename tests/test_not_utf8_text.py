"""Text that is not UTF-8 in a SQLite store: SQLite keeps whatever bytes another program writes
as TEXT, and Python's sqlite3 then fails the whole fetch (``OperationalError: Could not decode
to UTF-8 column 'type'``), naming no row. Each reader now names the row (table, key, column):
``backstage events`` skips it with a warning, ``export`` and ``copy`` stop with one error naming
every such row (exit 2, as for broken JSON), ``state``/``diff`` fail naming it; in a running
application the command on that stream fails with that error, a handler parks the event (a dead
letter) and goes on, and the other streams are served."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import AggregateFailed
from backstage_actors._copy import copy_store
from backstage_actors._export import export_events
from backstage_actors.errors import StoredEventError
from backstage_actors.store import EventStore

from .conftest import wait_until
from .not_utf8_domain import Nu8Jot, Nu8Jotted, make_app

BACKSTAGE = str(Path(sys.executable).with_name("backstage"))


def _sql(where: str | Path, *statements: str) -> None:
    """Write into the database as another program would (text of any bytes: CAST(x'..' AS TEXT))."""
    with contextlib.closing(sqlite3.connect(where)) as db, db:
        for statement in statements:
            db.execute(statement)


def _store_with_bad_text(where: Path, count: int = 12) -> None:
    """``count`` events in two pads; position 5's type and position 9's data not UTF-8."""
    with EventStore(str(where)) as store:
        for n in range(1, count + 1):
            store.append(f"Nu8Pad-{n % 2}", [Nu8Jotted(str(n % 2), f"t{n}")])
    _sql(
        where,
        "UPDATE events SET type = CAST(x'4e7538ff' AS TEXT) WHERE position = 5",
        "UPDATE events SET data = CAST(x'7b2270616421223a2022ff227d' AS TEXT) WHERE position = 9",
    )


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BACKSTAGE, *args], capture_output=True, text=True, timeout=60)


def test_events_skips_text_that_is_not_utf8_naming_the_row(tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    _store_with_bad_text(db)
    for extra in ([], ["Nu8Pad-1"], ["--types", "Nu8Jotted"]):
        done = _run("events", *extra, "--db", str(db), "--json")
        assert done.returncode == 0, done.stderr
        shown = [e["position"] for e in json.loads(done.stdout)]
        warnings = done.stderr.splitlines()
        if extra == ["--types", "Nu8Jotted"]:  # (position 5's type is not Nu8Jotted)
            assert shown == [1, 2, 3, 4, 6, 7, 8, 10, 11, 12]
            assert len(warnings) == 1
        else:
            assert 5 not in shown and 9 not in shown and len(warnings) == 2, done.stderr
            assert warnings[0] == (
                "warning: skipped the event at position 5: events (position 5, stream_id"
                " 'Nu8Pad-1', version 3): its type is not UTF-8 (b'Nu8\\xff')"
            )
        assert warnings[-1].startswith("warning: skipped the event at position 9: events")
        assert "its data is not UTF-8" in warnings[-1]


def test_an_export_stops_at_text_that_is_not_utf8_naming_every_row(tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    _store_with_bad_text(db)
    out = tmp_path / "out.jsonl"
    with EventStore(str(db)) as store, pytest.raises(StoredEventError) as caught:
        export_events(store, str(out))
    message = str(caught.value)
    assert caught.value.position == 5
    assert "position 5 (stream 'Nu8Pad-1', Nu8\\xff): its type is not UTF-8" in message
    assert "position 9 (stream 'Nu8Pad-1', Nu8Jotted): its data is not UTF-8" in message
    lines = out.read_text().splitlines()
    assert [json.loads(line)["position"] for line in lines] == [1, 2, 3, 4]

    done = _run("export", str(tmp_path / "cli.jsonl"), "--db", str(db))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "its type is not UTF-8" in done.stderr and "ends with the event before position 5" in (
        done.stderr
    )

    # Mended, the export goes on after what the file holds.
    _sql(db, "UPDATE events SET type = 'Nu8Jotted' WHERE position = 5")
    _sql(db, """UPDATE events SET data = '{"pad_id": "1", "text": "t9"}' WHERE position = 9""")
    with EventStore(str(db)) as store:
        export_events(store, str(out), resume=True)
    assert [json.loads(line)["position"] for line in out.read_text().splitlines()] == list(
        range(1, 13)
    )


def test_a_copy_names_text_that_is_not_utf8_in_any_table(tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    _store_with_bad_text(db)
    with EventStore(str(db)) as store:
        store.save_checkpoint("nu8-projection", 3)
        store.save_snapshot("Nu8Pad-0", 2, {"texts": ["t2", "t4"]})
    _sql(
        db,
        "UPDATE checkpoints SET name = CAST(x'6e7538ff' AS TEXT)",
        "UPDATE snapshot_history SET data = CAST(x'7bff7d' AS TEXT)",
    )
    with pytest.raises(StoredEventError) as caught:
        copy_store(str(db), str(tmp_path / "copy.db"))
    message = str(caught.value)
    assert "position 5 (stream 'Nu8Pad-1', Nu8\\xff): its type is not UTF-8" in message
    assert "position 9 (stream 'Nu8Pad-1', Nu8Jotted): its data is not UTF-8" in message
    assert "checkpoints (name 'nu8\\\\xff'): its name is not UTF-8 (b'nu8\\xff')" in message
    assert "snapshot_history (stream_id 'Nu8Pad-0', version 2): its data is not UTF-8" in message
    assert "4 stored rows are broken" in message and "nothing was copied" in message
    with EventStore(str(tmp_path / "copy.db")) as copy:
        assert copy.last_position() == 0

    done = _run("copy", str(db), str(tmp_path / "cli.db"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "checkpoints (name 'nu8\\\\xff'): its name is not UTF-8" in done.stderr


def test_state_and_diff_fail_naming_the_row(tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    _store_with_bad_text(db)
    app = ["--app", "tests.not_utf8_domain:app", "--db", str(db)]
    for verb in (["state", "Nu8Pad-1"], ["diff", "Nu8Pad-1", "--from", "1", "--to", "4"]):
        done = _run(*verb, *app)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "events (position 5, stream_id 'Nu8Pad-1', version 3): its type is not UTF-8" in (
            done.stderr
        )
    done = _run("state", "Nu8Pad-0", *app)  # the other stream reads as ever
    assert done.returncode == 0 and "at version 6" in done.stdout, done.stderr


def test_unreadable_bookkeeping_rows_are_named_and_a_snapshot_is_passed_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "bad.db"
    with EventStore(str(db)) as store:
        store.append("Nu8Pad-s", [Nu8Jotted("s", "one"), Nu8Jotted("s", "two")])
        store.save_snapshot("Nu8Pad-s", 2, {"texts": ["one", "two"]})
        [recorded] = store.append("Nu8Pad-d", [Nu8Jotted("d", "x")])
        store.park("nu8-counter", recorded, "ValueError", "no", "", 1)
        store.save_process("Nu8Saga", "p-1", {"step": 1})
        store.record_rejection("Nu8Pad-r", {"command_id": "nu8-c"}, ValueError("no"))
    _sql(
        db,
        "UPDATE snapshots SET data = CAST(x'7bff7d' AS TEXT)",
        "UPDATE dead_letters SET error = CAST(x'6e6fff' AS TEXT)",
        "UPDATE process_managers SET state = CAST(x'7bff7d' AS TEXT)",
        "UPDATE rejections SET error = CAST(x'6e6fff' AS TEXT)",
    )
    with EventStore(str(db)) as store:
        with caplog.at_level(logging.WARNING, logger="backstage_actors.store"):
            assert store.load_snapshot("Nu8Pad-s") is None  # a lost shortcut, as broken JSON
        assert "the snapshot of 'Nu8Pad-s', which cannot be read: snapshots (version 2): its" in (
            caplog.text
        )
        assert [e.data.text for e in store.read_stream("Nu8Pad-s")] == ["one", "two"]
        with caplog.at_level(logging.WARNING, logger="backstage_actors.store"):
            # Listed (and retryable: its id and position are intact), the text escaped.
            [letter] = store.dead_letters("nu8-counter")
        assert (letter.id, letter.position, letter.error) == (1, 3, "no\\xff")
        assert "dead_letters (id 1, subscriber 'nu8-counter', position 3): its error is not" in (
            caplog.text
        )
        with pytest.raises(StoredEventError, match=r"its state is not UTF-8"):
            store.load_process("Nu8Saga", "p-1")
        with pytest.raises(StoredEventError) as caught:  # (what trace reads)
            store.recorder.rejections("command_id", "nu8-c")
        assert str(caught.value) == (
            "rejections (id 1, command_id 'nu8-c', stream_id 'Nu8Pad-r'): its error is not UTF-8"
            " (b'no\\xff')"
        )


@pytest.mark.process
def test_a_running_app_fails_that_stream_parks_the_event_and_serves_the_rest(
    start_app: Any, tmp_path: Path
) -> None:
    database = tmp_path / "nu8.db"
    system = start_app(make_app(), database=str(database))
    for text in ("a0", "a1", "a2"):
        system.dispatch(Nu8Jot("a", text))
    system.dispatch(Nu8Jot("b", "b0"))
    system.stop()
    # Another program appends an event whose type is not UTF-8 to pad a (position 5).
    _sql(
        database,
        "INSERT INTO events (event_id, stream_id, version, type, schema_version, topic, data,"
        " metadata, recorded_at) SELECT 'nu8-bad', stream_id, 4, CAST(x'ff' AS TEXT),"
        " schema_version, topic, data, metadata, recorded_at FROM events WHERE position = 3",
    )
    system = start_app(make_app(), database=str(database))
    with pytest.raises(AggregateFailed) as caught:
        system.dispatch(Nu8Jot("a", "more"))
    assert (
        "events (position 5, stream_id 'Nu8Pad-a', version 4): its type is not UTF-8 (b'\\xff')"
        in str(caught.value)
    )
    assert "the event at version 1" not in str(caught.value)  # (the row names itself: 4)
    assert system.dispatch(Nu8Jot("b", "b1")).version == 2  # the other stream is served
    letters = wait_until(lambda: system.store.dead_letters("nu8-counter"), what="a dead letter")
    assert [(d.position, d.error_type) for d in letters] == [(5, "StoredEventError")]
    assert "its type is not UTF-8" in letters[0].error
    # ... and the handler went on past it.
    wait_until(
        lambda: system.store.checkpoint("nu8-counter") == system.store.last_position(),
        what="the handler past the parked event",
    )
    with pytest.raises(AggregateFailed, match="not UTF-8"):  # (again: no crash loop)
        system.dispatch(Nu8Jot("a", "again"))


def test_a_copy_finds_text_that_is_not_utf8_pages_into_a_table(tmp_path: Path) -> None:
    """Past the rows already copied (the table is read again as bytes from where it failed):
    every row named once, none copied."""
    db = tmp_path / "many.db"
    with EventStore(str(db)) as store:
        store.append("Nu8Pad-m", [Nu8Jotted("m", "one")])
        with store.transaction():
            for n in range(2500):
                store.save_checkpoint(f"nu8-{n:04}", n)
    _sql(
        db,
        "UPDATE checkpoints SET name = name || CAST(x'ff' AS TEXT)"
        " WHERE name IN ('nu8-1500', 'nu8-2499')",
    )
    with pytest.raises(StoredEventError) as caught:
        copy_store(str(db), str(tmp_path / "copy.db"))
    message = str(caught.value)
    assert message.count("its name is not UTF-8") == 2, message
    assert "2 stored rows are broken: checkpoints (name 'nu8-1500\\\\xff')" in message
    with EventStore(str(tmp_path / "copy.db")) as copy:
        assert copy.checkpoint("nu8-0000") == 0 and copy.last_position() == 0
