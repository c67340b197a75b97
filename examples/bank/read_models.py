"""What the bank shows: a balances table (a projection) and notifications (a handler)."""

from __future__ import annotations

import logging
from typing import Any

import sqlite_utils

from backstage_actors import EventHandler, Metadata, Projection

from .domain import (
    AccountClosed,
    AccountOpened,
    MoneyDeposited,
    MoneyWithdrawn,
    TransferRefunded,
)
from .transfers import TransferFailed

__all__ = ["Balances", "Notifier"]


class Balances(Projection):
    """``balances``: one row per account with its owner, balance and status."""

    name = "balances"
    tables = ("balances",)

    def init(self, db: sqlite_utils.Database) -> None:
        db["balances"].create(
            {"account_id": str, "owner": str, "balance": int, "status": str},
            pk="account_id",
            if_not_exists=True,
        )

    def project(self, event: Any, metadata: Metadata, db: sqlite_utils.Database) -> None:
        table = db["balances"]
        match event:
            case AccountOpened(account_id, owner):
                table.insert(
                    {"account_id": account_id, "owner": owner, "balance": 0, "status": "open"}
                )
            case (
                MoneyDeposited(account_id=aid, balance=balance)
                | MoneyWithdrawn(account_id=aid, balance=balance)
                | TransferRefunded(account_id=aid, balance=balance)
            ):
                table.update(aid, {"balance": balance})
            case AccountClosed(account_id):
                table.update(account_id, {"status": "closed"})


class Notifier(EventHandler):
    """Tells customers what happened (here: a row in ``notifications`` and a log line).

    At-least-once: the event id is the row's key, so a redelivered event notifies once."""

    name = "notifier"

    def __init__(self) -> None:
        self.log = logging.getLogger("examples.bank.notifier")

    def handle(self, event: Any, metadata: Metadata) -> None:
        match event:
            case AccountOpened(account_id, owner):
                text = f"Welcome {owner}, account {account_id} is open"
            case TransferFailed(transfer_id, reason):
                text = f"Transfer {transfer_id} failed: {reason}"
            case TransferRefunded(account_id, amount, _, transfer_id):
                text = f"{amount / 100:.2f} refunded to {account_id} (transfer {transfer_id})"
            case _:
                return
        self.log.info(text)
        # self.db is the application's database; the event id as key makes redelivery harmless.
        self.db["notifications"].insert(
            {
                "event_id": metadata.event_id,
                "account_id": getattr(event, "account_id", ""),
                "text": text,
            },
            pk="event_id",
            ignore=True,
        )
