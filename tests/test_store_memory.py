"""The in-memory recorder passes the store conformance suite as it is."""

from __future__ import annotations

from pathlib import Path

from backstage_actors.store import EventStore
from examples.bank import make_app as make_bank
from examples.bank.domain import Deposit, OpenAccount

from .store_conformance import ConfDeposited, EventStoreConformance


class TestMemoryEventStore(EventStoreConformance):
    def make_store(self, path: Path, *, page_size: int | None = None) -> EventStore:
        return EventStore(f"memory:{path}", page_size=page_size or 1000)


def test_stores_on_one_name_share_events_until_the_last_is_closed(tmp_path: Path) -> None:
    first, second = EventStore("memory:shared"), EventStore("memory:shared")
    first.append("s", [ConfDeposited("a", 1)])
    assert second.last_position() == first.last_position() == 1
    first.close()
    second.close()
    assert EventStore("memory:shared").last_position() == 0


def test_an_application_runs_on_a_store_in_memory() -> None:
    bank = make_bank("memory:bank-test")
    with bank.start(base="simple") as system:
        system.dispatch(OpenAccount("ada", "Ada"))
        system.dispatch(Deposit("ada", 30))
        last = system.settle()
        rows = system.store.handle.execute("SELECT account_id, balance FROM balances").fetchall()
        assert rows == [("ada", 30)]
        assert system.store.checkpoint("balances") == last == 2
