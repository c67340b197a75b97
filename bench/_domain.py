"""What the benchmarks run on both sides: a minimal wallet for Backstage and for eventsourcing 9.5.6,
an echo actor (the raw Thespian floor) and a handler that timestamps what it handles.

Everything an actor system must import lives here, in an importable module: a class defined in
``__main__`` (``python -m bench.bench_x``) cannot be found again by Thespian's admin.
"""

from __future__ import annotations

import os
import time
from typing import Any

import attrs
from eventsourcing import application as es_application
from eventsourcing import domain as es_domain
from thespian.actors import Actor

from backstage_actors import Aggregate, Application, Router
from backstage_actors.handler import EventHandler, Metadata

__all__ = [
    "LAG_FILE_ENV",
    "Credit",
    "Credited",
    "Echo",
    "EsBank",
    "EsWallet",
    "LagProbe",
    "OpenWallet",
    "Peek",
    "SnapCredit",
    "SnapPeek",
    "SnapshotWallet",
    "Wallet",
    "WalletOpened",
    "es_app",
    "make_app",
    "router",
]


# -- Backstage ----------------------------------------------------------------------------------


@attrs.frozen
class OpenWallet:
    wallet_id: str


@attrs.frozen
class Credit:
    wallet_id: str
    amount: int


@attrs.frozen
class SnapCredit:
    """A credit to a :class:`SnapshotWallet` (a command type routes to one aggregate class)."""

    wallet_id: str
    amount: int


@attrs.frozen
class Peek:
    """Records nothing: the answer carries the version, so it times a rebuild without a write."""

    wallet_id: str


@attrs.frozen
class SnapPeek:
    wallet_id: str


@attrs.frozen
class WalletOpened:
    wallet_id: str


@attrs.frozen
class Credited:
    wallet_id: str
    amount: int
    balance: int


class Wallet(Aggregate):
    """One event per command; no snapshots."""

    def __init__(self) -> None:
        self.opened = False
        self.balance = 0

    def execute(self, command: Any) -> Any:
        if isinstance(command, (Peek, SnapPeek)):
            return []  # no events: a read through the aggregate
        if isinstance(command, OpenWallet):
            return WalletOpened(command.wallet_id)
        return Credited(command.wallet_id, command.amount, self.balance + command.amount)

    def apply(self, event: Any) -> None:
        if isinstance(event, Credited):
            self.balance = event.balance
        else:
            self.opened = True


class SnapshotWallet(Wallet):
    snapshot_every = 100


router = Router()
router.dispatch([OpenWallet, Credit, Peek], to=Wallet, identity="wallet_id")
router.dispatch([SnapCredit, SnapPeek], to=SnapshotWallet, identity="wallet_id")


def make_app(database: str, handlers: list[type] | None = None, **options: Any) -> Application:
    return Application(
        "bench", router=router, handlers=handlers or [], database=database, **options
    )


LAG_FILE_ENV = "BENCH_LAG_FILE"


class LagProbe(EventHandler):
    """Appends ``position recorded_at handled_at`` (epoch seconds) to ``$BENCH_LAG_FILE``.

    The variable is set before the actor system forks, so every actor process inherits it.
    """

    name = "lag-probe"

    def handle(self, event: Any, metadata: Metadata) -> None:
        now = time.time()
        with open(os.environ[LAG_FILE_ENV], "a", encoding="utf-8") as out:
            out.write(f"{metadata.position} {metadata.recorded_at.timestamp():.6f} {now:.6f}\n")


class Echo(Actor):
    """The raw Thespian floor: answers an int, str or tuple with itself (and ignores Thespian's
    own messages)."""

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if isinstance(message, (str, int, tuple)):
            self.send(sender, message)


# -- eventsourcing 9.5.6 ------------------------------------------------------------------------


class EsWallet(es_domain.Aggregate):
    """The same wallet in eventsourcing's declarative style: one event per command."""

    @es_domain.event("Opened")
    def __init__(self) -> None:
        self.balance = 0

    @es_domain.event("Credited")
    def credit(self, amount: int) -> None:
        self.balance += amount


class EsBank(es_application.Application[Any]):
    pass


def es_app(path: str, cache: bool = True, snapshots: bool = False) -> EsBank:
    """eventsourcing on a SQLite file (WAL; sqlite3's default ``synchronous=FULL``)."""
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path}
    if cache:
        env["AGGREGATE_CACHE_MAXSIZE"] = "100000"
    if snapshots:
        env["IS_SNAPSHOTTING_ENABLED"] = "y"
    return EsBank(env=env)
