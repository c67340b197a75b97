"""``backstage export`` and the history verbs of the command line, on a real SQLite store (no
daemon needed: they read the store; ``--app`` names the application)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import EventStore
from backstage_actors._export import export_events, last_exported_position
from backstage_actors.cli import run
from backstage_actors.errors import BackstageError
from backstage_actors.history import event_record
from backstage_actors.store.records import EventQuery
from examples.bank import make_app as make_bank
from examples.bank.domain import CloseAccount, Deposit, OpenAccount, Withdraw
from examples.bank.transfers import TransferMoney

from .store_conformance import ConfDeposited


def _fill(path: Path, count: int) -> EventStore:
    store = EventStore(str(path))
    for start in range(0, count, 1000):
        events = [ConfDeposited(str(n), n) for n in range(start, start + 1000)]
        store.append(f"acct-{start // 1000}", events, metadata={"user": f"u{(start // 1000) % 2}"})
    return store


def _raw(store: EventStore) -> list[dict[str, Any]]:
    return [event_record(tuple(row)) for page in store.recorder.export("events") for row in page]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_export_of_100000_events_reads_back_identical(tmp_path: Path) -> None:
    with _fill(tmp_path / "big.db", 100_000) as store:
        result = export_events(store, str(tmp_path / "all.jsonl"))
        assert (result.count, result.last_position) == (100_000, 100_000)
        assert _lines(tmp_path / "all.jsonl") == _raw(store)
        assert (tmp_path / "all.jsonl").stat().st_mode & 0o077 == 0


def test_a_parquet_export_reads_back_identical(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow (the extra `export`) is missing")
    with _fill(tmp_path / "p.db", 5000) as store:
        export_events(store, str(tmp_path / "all.parquet"), "parquet")
        table = pq.read_table(tmp_path / "all.parquet").to_pylist()
        expected = _raw(store)
    assert len(table) == len(expected) == 5000
    for got, want in zip(table, expected, strict=True):
        assert got["recorded_at"].isoformat() == want["recorded_at"]
        assert json.loads(got["data"]) == want["data"]
        assert json.loads(got["metadata"]) == want["metadata"]
        assert {k: got[k] for k in ("position", "event_id", "stream_id", "version", "type")} == {
            k: want[k] for k in ("position", "event_id", "stream_id", "version", "type")
        }


class _Interrupted(Exception):
    pass


def test_a_resumed_export_neither_duplicates_nor_skips(tmp_path: Path) -> None:
    out = tmp_path / "some.jsonl"
    with _fill(tmp_path / "r.db", 12_000) as store:

        def stop_midway(position: int, total: int) -> None:
            if 0 < position < total:
                raise _Interrupted

        with pytest.raises(_Interrupted):
            export_events(store, str(out), progress=stop_midway)
        with out.open("a") as file:  # and the crash cut the next line in half
            file.write('{"position": 5001, "event_id": "trunc')
        assert last_exported_position(str(out)) == 5000
        query = EventQuery(metadata=(("user", "u0"),))
        # The same filter on both runs; every user-u0 event exactly once, in order.
        out.unlink()
        with pytest.raises(_Interrupted):
            export_events(store, str(out), query=query, progress=stop_midway)
        result = export_events(store, str(out), query=query, resume=True)
        assert result.resumed_after == 9000  # the first page: 5,000 events of u0
        assert [e["position"] for e in _lines(out)] == [
            e["position"] for e in _raw(store) if e["metadata"]["user"] == "u0"
        ]
        whole = tmp_path / "whole.jsonl"
        with pytest.raises(_Interrupted):
            export_events(store, str(whole), progress=stop_midway)
        with whole.open("a") as file:
            file.write('{"position": 5001, "event_id": "trunc')
        export_events(store, str(whole), resume=True)
        assert _lines(whole) == _raw(store)


def test_bad_export_input_is_refused(tmp_path: Path) -> None:
    with EventStore(str(tmp_path / "e.db")) as store:
        with pytest.raises(
            BackstageError, match="unknown export format 'csv': use jsonl or parquet"
        ):
            export_events(store, str(tmp_path / "x"), "csv")
        with pytest.raises(BackstageError, match="--resume works with jsonl only"):
            export_events(store, str(tmp_path / "x"), "parquet", resume=True)


# -- the command line -------------------------------------------------------------------------


@pytest.fixture
def bank_db(tmp_path: Path) -> str:
    """A bank database with a refunded transfer and a refused withdrawal by ada."""
    path = str(tmp_path / "bank.db")
    with make_bank(path).start(base="simple") as system:
        system.dispatch(OpenAccount("alice", "Alice"), metadata={"user": "ada"})
        system.dispatch(Deposit("alice", 100), metadata={"user": "ada"})
        system.dispatch(OpenAccount("bob", "Bob"), metadata={"user": "bo"})
        system.dispatch(CloseAccount("bob"), metadata={"user": "bo"})
        system.dispatch(TransferMoney("t-2", "alice", "bob", 30), metadata={"user": "ada"})
        with pytest.raises(BackstageError):
            system.dispatch(Withdraw("bob", 5), metadata={"user": "ada", "correlation_id": "r-9"})
        system.settle()
    return path


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code = run([*args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = run(list(args))
    return code, capsys.readouterr().err.strip()


def test_cli_state_diff_trace_events_export(
    bank_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = ["--app", "examples.bank:app", "--db", bank_db]
    state = cli_json(capsys, "state", "Account-alice", "--version", "2", *app)
    assert state["state"] == {"owner": "Alice", "balance": 100, "status": "open"}
    assert cli_json(capsys, "state", "Account-alice", *app)["version"] == 4
    changes = cli_json(capsys, "diff", "Account-alice", "--from", "2", "--to", "3", *app)
    assert changes["changed"] == {"balance": [100, 70]}
    assert changes["events"][0]["type"] == "MoneyWithdrawn"
    tree = cli_json(capsys, "trace", "r-9", "--db", bank_db)
    assert tree["roots"][0]["outcome"] == "rejected"
    by_ada = cli_json(capsys, "events", "--where", "user=ada", "--db", bank_db)
    assert [e["type"] for e in by_ada] == ["AccountOpened", "MoneyDeposited", "TransferRequested"]
    assert (
        cli_json(capsys, "events", "--where", "user=ada", "--since", "2999-01-01", "--db", bank_db)
        == []
    )
    saga = cli_json(
        capsys,
        "events",
        "--where",
        "process_manager=transfers",
        "--types",
        "TransferRefunded",
        "--db",
        bank_db,
    )
    assert [e["stream_id"] for e in saga] == ["Account-alice"]
    out = tmp_path / "alice.jsonl"
    done = cli_json(capsys, "export", str(out), "--stream", "Account-a", "--db", bank_db)
    assert done["events"] == 4 == len(_lines(out))
    assert run(["trace", "r-9", "--db", bank_db]) == 0
    text = capsys.readouterr().out
    assert (
        "Withdraw -> Account-bob [user ada]  rejected: Withdraw rejected: ValueError: account bob is closed"
        in text
    )


def test_cli_bad_history_input_is_one_clear_error(
    bank_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = ["--app", "examples.bank:app", "--db", bank_db]
    cases = [
        (["state", "Account-nobody", *app], "unknown stream 'Account-nobody'"),
        (
            ["state", "Account-alice", "--version", "9", *app],
            "has no version 9: it is at version 4",
        ),
        (["state", "Account-alice", "--at", "2001-01-01", *app], "had no event yet at 2001-01-01"),
        (["state", "Account-alice", "--at", "yesterday", *app], "bad time 'yesterday'"),
        (["state", "Nothing-1", *app], "'Nothing-1' is no stream of bank's aggregates"),
        (
            ["export", str(tmp_path / "x"), "--format", "csv", "--db", bank_db],
            "unknown export format 'csv'",
        ),
        (["events", "--where", "user", "--db", bank_db], "--where 'user': use FIELD=VALUE"),
        (["trace", "nothing", "--db", bank_db], "no event, command or request has the id"),
    ]
    for args, message in cases:
        code, err = cli_error(capsys, *args)
        assert code == 2, (args, err)
        assert message in err, (args, err)
        assert len(err.splitlines()) == 1
