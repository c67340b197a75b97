"""History as a tool: ``state_of`` at any version or time, ``diff``, the causal ``trace`` of a
request (refused commands included), on both bases and on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from backstage_actors import EventStore
from backstage_actors.errors import CommandRejected
from backstage_actors.history import HistoryError, diff, state_fields, state_of
from examples.bank import make_app as make_bank
from examples.bank.domain import CloseAccount, Deposit, OpenAccount, Withdraw
from examples.bank.transfers import TransferMoney

from .conftest import wait_until
from .history_domain import Credit, Ledger, SnapCredit, SnapLedger, ledger_app, old_row

Start = Any
STORES = ["sqlite", "postgres"]

LEGACY = {1: (5, ["(before notes)"]), 2: (12, ["(before notes)", "(before notes)"])}


def _seed_old_events(database: str, stream_id: str) -> None:
    """Two ``Credited`` events of version 1, as an older release stored them."""
    with EventStore(database) as store, store.transaction():
        store.recorder.import_rows(
            "events", [old_row(1, stream_id, 1, 5), old_row(2, stream_id, 2, 7)]
        )


@pytest.mark.parametrize("cls,command", [(Ledger, Credit), (SnapLedger, SnapCredit)])
def test_state_of_each_version_is_the_live_state_after_it(
    start_app: Start, app_database: str, cls: type, command: type
) -> None:
    _seed_old_events(app_database, f"{cls.__name__}-l1")
    system = start_app(ledger_app(app_database))
    for n in range(1, 9):
        system.dispatch(command("l1", n * 10, f"note {n}"))
    live = {e.version: e.data.live for e in system.store.read_stream(f"{cls.__name__}-l1")}
    for version, (balance, notes) in LEGACY.items():  # rebuilt by the live aggregate over them
        live[version] = {"balance": balance, "count": version, "notes": notes}
    if cls is SnapLedger:
        snapshot = system.store.load_snapshot("SnapLedger-l1")
        assert snapshot is not None and snapshot.version == 9  # the latest only
    for version in range(1, 11):
        rebuilt = system.state_of(cls, "l1", version=version)
        assert (rebuilt.id, rebuilt.version) == ("l1", version)
        assert state_fields(rebuilt) == live[version], version
    assert state_fields(system.state_of(cls, "l1")) == live[10]


def test_state_at_a_time_and_its_errors(start_app: Start, app_database: str) -> None:
    _seed_old_events(app_database, "Ledger-l1")  # recorded on 2026-01-01 and 2026-01-02
    system = start_app(ledger_app(app_database))
    system.dispatch(Credit("l1", 1, "now"))
    first = next(iter(system.store.read_stream("Ledger-l1")))
    second = list(system.store.read_stream("Ledger-l1"))[1]
    assert system.state_of(Ledger, "l1", at=first.recorded_at).balance == 5
    assert system.state_of(Ledger, "l1", at=second.recorded_at - timedelta(hours=1)).version == 1
    assert system.state_of(Ledger, "l1", at=second.recorded_at + timedelta(days=1)).version == 2
    with pytest.raises(HistoryError, match="unknown stream 'Ledger-nope'"):
        system.state_of(Ledger, "nope", version=1)
    with pytest.raises(HistoryError, match="has no version 4: it is at version 3"):
        system.state_of(Ledger, "l1", version=4)
    with pytest.raises(
        HistoryError, match=r"had no event yet at 2025-.* \(its first is of 2026-01-01"
    ):
        system.state_of(Ledger, "l1", at=first.recorded_at - timedelta(days=300))


def test_diff_names_the_fields_and_the_events(start_app: Start) -> None:
    system = start_app(ledger_app(""))
    for n in (3, 4):
        system.dispatch(Credit("d", n, f"n{n}"))
    changes = diff(system.store, Ledger, "d", 0, 2)
    assert changes["changed"] == {
        "balance": [0, 7],
        "count": [0, 2],
        "notes": [[], ["n3", "n4"]],
    }
    assert [(e["version"], e["type"], sorted(e["changed"])) for e in changes["events"]] == [
        (1, "Credited", ["balance", "count", "notes"]),
        (2, "Credited", ["balance", "count", "notes"]),
    ]
    assert diff(system.store, Ledger, "d", 2, 2)["changed"] == {}


def test_a_snapshot_is_used_only_at_or_before_the_version_asked(tmp_path: Any) -> None:
    with EventStore(str(tmp_path / "s.db")) as store:
        store.append("SnapLedger-x", [Credited_(n) for n in range(1, 6)])
        # A marker no replay could produce: proves which path was taken.
        store.save_snapshot("SnapLedger-x", 3, {"balance": -1, "count": 3, "notes": []})
        assert state_of(store, SnapLedger, "x", version=2).balance == 3  # replayed: 1 + 2
        assert state_of(store, SnapLedger, "x", version=3).balance == -1  # the snapshot
        assert state_of(store, SnapLedger, "x", version=5).balance == -1 + 4 + 5


@pytest.mark.parametrize("where", ["sqlite", "memory"])
def test_state_of_between_two_snapshots_starts_from_the_one_at_or_before(
    tmp_path: Any, where: str
) -> None:
    database = str(tmp_path / "s.db") if where == "sqlite" else "memory:between"
    with EventStore(database) as store:
        store.append("SnapLedger-x", [Credited_(n) for n in range(1, 11)])
        # Markers no replay could produce: each proves which snapshot a state started from.
        store.save_snapshot("SnapLedger-x", 3, {"balance": -100, "count": 3, "notes": []})
        store.save_snapshot("SnapLedger-x", 6, {"balance": -200, "count": 6, "notes": []})
        store.save_snapshot("SnapLedger-x", 9, {"balance": -300, "count": 9, "notes": []})
        # One of another schema_version is passed over, as the live aggregate does.
        store.save_snapshot("SnapLedger-x", 8, {"balance": 0}, schema_version=99)
        assert state_of(store, SnapLedger, "x", version=2).balance == 1 + 2  # none before: replay
        assert state_of(store, SnapLedger, "x", version=3).balance == -100
        assert state_of(store, SnapLedger, "x", version=5).balance == -100 + 4 + 5
        assert state_of(store, SnapLedger, "x", version=8).balance == -200 + 7 + 8
        assert state_of(store, SnapLedger, "x", version=10).balance == -300 + 10
        assert state_of(store, SnapLedger, "x").balance == -300 + 10


def _drop_snapshot_history(database: str) -> None:
    """Make ``database`` as a release before the snapshot history left it."""
    if database.startswith("postgresql:"):
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("DROP TABLE snapshot_history")
    else:
        with sqlite3.connect(database) as conn:
            conn.execute("DROP TABLE snapshot_history")
        conn.close()


def test_a_database_made_before_the_snapshot_history_gets_it_on_open(app_database: str) -> None:
    database = app_database
    with EventStore(database) as store:
        store.append("SnapLedger-x", [Credited_(n) for n in range(1, 6)])
        store.save_snapshot("SnapLedger-x", 3, {"balance": -1, "count": 3, "notes": []})
    _drop_snapshot_history(database)
    with EventStore(database) as store:  # the latest snapshot starts the history
        assert state_of(store, SnapLedger, "x", version=4).balance == -1 + 4
        store.save_snapshot("SnapLedger-x", 5, {"balance": -50, "count": 5, "notes": []})
        assert state_of(store, SnapLedger, "x", version=4).balance == -1 + 4
        assert state_of(store, SnapLedger, "x", version=5).balance == -50


def Credited_(n: int) -> Any:
    from .history_domain import Credited

    return Credited(n, "", {})


# -- trace --------------------------------------------------------------------------------------


def _label(node: dict[str, Any]) -> str:
    return str(node["type"] if node["kind"] == "event" else node["command"])


def _walk(node: dict[str, Any], depth: int = 0) -> list[tuple[int, str, str]]:
    """The tree depth first; siblings by name (commands one event caused at once go to
    different aggregates, so their positions come in either order)."""
    found = [(depth, _label(node), node.get("outcome", ""))]
    for child in sorted(node["children"], key=_label):
        found += _walk(child, depth + 1)
    return found


def test_trace_of_a_refunded_transfer_shows_the_whole_saga(start_app: Start) -> None:
    system = start_app(make_bank(""))
    system.dispatch(OpenAccount("alice", "Alice"))
    system.dispatch(Deposit("alice", 100))
    system.dispatch(OpenAccount("bob", "Bob"))
    system.dispatch(CloseAccount("bob"))
    result = system.dispatch(TransferMoney("t-2", "alice", "bob", 30))

    def whole() -> Any:
        tree = system.trace(result.command_id)
        return tree if tree["events"] == 5 else None

    tree = wait_until(whole, timeout=30, what="the saga to finish")
    assert tree["correlation_id"] == result.correlation_id
    [root] = tree["roots"]
    assert _walk(root) == [
        (0, "TransferMoney", "ok"),
        (1, "TransferRequested", ""),
        (2, "WithdrawForTransfer", "ok"),
        (3, "MoneyWithdrawn", ""),
        (4, "DepositForTransfer", "ok"),
        (5, "TransferDepositRefused", ""),
        (6, "FailTransfer", "ok"),
        (7, "TransferFailed", ""),
        (6, "RefundTransfer", "ok"),
        (7, "TransferRefunded", ""),
    ]
    withdraw = root["children"][0]["children"][0]
    assert withdraw["stream_id"] == "Account-alice" and withdraw["process_manager"] == "transfers"
    refused = withdraw["children"][0]["children"][0]["children"][0]
    assert (refused["stream_id"], refused["version"]) == ("Account-bob", 3)
    # Any id of the request finds the same tree: an event's, the correlation id.
    assert system.trace(refused["event_id"])["roots"] == tree["roots"]
    assert system.trace(result.correlation_id)["roots"] == tree["roots"]


def test_a_rejected_command_shows_in_its_trace(start_app: Start) -> None:
    system = start_app(make_bank(""))
    system.dispatch(OpenAccount("carol", "Carol"))
    with pytest.raises(CommandRejected):
        system.dispatch(Withdraw("carol", 500), metadata={"correlation_id": "req-9", "user": "ada"})
    tree = system.trace("req-9")
    [root] = tree["roots"]
    assert (root["command"], root["stream_id"], root["outcome"]) == (
        "Withdraw",
        "Account-carol",
        "rejected",
    )
    assert "insufficient funds" in root["error"]
    assert tree["rejections"] == 1 and tree["events"] == 0
    assert system.trace(root["command_id"])["roots"][0]["command_id"] == root["command_id"]
    with pytest.raises(HistoryError, match="no event, command or request has the id 'nothing'"):
        system.trace("nothing")
