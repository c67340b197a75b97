"""Process managers (state, causation, redelivery), upcasting as subscribers see it, and projection
rebuilds. Delivery, crashes, error policies and consistency: test_handlers.py."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from backstage_actors import EventStore
from backstage_actors._process_manager_actor import ProcessManagerActor
from examples.bank import make_app as make_bank
from examples.bank.domain import CloseAccount, Deposit, OpenAccount
from examples.bank.transfers import TransferMoney

from .dispatch_domain import stored
from .handler_domain import (
    HdOrderSaga,
    HdPayOrder,
    HdPlaceOrder,
    HdRecorder,
    make_app,
    query,
    subscriber_nodes,
)

Start = Any  # the start_app fixture: start_app(app, **options) -> RunningSystem
# The tests that start an application run on SQLite and on the private PostgreSQL server.
STORES = ["sqlite", "postgres"]


def processes(system: Any, name: str) -> dict[str, dict[str, Any]]:
    rows = query(system, "SELECT process_id, state FROM process_managers WHERE name = ?", name)
    return {process_id: json.loads(state) for process_id, state in rows}


# -- process managers ---------------------------------------------------------------------------


def test_process_manager_runs_each_process_by_its_id(start_app: Start) -> None:
    system = start_app(make_app(process_managers=[HdOrderSaga]))
    system.dispatch(HdPlaceOrder("o-1", 5), metadata={"correlation_id": "order-1"})
    system.dispatch(HdPlaceOrder("o-2", 7), metadata={"correlation_id": "order-2"})
    system.settle()

    # Started and continued: each order's state is saved under its process id.
    assert processes(system, "hd-orders") == {
        "o-1": {"amount": 5, "reserved": True, "paid": False},
        "o-2": {"amount": 7, "reserved": True, "paid": False},
    }
    [placed] = stored(system, "HdOrder-o-1")
    [reserved] = stored(system, "HdShipment-o-1")
    assert type(reserved.data).__name__ == "HdStockReserved" and reserved.data.amount == 5
    # The command it dispatched was caused by the event and keeps the original correlation.
    assert reserved.metadata["causation_id"] == placed.event_id
    assert reserved.metadata["correlation_id"] == "order-1"
    assert reserved.metadata["process_id"] == "o-1"

    paid = system.dispatch(HdPayOrder("o-1"))
    system.settle()

    # Stopped: o-1's state is gone, o-2 waits on.
    assert processes(system, "hd-orders") == {"o-2": {"amount": 7, "reserved": True, "paid": False}}
    shipped = stored(system, "HdShipment-o-1")[-1]
    assert type(shipped.data).__name__ == "HdShipped"
    assert shipped.metadata["causation_id"] == paid.events[0].event_id
    assert shipped.metadata["correlation_id"] == paid.correlation_id
    assert stored(system, "HdShipment-o-2")[-1].data.amount == 7
    node = subscriber_nodes(system)["hd-orders"]
    assert (node["position"], node["lag"], node["failures"]) == (system.store.last_position(), 0, 0)


class HdOneOrderAtATime(HdOrderSaga):
    name = "hd-orders-one"
    max_in_flight = 1


@pytest.mark.parametrize("base", ["simple"])  # the process manager runs in the test's process
def test_a_process_manager_held_up_by_its_window_reads_no_page_per_answer(
    start_app: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With one event in flight at a time it scans one row per answer: it must keep the rest of
    # the page it read (it read and dropped up to page_size rows per answer before).
    reads: list[int] = []
    read_page = EventStore.read_page

    def counted(store: EventStore, from_position: int, limit: int) -> list[tuple[Any, ...]]:
        if isinstance(sys._getframe(1).f_locals.get("self"), ProcessManagerActor):
            reads.append(from_position)
        return read_page(store, from_position, limit)

    monkeypatch.setattr(EventStore, "read_page", counted)
    system = start_app(make_app(process_managers=[HdOneOrderAtATime]))
    system.dispatch_many([HdPlaceOrder(f"o-{n}", n + 1) for n in range(100)])
    system.settle(timeout=30)

    assert len(processes(system, "hd-orders-one")) == 100  # all 100 orders reserved
    assert len(reads) < 25, f"{len(reads)} page reads for 200 events"


def test_bank_saga_refunds_and_a_redelivery_dispatches_nothing_twice(start_app: Start) -> None:
    bank = make_bank()
    system = start_app(bank)
    for account in ("ada", "bob", "cyd"):
        system.dispatch(OpenAccount(account, account.title()))
    system.dispatch(Deposit("ada", 100))
    system.dispatch(CloseAccount("cyd"))
    system.dispatch(TransferMoney("t-1", "ada", "bob", 30))
    system.dispatch(TransferMoney("t-2", "ada", "cyd", 20), metadata={"correlation_id": "t-2"})
    last = system.settle()

    balances = query(system, "SELECT account_id, balance, status FROM balances ORDER BY account_id")
    assert balances == [("ada", 70, "open"), ("bob", 30, "open"), ("cyd", 0, "closed")]
    assert processes(system, "transfers") == {}  # both sagas ran to their end
    # The refusal caused two commands at once: the refund and the transfer's failure.
    refused = next(e for e in stored(system, "Account-cyd") if e.type == "TransferDepositRefused")
    refund = next(e for e in stored(system, "Account-ada") if e.type == "TransferRefunded")
    failed = next(e for e in stored(system, "Transfer-t-2") if e.type == "TransferFailed")
    for caused in (refund, failed):
        assert caused.metadata["causation_id"] == refused.event_id
        assert caused.metadata["correlation_id"] == "t-2"
    system.stop()

    # Lose the saga's checkpoint: it sees every event again and dispatches every command again,
    # with the same command ids, so the aggregates answer without storing anything new.
    with EventStore(system.settings.database) as store:
        store.delete_checkpoint("transfers")
    again = start_app(bank)
    assert again.settle() == last

    assert again.store.last_position() == last
    assert again.store.checkpoint("transfers") == last
    assert processes(again, "transfers") == {}
    assert subscriber_nodes(again)["transfers"]["handled"] == last


# -- upcasting ----------------------------------------------------------------------------------


def test_handlers_receive_upcast_events(start_app: Start, tmp_path: Any, store_kind: str) -> None:
    if store_kind == "postgres":
        pytest.skip("HdRecorder writes through sqlite_utils; upcasting is the facade's, shared")
    database = str(tmp_path / "old.db")
    # Events written by an older release, version 1 of HdRenamed, straight into the table.
    with EventStore(database) as store, store.transaction():
        for version, qty in ((1, 3), (2, 4)):
            store.conn.execute(
                "INSERT INTO events (event_id, stream_id, version, type, schema_version, topic,"
                " data, metadata, recorded_at) VALUES (?, 'HdItem-i1', ?, 'HdRenamed', 1, ?, ?,"
                " '{}', ?)",
                (
                    str(uuid.uuid4()),
                    version,
                    "tests.handler_domain:HdRenamed",
                    json.dumps({"item_id": "i1", "qty": qty}),
                    datetime.now(UTC).isoformat(),
                ),
            )

    system = start_app(make_app(handlers=[HdRecorder]), database=database)
    system.settle()

    rows = query(system, "SELECT type, data FROM hd_seen ORDER BY position")
    assert [(t, json.loads(d)) for t, d in rows] == [
        ("HdRenamed", {"item_id": "i1", "quantity": 3, "unit": "piece"}),
        ("HdRenamed", {"item_id": "i1", "quantity": 4, "unit": "piece"}),
    ]


# -- projection rebuild -------------------------------------------------------------------------


def test_rebuild_replays_a_projection_into_the_same_rows(start_app: Start) -> None:
    system = start_app(make_bank(synchronous="NORMAL"))  # no fsync per commit: faster set-up
    accounts = [f"acc-{i}" for i in range(5)]
    for account in accounts:
        system.dispatch(OpenAccount(account, account.upper()))
    # More than a page (1000 events): the rebuild reports progress more than once.
    deposits = [Deposit(accounts[i % 5], i % 7 + 1) for i in range(1500)]
    assert not any(isinstance(r, BaseException) for r in system.dispatch_many(deposits))
    system.dispatch(TransferMoney("t-1", "acc-0", "acc-1", 50))
    last = system.settle()
    live = query(system, "SELECT * FROM balances ORDER BY account_id")
    # A row the events do not explain: a rebuild starts from an empty table, so it goes.
    system.store.handle.execute(
        "INSERT INTO balances (account_id, owner, balance, status) VALUES ('ghost', 'G', 1, 'open')"
    )

    calls: list[tuple[int, int]] = []
    replayed = system.rebuild("balances", progress=lambda done, total: calls.append((done, total)))

    assert replayed == last
    assert query(system, "SELECT * FROM balances ORDER BY account_id") == live
    assert system.store.checkpoint("balances") == last
    done = [d for d, _ in calls]
    assert len(done) >= 2 and done == sorted(set(done))
    assert calls[-1] == (last, last)
    assert {total for _, total in calls} == {last}
