"""A ledger whose events record the state the live aggregate reached, so that a test can compare
``state_of`` with what the live aggregate had; one of its event types was upcast (version 1 stored
no ``note``)."""

from __future__ import annotations

import json
from typing import Any

import attrs

from backstage_actors import Aggregate, Application, Router, register_event, upcaster

__all__ = ["Credit", "Credited", "Ledger", "SnapLedger", "ledger_app", "old_row"]


@attrs.frozen
class Credit:
    ledger_id: str
    amount: int
    note: str = ""


@attrs.frozen
class SnapCredit:
    ledger_id: str
    amount: int
    note: str = ""


@register_event
@attrs.frozen
class Credited:
    """Version 2 added ``note``; ``live`` is the state the live aggregate reached with it."""

    __event_version__ = 2

    amount: int
    note: str
    live: dict[str, Any] = attrs.Factory(dict)


@upcaster("Credited", 1)
def _credited_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"amount": data["amount"], "note": "(before notes)", "live": {}}


class Ledger(Aggregate):
    def __init__(self) -> None:
        self.balance = 0
        self.count = 0
        self.notes: list[str] = []

    def execute(self, command: Any) -> Any:
        after = {
            "balance": self.balance + command.amount,
            "count": self.count + 1,
            "notes": [*self.notes, command.note],
        }
        return Credited(command.amount, command.note, after)

    def apply(self, event: Any) -> None:
        self.balance += event.amount
        self.count += 1
        self.notes = [*self.notes, event.note]


class SnapLedger(Ledger):
    snapshot_every = 3


def ledger_app(database: str) -> Application:
    router = Router()
    router.dispatch(Credit, to=Ledger, identity="ledger_id")
    router.dispatch(SnapCredit, to=SnapLedger, identity="ledger_id")
    return Application("ledger", router=router, database=database)


def old_row(position: int, stream_id: str, version: int, amount: int) -> tuple[Any, ...]:
    """An ``events`` row as an older release wrote it: ``Credited`` version 1, no note."""
    return (
        position,
        f"old-{stream_id}-{version}",
        stream_id,
        version,
        "Credited",
        1,
        "tests.history_domain:Credited",
        json.dumps({"amount": amount}),
        json.dumps({"user": "legacy"}),
        f"2026-01-0{version}T00:00:00+00:00",
    )
