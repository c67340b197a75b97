"""What the bank shows: a balances table (a projection) and notifications (a handler)."""

from __future__ import annotations

import logging
from typing import Any

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
    """``balances``: one row per account with its owner, balance and status.

    Plain SQL through ``db.execute``, so it runs on SQLite and on PostgreSQL alike."""

    name = "balances"
    tables = ("balances",)

    def init(self, db: Any) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS balances (account_id TEXT PRIMARY KEY, owner TEXT,"
            " balance BIGINT, status TEXT)"
        )

    def project(self, event: Any, metadata: Metadata, db: Any) -> None:
        match event:
            case AccountOpened(account_id, owner):
                db.execute(
                    "INSERT INTO balances (account_id, owner, balance, status)"
                    " VALUES (?, ?, 0, 'open')",
                    (account_id, owner),
                )
            case (
                MoneyDeposited(account_id=aid, balance=balance)
                | MoneyWithdrawn(account_id=aid, balance=balance)
                | TransferRefunded(account_id=aid, balance=balance)
            ):
                _update(db, "UPDATE balances SET balance = ? WHERE account_id = ?", balance, aid)
            case AccountClosed(account_id):
                _update(
                    db, "UPDATE balances SET status = 'closed' WHERE account_id = ?", account_id
                )


class NotFoundError(LookupError):
    """An event about an account the read model has no row for."""


def _update(db: Any, sql: str, *params: Any) -> None:
    """An UPDATE of one account's row; an account without a row is an error (the event is
    retried, then parked as a dead letter)."""
    if db.execute(sql, params).rowcount == 0:
        raise NotFoundError(f"no balances row for account {params[-1]!r}")


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
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS notifications (event_id TEXT PRIMARY KEY,"
            " account_id TEXT, text TEXT)"
        )
        self.db.execute(
            "INSERT INTO notifications (event_id, account_id, text) VALUES (?, ?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            (metadata.event_id, getattr(event, "account_id", ""), text),
        )
