"""Rows whose stored ``data`` or ``metadata`` is not valid JSON (written into the database by hand,
not by Backstage): ``backstage export`` and ``backstage copy`` stop with an error naming each such
event's position and stream, instead of writing an invalid JSON line (export) or failing on an
unnamed row (copy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backstage_actors._copy import copy_store
from backstage_actors._export import export_events
from backstage_actors.errors import StoredEventError
from backstage_actors.store import EventStore
from backstage_actors.store.recorder import TABLES
from backstage_actors.store.records import EventQuery

from .store_conformance import ConfDeposited

BACKSTAGE = str(Path(sys.executable).with_name("backstage"))


def _store_with_broken_rows(where: str, count: int = 12) -> None:
    """``count`` events in two streams; position 5's data and position 9's metadata broken
    by hand."""
    with EventStore(where) as store:
        for n in range(1, count + 1):
            store.append(f"acct-{n % 2}", [ConfDeposited(f"a{n}", n)], metadata={"n": n})
    _mangle(where, 'UPDATE events SET data = \'{"account": "a5", \' WHERE position = 5')
    _mangle(where, "UPDATE events SET metadata = 'n=9' WHERE position = 9")


def _mangle(where: str, sql: str) -> None:
    with EventStore(where) as store:
        if where.startswith("postgresql://"):
            store.handle.execute(sql)
        else:
            store.recorder.conn.execute(sql)  # type: ignore[attr-defined]
            store.recorder.conn.commit()  # type: ignore[attr-defined]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_export_stops_at_a_row_whose_stored_json_is_broken(tmp_path: Path) -> None:
    source = str(tmp_path / "hand.db")
    _store_with_broken_rows(source)
    out = tmp_path / "out.jsonl"
    with EventStore(source) as store, pytest.raises(StoredEventError) as caught:
        export_events(store, str(out))
    message = str(caught.value)
    assert caught.value.position == 5
    assert "position 5 (stream 'acct-1', ConfDeposited): its data is not valid JSON" in message
    assert "position 9 (stream 'acct-1', ConfDeposited): its metadata is not valid JSON" in message
    # Every line written is JSON: the events before the first broken one, and no more.
    assert [e["position"] for e in _lines(out)] == [1, 2, 3, 4]

    # Mended, the export goes on after what the file holds.
    _mangle(
        source, 'UPDATE events SET data = \'{"account": "a5", "amount": 5}\' WHERE position = 5'
    )
    _mangle(source, "UPDATE events SET metadata = '{\"n\": 9}' WHERE position = 9")
    with EventStore(source) as store:
        export_events(store, str(out), resume=True)
    assert [e["position"] for e in _lines(out)] == list(range(1, 13))


def test_the_cli_export_of_a_broken_row_is_one_clear_error(tmp_path: Path) -> None:
    source = str(tmp_path / "hand.db")
    _store_with_broken_rows(source)
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [BACKSTAGE, "export", str(out), "--db", source], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "position 5 (stream 'acct-1'" in done.stderr
    assert f"{out} ends with the event before position 5" in done.stderr
    assert all(isinstance(line, dict) for line in _lines(out))


def test_a_parquet_export_of_a_broken_row_leaves_no_file(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow.parquet", reason="pyarrow (the extra `export`) is missing")
    source = str(tmp_path / "hand.db")
    _store_with_broken_rows(source)
    out = tmp_path / "out.parquet"
    with EventStore(source) as store, pytest.raises(StoredEventError, match="nothing was written"):
        export_events(store, str(out), "parquet")
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith("out.")]


def test_a_broken_row_far_into_a_store_is_found(tmp_path: Path) -> None:
    """Past the first page (5,000 events), and with a filter: only matching rows count."""
    source = str(tmp_path / "deep.db")
    with EventStore(source) as store:
        for start in range(0, 12_000, 1000):
            events = [ConfDeposited(str(n), n) for n in range(start, start + 1000)]
            store.append(f"acct-{start // 1000}", events, metadata={"user": f"u{start % 2000}"})
    _mangle(source, "UPDATE events SET data = 'oops' WHERE position IN (11500, 11501)")
    _mangle(source, "UPDATE events SET data = 'oops' WHERE position = 10500")  # (user u0)
    out = tmp_path / "deep.jsonl"
    with EventStore(source) as store:
        with pytest.raises(StoredEventError, match=r"3 events is broken: position 10500 "):
            export_events(store, str(out))
        assert len(_lines(out)) == 10_499
        only = EventQuery(metadata=(("user", "u1000"),))
        with pytest.raises(StoredEventError, match=r"2 events is broken: position 11500 "):
            export_events(store, str(out), query=only)
        assert len(_lines(out)) == 5 * 1000 + 499


def test_a_postgres_export_stops_at_a_row_whose_data_is_broken(pg_dsn: str, tmp_path: Path) -> None:
    """PostgreSQL's columns are text: data can hold anything (metadata is held to JSON by the
    index on its correlation id)."""
    with EventStore(pg_dsn) as store:
        for n in range(1, 7):
            store.append("acct-1", [ConfDeposited(f"a{n}", n)], metadata={"n": n})
    _mangle(pg_dsn, "UPDATE events SET data = '{oops' WHERE position IN (3, 5)")
    out = tmp_path / "pg.jsonl"
    with EventStore(pg_dsn) as store:
        with pytest.raises(StoredEventError) as caught:
            export_events(store, str(out))
        assert [e["position"] for e in _lines(out)] == [1, 2]
        assert "position 3 (stream 'acct-1', ConfDeposited): its data is not valid JSON" in str(
            caught.value
        )
        assert "position 5 (stream 'acct-1'" in str(caught.value)
        store.append("acct-1", [ConfDeposited("a7", 7)])  # the store goes on serving
    # A copy from it names them too (the failed check ends a savepoint, not the snapshot).
    with pytest.raises(StoredEventError, match=r"position 3 \(stream 'acct-1'.*position 5 "):
        copy_store(pg_dsn, str(tmp_path / "from-pg.db"))


def test_a_copy_names_every_row_whose_stored_json_is_broken(tmp_path: Path, pg_dsn: str) -> None:
    source = str(tmp_path / "hand.db")
    _store_with_broken_rows(source)
    for destination in (pg_dsn, str(tmp_path / "copy.db")):
        with pytest.raises(StoredEventError) as caught:
            copy_store(source, destination)
        message = str(caught.value)
        assert "position 5 (stream 'acct-1', ConfDeposited): its data is not valid JSON" in message
        assert "position 9 (stream 'acct-1', ConfDeposited): its metadata" in message
        with EventStore(destination) as store:  # nothing was copied
            assert all(store.recorder.count(table) == 0 for table in TABLES)
    done = subprocess.run(
        [BACKSTAGE, "copy", source, str(tmp_path / "cli.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "position 9 (stream 'acct-1'" in done.stderr, done.stderr


def test_a_postgres_row_holding_nan_is_broken_too(pg_dsn: str, tmp_path: Path) -> None:
    """NaN and Infinity are not JSON: PostgreSQL's cast refuses them, as SQLite's json_valid
    does. Python's json.loads takes them: the page that failed the cast, parsed again in Python
    to find its broken rows, found none, and the NaN went out as an invalid JSON line."""
    with EventStore(pg_dsn) as store:
        for n in range(1, 5):
            store.append("acct-n", [ConfDeposited(f"a{n}", n)], metadata={"n": n})
    _mangle(
        pg_dsn, 'UPDATE events SET data = \'{"account": "a2", "amount": NaN}\' WHERE position = 2'
    )
    _mangle(pg_dsn, "UPDATE events SET data = '-Infinity' WHERE position = 3")
    out = tmp_path / "nan.jsonl"
    with EventStore(pg_dsn) as store, pytest.raises(StoredEventError) as caught:
        export_events(store, str(out))
    assert "position 2 (stream 'acct-n', ConfDeposited): its data is not valid JSON" in str(
        caught.value
    )
    assert "position 3 (stream 'acct-n'" in str(caught.value)
    assert [e["position"] for e in _lines(out)] == [1]


def test_one_export_names_the_broken_rows_of_every_page(tmp_path: Path) -> None:
    """Not the first page's broken rows only: the user mended those, ran again, and met the
    next page's. Past 100 the rest are counted (the scan holds no more than that in memory)."""
    source = str(tmp_path / "pages.db")
    with EventStore(source) as store:
        for start in range(0, 12_000, 1000):
            events = [ConfDeposited(str(n), n) for n in range(start, start + 1000)]
            store.append(f"acct-{start // 1000}", events)
    # Three pages of 5,000 events: a broken row in each.
    _mangle(source, "UPDATE events SET data = 'oops' WHERE position IN (3, 7000, 11999)")
    out = tmp_path / "pages.jsonl"
    with EventStore(source) as store, pytest.raises(StoredEventError) as caught:
        export_events(store, str(out))
    message = str(caught.value)
    assert "the stored JSON of 3 events is broken: position 3 (stream 'acct-0'" in message
    assert "position 7000 (stream 'acct-6'" in message
    assert "position 11999 (stream 'acct-11'" in message
    assert "more" not in message and caught.value.position == 3
    assert [e["position"] for e in _lines(out)] == [1, 2]  # (--resume goes on from there)

    _mangle(source, "UPDATE events SET metadata = '{' WHERE position BETWEEN 100 AND 219")
    for run in ("export", "copy"):
        with EventStore(source) as store, pytest.raises(StoredEventError) as caught:
            if run == "export":
                export_events(store, str(out))
            else:
                copy_store(source, str(tmp_path / "copy.db"))
        message = str(caught.value)
        assert "the stored JSON of 123 events is broken: position 3 " in message, run
        assert message.count("is not valid JSON") == 100, run
        assert "position 100 (stream 'acct-0', ConfDeposited): its metadata is not" in message
        assert "position 198 " in message and "position 199 " not in message, run
        assert "; and 23 more" in message, run


def _bookkeeping(where: str) -> None:
    """A store with one row in each table, its snapshot, kept snapshot, process state and
    rejection metadata then broken by hand."""
    with EventStore(where) as store:
        store.append("acct-1", [ConfDeposited("a", 1)] * 3, metadata={"n": 1})
        store.save_snapshot("acct-1", 2, {"balance": 2}, 1, "Acct")
        store.save_checkpoint("balances", 3)
        store.save_process("transfers", "t-1", {"step": "withdrawn"})
        store.park("notifier", store.event_at(1), "ValueError", "boom", "tb", 3)  # type: ignore[arg-type]
        store.record_rejection("acct-1", {"command_id": "c-9", "command": "Pay"}, ValueError())
    _mangle(where, "UPDATE snapshots SET data = '{\"balance\": '")
    _mangle(where, "UPDATE snapshot_history SET data = 'NaN'")
    _mangle(where, "UPDATE process_managers SET state = 'step=withdrawn'")
    _mangle(where, "UPDATE rejections SET metadata = '{command_id: c-9}'")


def _nothing_in(where: str) -> bool:
    with EventStore(where) as store:
        return all(store.recorder.count(table) == 0 for table in TABLES)


BOOKKEEPING = (
    "4 stored rows are broken:"
    " snapshots (stream_id 'acct-1', version 2): its data is not valid JSON;"
    " snapshot_history (stream_id 'acct-1', version 2): its data is not valid JSON;"
    " process_managers (name 'transfers', process_id 't-1'): its state is not valid JSON;"
    " rejections (id 1, command_id 'c-9', stream_id 'acct-1'): its metadata is not valid JSON;"
    " mend or delete those rows"
)


def test_a_copy_names_broken_snapshots_process_state_and_rejections(
    tmp_path: Path, pg_server: Any
) -> None:
    """Copied silently before (broken at the destination as at the source), from
    SQLite and from PostgreSQL alike; now named, every one, and nothing is copied."""
    source = str(tmp_path / "kept.db")
    _bookkeeping(source)
    for destination in (str(tmp_path / "copy.db"), pg_server.dsn(pg_server.new_schema())):
        with pytest.raises(StoredEventError) as caught:
            copy_store(source, destination)
        assert BOOKKEEPING in str(caught.value), str(caught.value)
        assert _nothing_in(destination)
    from_pg = pg_server.dsn(pg_server.new_schema())
    _bookkeeping(from_pg)
    with pytest.raises(StoredEventError) as caught:
        copy_store(from_pg, str(tmp_path / "from-pg.db"))
    assert BOOKKEEPING in str(caught.value)
    assert _nothing_in(str(tmp_path / "from-pg.db"))

    # With broken events too: one error for all of them (the events first).
    _mangle(source, "UPDATE events SET data = '{' WHERE position = 2")
    done = subprocess.run(
        [BACKSTAGE, "copy", source, str(tmp_path / "cli.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "5 stored rows are broken: position 2 (stream 'acct-1', ConfDeposited)" in done.stderr
    assert BOOKKEEPING[len("4 stored rows are broken:") :] in done.stderr
    assert _nothing_in(str(tmp_path / "cli.db"))


def test_a_copy_into_postgres_names_a_dead_letter_holding_a_nul(
    tmp_path: Path, pg_dsn: str
) -> None:
    """SQLite's text holds a NUL, PostgreSQL's cannot: the copy failed at the end with
    "PostgreSQL text fields cannot contain NUL (0x00) bytes", naming no row."""
    source = str(tmp_path / "nul.db")
    with EventStore(source) as store:
        [event] = store.append("acct-1", [ConfDeposited("a", 1)])
        store.park("notifier", event, "ValueError", "boom", "tb", 1)
    _mangle(source, "UPDATE dead_letters SET error = 'bo' || char(0) || 'om'")
    with pytest.raises(StoredEventError) as caught:
        copy_store(source, pg_dsn)
    assert (
        "a stored row is broken: dead_letters (id 1, subscriber 'notifier', position 1): its"
        " error holds a NUL character (PostgreSQL's text cannot)"
    ) in str(caught.value)
    assert _nothing_in(pg_dsn)
    copy_store(source, str(tmp_path / "copy.db"))  # SQLite keeps it as it is
    assert _nothing_in(str(tmp_path / "copy.db")) is False


def test_a_copy_into_postgres_names_an_event_holding_a_nul(tmp_path: Path, pg_dsn: str) -> None:
    """The events were left out of the NUL check: a NUL written by hand in an event's text
    (its stream, its type) failed the copy into PostgreSQL at the end, naming no row."""
    source = str(tmp_path / "nul-event.db")
    with EventStore(source) as store:
        for n in range(1, 4):
            store.append("acct-1", [ConfDeposited(f"a{n}", n)])
    _mangle(source, "UPDATE events SET type = 'Conf' || char(0) || 'Deposited' WHERE position = 2")
    _mangle(source, "UPDATE events SET stream_id = 'acct' || char(0) || '3' WHERE position = 3")
    with pytest.raises(StoredEventError) as caught:
        copy_store(source, pg_dsn)
    named = (
        "events (position 2, stream_id 'acct-1', version 2): its type holds a NUL character"
        " (PostgreSQL's text cannot); events (position 3, stream_id 'acct\\x003', version 3):"
        " its stream_id holds a NUL character (PostgreSQL's text cannot)"
    )
    assert f"2 stored rows are broken: {named}" in str(caught.value), str(caught.value)
    assert _nothing_in(pg_dsn)
    copy_store(source, str(tmp_path / "copy.db"))  # SQLite keeps it as it is
    assert _nothing_in(str(tmp_path / "copy.db")) is False
    # With an event whose JSON is broken (a NUL in it, named once), all in one error.
    _mangle(source, "UPDATE events SET data = '{\"a\": \"' || char(0) || '\"}' WHERE position = 1")
    with pytest.raises(StoredEventError) as caught:
        copy_store(source, pg_dsn)
    assert (
        "3 stored rows are broken: position 1 (stream 'acct-1', ConfDeposited): its data is not"
        f" valid JSON; {named}"
    ) in str(caught.value), str(caught.value)
    assert _nothing_in(pg_dsn)
