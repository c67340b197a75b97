"""The domain of the shard tests: accounts that open once and close for good, one of whose
commands races a competing writer, and a shard-mate that keeps counting.

Module-level on purpose: on multiprocTCPBase the shard processes unpickle these by reference.
"""

from __future__ import annotations

from typing import Any

import attrs

from backstage_actors import Aggregate, Application, Router
from backstage_actors.store import EventStore


@attrs.frozen
class Open:
    """Opens the account; an open one answers with no events, a closed one refuses."""

    account_id: str


@attrs.frozen
class OpenRacing:
    """Opens the account, but while it decides, another writer closes it in the store: the
    append of its ``Opened`` fails (the stream moved on)."""

    account_id: str
    database: str


@attrs.frozen
class Opened:
    account_id: str


@attrs.frozen
class Closed:
    account_id: str


class Account(Aggregate):
    def __init__(self) -> None:
        self.opened = False
        self.closed = False

    def execute(self, command: Any) -> Any:
        if self.closed:
            raise ValueError("the account is closed")
        if self.opened:
            return []
        if isinstance(command, OpenRacing):
            with EventStore(command.database) as other:
                other.append(f"Account-{command.account_id}", [Closed(command.account_id)])
        return Opened(command.account_id)

    def apply(self, event: Any) -> None:
        if isinstance(event, Opened):
            self.opened = True
        elif isinstance(event, Closed):
            self.closed = True


def make_app(**options: Any) -> Application:
    router = Router()
    router.dispatch([Open, OpenRacing], to=Account, identity="account_id")
    return Application("shards", router=router, **options)
