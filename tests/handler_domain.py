"""The domain of the handler tests: counters, notes, orders, and subscribers that record what they
see in the application's database (readable from the test process on both bases).

Everything is at module level: on multiproc each subscriber runs in a forked process that imports
its class by module path. Event names start with ``Hd`` (names are registered globally).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, ClassVar

import attrs
import sqlite_utils

from backstage_actors import Aggregate, Application, Router, register_event, upcaster
from backstage_actors.handler import PARK, SKIP, STOP, EventHandler, Metadata, Retry
from backstage_actors.process_manager import ProcessManager
from backstage_actors.projection import Projection

__all__ = [
    "HdCounter",
    "HdCurrentRecorder",
    "HdDefaultPolicy",
    "HdFlaky",
    "HdHandlerError",
    "HdIncrement",
    "HdIncremented",
    "HdLateRecorder",
    "HdNote",
    "HdNoted",
    "HdOrderSaga",
    "HdParker",
    "HdPayOrder",
    "HdPlaceOrder",
    "HdRecorder",
    "HdRenamed",
    "HdSkipper",
    "HdSlowRecorder",
    "HdSlowTally",
    "HdStopper",
    "HdStreamWatcher",
    "HdStuck",
    "HdTally",
    "create_record_tables",
    "make_app",
    "query",
    "router",
    "seen",
    "subscriber_nodes",
]


# -- counters and notes -------------------------------------------------------------------------


@attrs.frozen
class HdIncrement:
    counter_id: str
    amount: int = 1


@attrs.frozen
class HdNote:
    counter_id: str
    text: str


@attrs.frozen
class HdIncremented:
    counter_id: str
    amount: int
    total: int


@attrs.frozen
class HdNoted:
    """``text`` steers the failing subscribers: "poison" fails for good, "flaky" twice."""

    counter_id: str
    text: str


class HdCounter(Aggregate):
    def __init__(self) -> None:
        self.total = 0

    def execute(self, command: Any) -> Any:
        match command:
            case HdIncrement(counter_id, amount):
                return HdIncremented(counter_id, amount, self.total + amount)
            case HdNote(counter_id, text):
                return HdNoted(counter_id, text)
        raise TypeError(f"HdCounter cannot handle {type(command).__name__}")

    def apply(self, event: Any) -> None:
        if isinstance(event, HdIncremented):
            self.total = event.total


# -- an event whose stored shape changed --------------------------------------------------------


@register_event
@attrs.frozen
class HdRenamed:
    """Version 1 stored ``{"item_id", "qty"}``; version 2 renamed ``qty`` and added ``unit``."""

    __event_version__ = 2

    item_id: str
    quantity: int
    unit: str


@upcaster("HdRenamed", 1)
def _renamed_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"item_id": data["item_id"], "quantity": data["qty"], "unit": "piece"}


# -- orders: a process manager reserves stock when an order is placed, ships when it is paid ----


@attrs.frozen
class HdPlaceOrder:
    order_id: str
    amount: int


@attrs.frozen
class HdPayOrder:
    order_id: str


@attrs.frozen
class HdReserveStock:
    order_id: str
    amount: int


@attrs.frozen
class HdShip:
    order_id: str


@attrs.frozen
class HdOrderPlaced:
    order_id: str
    amount: int


@attrs.frozen
class HdOrderPaid:
    order_id: str


@attrs.frozen
class HdStockReserved:
    order_id: str
    amount: int


@attrs.frozen
class HdShipped:
    order_id: str


class HdOrder(Aggregate):
    def execute(self, command: Any) -> Any:
        match command:
            case HdPlaceOrder(order_id, amount):
                return HdOrderPlaced(order_id, amount)
            case HdPayOrder(order_id):
                return HdOrderPaid(order_id)
        raise TypeError(f"HdOrder cannot handle {type(command).__name__}")

    def apply(self, event: Any) -> None:
        pass


class HdShipment(Aggregate):
    def execute(self, command: Any) -> Any:
        match command:
            case HdReserveStock(order_id, amount):
                return HdStockReserved(order_id, amount)
            case HdShip(order_id):
                return HdShipped(order_id)
        raise TypeError(f"HdShipment cannot handle {type(command).__name__}")

    def apply(self, event: Any) -> None:
        pass


class HdOrderSaga(ProcessManager):
    """Placed → reserve stock (start); reserved → wait (continue); paid → ship; shipped → stop."""

    name = "hd-orders"

    def __init__(self) -> None:
        self.amount = 0
        self.reserved = False
        self.paid = False

    def interested(self, event: Any) -> tuple[str, str] | None:
        match event:
            case HdOrderPlaced(order_id=oid):
                return ("start", oid)
            case HdStockReserved(order_id=oid) | HdOrderPaid(order_id=oid):
                return ("continue", oid)
            case HdShipped(order_id=oid):
                return ("stop", oid)
        return None

    def handle(self, event: Any) -> Any:
        match event:
            case HdOrderPlaced(order_id, amount):
                return HdReserveStock(order_id, amount)
            case HdOrderPaid(order_id):
                return HdShip(order_id)
        return None

    def apply(self, event: Any) -> None:
        match event:
            case HdOrderPlaced(amount=amount):
                self.amount = amount
            case HdStockReserved():
                self.reserved = True
            case HdOrderPaid():
                self.paid = True


class HdStreamWatcher(ProcessManager):
    """One process per counter that remembers every total it saw (no commands)."""

    name = "hd-watcher"

    def __init__(self) -> None:
        self.totals: list[int] = []

    def interested(self, event: Any) -> tuple[str, str] | None:
        if isinstance(event, HdIncremented):
            return ("continue", event.counter_id)
        return None

    def apply(self, event: Any) -> None:
        self.totals.append(event.total)


# -- handlers that record every delivery, and fail on purpose -----------------------------------


class HdHandlerError(Exception):
    pass


def _key(db: Any) -> str:
    """An id column that numbers rows by itself, on SQLite or PostgreSQL."""
    return (
        "INTEGER PRIMARY KEY" if isinstance(db, sqlite_utils.Database) else "BIGSERIAL PRIMARY KEY"
    )


def create_record_tables(db: Any) -> None:
    """What the recording handlers write (IF NOT EXISTS: sibling processes race to create them).
    Plain SQL through ``db.execute``: the same on SQLite and PostgreSQL. PostgreSQL does not
    serialise two sessions' CREATE TABLE IF NOT EXISTS (one may fail on its catalog's unique
    index): the loser tries again, and then finds the table."""
    for attempt in range(3):
        try:
            _create_record_tables(db)
            return
        except Exception:
            if attempt == 2:
                raise
            time.sleep(0.05)


def _create_record_tables(db: Any) -> None:
    db.execute(
        f"CREATE TABLE IF NOT EXISTS hd_seen (id {_key(db)}, subscriber TEXT,"
        " position BIGINT, stream_id TEXT, version BIGINT, type TEXT, data TEXT, pid BIGINT)"
    )
    db.execute(
        f"CREATE TABLE IF NOT EXISTS hd_errors (id {_key(db)}, subscriber TEXT,"
        " position BIGINT, failures BIGINT, error_type TEXT)"
    )


class HdRecorder(EventHandler):
    """Appends one ``hd_seen`` row per delivery (at-least-once: a redelivery is a second row)."""

    name = "hd-recorder"
    delay: ClassVar[float] = 0.0

    def __init__(self) -> None:
        self.attempts: dict[int, int] = {}
        self.ready = False

    def handle(self, event: Any, metadata: Metadata) -> None:
        if not self.ready:
            create_record_tables(self.db)
            self.ready = True
        if self.delay:
            time.sleep(self.delay)  # a slow side effect, so that a kill lands mid-stream
        if isinstance(event, HdNoted):
            self.attempts[metadata.position] = self.attempts.get(metadata.position, 0) + 1
            if self.fails(event, self.attempts[metadata.position]):
                raise HdHandlerError(f"{self.name} cannot take {event.text!r}")
        self.db.execute(
            "INSERT INTO hd_seen (subscriber, position, stream_id, version, type, data, pid)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                self.name,
                metadata.position,
                metadata.stream_id,
                metadata.stream_version,
                type(event).__name__,
                json.dumps(attrs.asdict(event)),
                os.getpid(),
            ),
        )

    def fails(self, event: HdNoted, attempt: int) -> bool:
        return False

    def error(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        self.db.execute(
            "INSERT INTO hd_errors (subscriber, position, failures, error_type)"
            " VALUES (?, ?, ?, ?)",
            (self.name, metadata.position, failures, type(exc).__name__),
        )
        return self.policy(exc, event, metadata, failures)

    def policy(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        return super().error(exc, event, metadata, failures)


class HdSlowRecorder(HdRecorder):
    name = "hd-slow-recorder"
    delay = 0.0005


class HdSluggish(HdRecorder):
    """Takes 50 ms an event: a page of a backlog would keep it away from its mailbox for long."""

    name = "hd-sluggish"
    delay = 0.05


class HdLateRecorder(HdRecorder):
    name = "hd-late"


class HdCurrentRecorder(HdRecorder):
    name = "hd-current"
    start_from = "current"


class HdPoisonable(HdRecorder):
    def fails(self, event: HdNoted, attempt: int) -> bool:
        return event.text == "poison"


class HdDefaultPolicy(HdPoisonable):
    """The default policy: retries with backoff, then parks."""

    name = "hd-default"
    retry_base = 0.02


class HdFlaky(HdRecorder):
    """Fails twice on a "flaky" note, then succeeds; its policy retries quickly."""

    name = "hd-flaky"

    def fails(self, event: HdNoted, attempt: int) -> bool:
        return (event.text == "flaky" and attempt <= 2) or event.text == "poison"

    def policy(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        return Retry(0.05) if failures < 3 else PARK


class HdSkipper(HdPoisonable):
    name = "hd-skipper"

    def policy(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        return SKIP


class HdParker(HdPoisonable):
    name = "hd-parker"

    def policy(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        return PARK


class HdStopper(HdPoisonable):
    name = "hd-stopper"

    def policy(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        return STOP


class HdStuck(HdPoisonable):
    """Retries a poison note so late that it is stuck for the length of a test."""

    name = "hd-stuck"

    def policy(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        return Retry(30.0)


# -- projections ----------------------------------------------------------------------------------


class HdTally(Projection):
    """One row per event (the position is the key: a second application would fail) and a counter
    incremented per event: both equal the event count only if every event is applied exactly once."""

    name = "hd-tally"
    tables = ("hd_tally", "hd_tally_count")
    delay: ClassVar[float] = 0.0

    def init(self, db: Any) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS hd_tally (position BIGINT PRIMARY KEY, stream_id TEXT,"
            " version BIGINT, type TEXT)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS hd_tally_count (name TEXT PRIMARY KEY, n BIGINT)")

    def project(self, event: Any, metadata: Metadata, db: Any) -> None:
        if self.delay:
            time.sleep(self.delay)  # keeps the page's transaction open, so that a kill lands in it
        if isinstance(event, HdNoted) and event.text == "slow":
            time.sleep(0.3)
        db.execute(
            "INSERT INTO hd_tally (position, stream_id, version, type) VALUES (?, ?, ?, ?)",
            (metadata.position, metadata.stream_id, metadata.stream_version, type(event).__name__),
        )
        db.execute(
            "INSERT INTO hd_tally_count (name, n) VALUES ('events', 1)"
            " ON CONFLICT (name) DO UPDATE SET n = hd_tally_count.n + 1"
        )


class HdSlowTally(HdTally):
    name = "hd-slow-tally"
    delay = 0.0005


# -- the application ------------------------------------------------------------------------------

router = Router()
router.dispatch([HdIncrement, HdNote], to=HdCounter, identity="counter_id")
router.dispatch([HdPlaceOrder, HdPayOrder], to=HdOrder, identity="order_id")
router.dispatch([HdReserveStock, HdShip], to=HdShipment, identity="order_id")


def make_app(
    handlers: list[type] | tuple[type, ...] = (),
    projections: list[type] | tuple[type, ...] = (),
    process_managers: list[type] | tuple[type, ...] = (),
) -> Application:
    return Application(
        "handlers-test",
        router=router,
        handlers=handlers,
        projections=projections,
        process_managers=process_managers,
        # A killed process loses nothing committed under NORMAL; only a power cut could, and
        # these tests are about processes. It spares an fsync per handler row.
        synchronous="NORMAL",
    )


# -- reading what the subscribers recorded, from the test process ---------------------------------


def query(system: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the application's database (committed data, on either base), SQLite
    or PostgreSQL (the store's handle takes ``?`` placeholders on both)."""
    return list(system.store.handle.execute(sql, params).fetchall())


def seen(system: Any, subscriber: str) -> list[int]:
    """The positions ``subscriber`` recorded, in delivery order (a redelivery appears twice)."""
    exists = (
        "SELECT to_regclass('hd_seen') IS NOT NULL"
        if system.store.kind == "postgres"
        else "SELECT count(*) FROM sqlite_master WHERE name = 'hd_seen'"
    )
    if not query(system, exists)[0][0]:
        return []
    rows = query(
        system, "SELECT position FROM hd_seen WHERE subscriber = ? ORDER BY id", subscriber
    )
    return [row[0] for row in rows]


def subscriber_nodes(system: Any) -> dict[str, dict[str, Any]]:
    """The tree nodes of the subscribers (children of "events"), by name."""
    events = next(c for c in system.tree()["children"] if c["name"] == "events")
    return {node["name"]: node for node in events["children"]}
