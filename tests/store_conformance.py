"""A reusable conformance suite for event stores (after eventsourcing's recorder test cases and
Akka persistence's JournalSpec).

Subclass :class:`EventStoreConformance`, implement :meth:`EventStoreConformance.make_store`, and every
test here runs against your store: the contract of appending, reading, truncating, snapshots,
checkpoints and dead letters that the aggregates, handlers and projections rely on.

Event classes live at module level: the store resolves them by type name and module path.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import types
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest

from backstage_actors.errors import BackstageError, SerializationError, WrongExpectedVersion
from backstage_actors.store import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    EventStore,
    ExpectedVersion,
    RecordedEvent,
)

from .history_conformance import HistoryConformance

__all__ = ["EventStoreConformance"]


# -- events ----------------------------------------------------------------------------------


@attrs.frozen
class ConfDeposited:
    account: str
    amount: int


@attrs.frozen
class ConfAnything:
    """An event whose field can hold anything: the way to smuggle in an unserializable value."""

    amount: Any


class ConfCurrency(enum.Enum):
    EUR = "EUR"
    JPY = "JPY"


@attrs.frozen
class ConfLine:
    sku: str
    qty: int
    price: Decimal


@attrs.frozen
class ConfOrderPlaced:
    order_id: uuid.UUID
    placed_at: datetime
    currency: ConfCurrency
    lines: list[ConfLine]
    total: Decimal
    note: str | None = None
    gift: ConfLine | None = None
    tags: list[str] = attrs.Factory(list)


@dataclasses.dataclass(frozen=True)
class ConfShipment:
    carrier: str
    shipped_at: datetime
    parcel_id: uuid.UUID
    weight: Decimal
    currency: ConfCurrency
    lines: list[ConfLine]
    tracking: str | None = None
    delivered_on: datetime | None = None


def deposits(count: int, account: str = "a", start: int = 1) -> list[ConfDeposited]:
    return [ConfDeposited(account, amount) for amount in range(start, start + count)]


def versions(events: Iterator[RecordedEvent] | list[RecordedEvent]) -> list[int]:
    return [e.version for e in events]


def amounts(events: Iterator[RecordedEvent] | list[RecordedEvent]) -> list[int]:
    return [e.data.amount for e in events]


def aware(year: int, minute: int = 0, offset_hours: int = 0) -> datetime:
    return datetime(
        year, 3, 4, 5, minute, 7, 890123, tzinfo=timezone(timedelta(hours=offset_hours))
    )


# -- the suite -------------------------------------------------------------------------------


class EventStoreConformance(HistoryConformance, abc.ABC):
    """The event store contract; a subclass provides the store."""

    @abc.abstractmethod
    def make_store(self, path: Path, *, page_size: int | None = None) -> EventStore:
        """A new store on ``path`` (empty when the file is new); ``page_size`` rows per read query."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[EventStore]:
        """A fresh, empty store per test."""
        store = self.make_store(tmp_path / "events.db")
        try:
            yield store
        finally:
            store.close()

    @pytest.fixture
    def ten(self, store: EventStore) -> EventStore:
        """The store with stream "s" holding versions 1..10 (amount == version)."""
        store.append("s", deposits(10))
        return store

    # -- reading a stream -------------------------------------------------------------------

    def test_replay_all(self, ten: EventStore) -> None:
        events = list(ten.read_stream("s"))

        assert versions(events) == list(range(1, 11))
        assert amounts(events) == list(range(1, 11))
        assert all(e.stream_id == "s" and e.type == "ConfDeposited" for e in events)
        assert len({e.event_id for e in events}) == 10

    def test_from_version_only(self, ten: EventStore) -> None:
        assert versions(ten.read_stream("s", from_version=4)) == list(range(4, 11))

    def test_to_version_only(self, ten: EventStore) -> None:
        assert versions(ten.read_stream("s", to_version=6)) == list(range(1, 7))

    def test_count_limit(self, ten: EventStore) -> None:
        assert versions(ten.read_stream("s", limit=3)) == [1, 2, 3]

    def test_bounds_and_limit(self, ten: EventStore) -> None:
        assert versions(ten.read_stream("s", from_version=3, to_version=8, limit=2)) == [3, 4]
        # The limit is a maximum: a narrow range gives fewer events.
        assert versions(ten.read_stream("s", from_version=9, to_version=20, limit=5)) == [9, 10]

    def test_from_equals_to_is_one_event(self, ten: EventStore) -> None:
        assert versions(ten.read_stream("s", from_version=5, to_version=5)) == [5]

    def test_limit_one_and_limit_zero(self, ten: EventStore) -> None:
        assert versions(ten.read_stream("s", limit=1)) == [1]
        assert list(ten.read_stream("s", limit=0)) == []

    def test_from_after_to_is_empty(self, ten: EventStore) -> None:
        assert list(ten.read_stream("s", from_version=7, to_version=3)) == []
        assert list(ten.read_stream("s", from_version=7, to_version=3, backward=True)) == []

    def test_reading_past_the_end_is_empty(self, ten: EventStore) -> None:
        assert list(ten.read_stream("s", from_version=11)) == []

    def test_unknown_stream_is_version_zero_and_empty(self, ten: EventStore) -> None:
        assert ten.stream_version("nobody") == 0
        assert list(ten.read_stream("nobody")) == []
        assert list(ten.read_stream("nobody", backward=True, limit=1)) == []

    def test_backward_reads(self, ten: EventStore) -> None:
        assert versions(ten.read_stream("s", backward=True)) == list(range(10, 0, -1))
        # With a limit: the last N, newest first (the stream's last event is limit=1).
        assert versions(ten.read_stream("s", backward=True, limit=3)) == [10, 9, 8]
        assert versions(ten.read_stream("s", backward=True, limit=1)) == [10]
        # Within bounds, backward starts at the upper bound.
        assert versions(ten.read_stream("s", 3, 8, limit=2, backward=True)) == [8, 7]
        assert versions(ten.read_stream("s", from_version=8, backward=True)) == [10, 9, 8]

    def test_streams_are_separate(self, store: EventStore) -> None:
        store.append("a", deposits(3, "a"))
        store.append("b", deposits(2, "b"))

        assert [e.data.account for e in store.read_stream("a")] == ["a"] * 3
        assert versions(store.read_stream("b")) == [1, 2]
        assert (store.stream_version("a"), store.stream_version("b")) == (3, 2)

    # -- the global log -----------------------------------------------------------------------

    def test_read_all_orders_by_global_position_across_streams(self, store: EventStore) -> None:
        written: list[RecordedEvent] = []
        for stream, amount in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5), ("a", 6)]:
            written += store.append(stream, [ConfDeposited(stream, amount)])
        written += store.append("c", deposits(3, "c", start=7))

        everything = list(store.read_all())

        assert [e.event_id for e in everything] == [e.event_id for e in written]
        positions = [e.position for e in everything]
        assert positions == sorted(set(positions))  # strictly increasing
        assert amounts(everything) == list(range(1, 10))
        assert [(e.stream_id, e.version) for e in everything[:4]] == [
            ("a", 1),
            ("b", 1),
            ("a", 2),
            ("c", 1),
        ]

    def test_read_all_from_position_and_limit(self, store: EventStore) -> None:
        for stream in ["a", "b", "c"]:
            store.append(stream, deposits(4, stream))
        positions = [e.position for e in store.read_all()]

        assert [e.position for e in store.read_all(from_position=positions[5])] == positions[5:]
        assert [e.position for e in store.read_all(positions[2], limit=4)] == positions[2:6]
        assert [e.position for e in store.read_all(limit=1)] == positions[:1]
        assert list(store.read_all(limit=0)) == []
        assert list(store.read_all(from_position=positions[-1] + 1)) == []

    def test_last_position(self, store: EventStore) -> None:
        assert store.last_position() == 0

        store.append("a", deposits(3))
        recorded = store.append("b", deposits(2))

        assert store.last_position() == recorded[-1].position
        assert store.last_position() == [e.position for e in store.read_all()][-1]

    def test_event_at_position(self, store: EventStore) -> None:
        recorded = store.append("a", deposits(3))

        found = store.event_at(recorded[1].position)

        assert found is not None
        assert (found.event_id, found.version, found.data) == (
            recorded[1].event_id,
            2,
            ConfDeposited("a", 2),
        )
        assert store.event_at(recorded[-1].position + 100) is None

    # -- truncation ---------------------------------------------------------------------------

    def test_truncation_then_replay(self, ten: EventStore) -> None:
        assert ten.truncate_stream("s", before_version=4) == 3

        assert versions(ten.read_stream("s")) == list(range(4, 11))
        assert list(ten.read_stream("s", to_version=3)) == []
        assert versions(ten.read_all()) == list(range(4, 11))
        assert versions(ten.read_stream("s", backward=True, limit=2)) == [10, 9]

    def test_partial_truncation_keeps_the_stream_version(self, ten: EventStore) -> None:
        ten.truncate_stream("s", before_version=6)

        assert ten.stream_version("s") == 10
        # An aggregate loading from its snapshot still appends at the right version.
        with pytest.raises(WrongExpectedVersion):
            ten.append("s", deposits(1), expected_version=5)
        assert versions(ten.append("s", deposits(1), expected_version=10)) == [11]

    def test_total_truncation_keeps_the_stream_and_appends_continue(self, ten: EventStore) -> None:
        assert ten.truncate_stream("s", before_version=11) == 10
        assert list(ten.read_stream("s")) == []
        assert ten.stream_version("s") == 10

        # The stream still exists: versions are never reused.
        with pytest.raises(WrongExpectedVersion):
            ten.append("s", deposits(1), expected_version=NO_STREAM)
        with pytest.raises(WrongExpectedVersion):
            ten.append("s", deposits(1), expected_version=0)
        recorded = ten.append("s", deposits(2, start=11), expected_version=10)

        assert versions(recorded) == [11, 12]
        assert versions(ten.read_stream("s")) == [11, 12]

    def test_truncation_only_touches_its_stream(self, store: EventStore) -> None:
        store.append("a", deposits(3, "a"))
        store.append("b", deposits(3, "b"))

        store.truncate_stream("a", before_version=3)

        assert versions(store.read_stream("b")) == [1, 2, 3]
        assert [(e.stream_id, e.version) for e in store.read_all()] == [
            ("a", 3),
            ("b", 1),
            ("b", 2),
            ("b", 3),
        ]

    # -- expected versions --------------------------------------------------------------------

    def test_expected_any(self, store: EventStore) -> None:
        assert versions(store.append("s", deposits(2), expected_version=ANY)) == [1, 2]
        assert versions(store.append("s", deposits(1), expected_version=ANY)) == [3]

    def test_expected_no_stream(self, store: EventStore) -> None:
        assert versions(store.append("s", deposits(2), expected_version=NO_STREAM)) == [1, 2]

        with pytest.raises(WrongExpectedVersion) as caught:
            store.append("s", deposits(1), expected_version=NO_STREAM)

        self.assert_names(caught.value, "s", NO_STREAM, 2)
        assert store.stream_version("s") == 2

    def test_expected_stream_exists(self, store: EventStore) -> None:
        with pytest.raises(WrongExpectedVersion) as caught:
            store.append("s", deposits(1), expected_version=STREAM_EXISTS)
        self.assert_names(caught.value, "s", STREAM_EXISTS, 0)
        assert list(store.read_stream("s")) == []

        store.append("s", deposits(1))
        assert versions(store.append("s", deposits(1), expected_version=STREAM_EXISTS)) == [2]

    def test_expected_exact_version(self, store: EventStore) -> None:
        assert versions(store.append("s", deposits(1), expected_version=0)) == [1]
        assert versions(store.append("s", deposits(2), expected_version=1)) == [2, 3]

        for stale in (0, 1, 2, 4):
            with pytest.raises(WrongExpectedVersion) as caught:
                store.append("s", deposits(1), expected_version=stale)
            self.assert_names(caught.value, "s", stale, 3)
        assert versions(store.read_stream("s")) == [1, 2, 3]

    def test_invalid_expected_version_is_refused(self, store: EventStore) -> None:
        for bad in (-1, True, "1", 1.0, None):
            with pytest.raises(BackstageError, match="expected_version"):
                store.append("s", deposits(1), expected_version=bad)  # type: ignore[arg-type]
        assert store.stream_version("s") == 0

    @staticmethod
    def assert_names(
        error: WrongExpectedVersion, stream_id: str, expected: ExpectedVersion | int, actual: int
    ) -> None:
        """The error says which stream, what was expected and what it is: enough to retry."""
        assert (error.stream_id, error.expected, error.actual) == (stream_id, expected, actual)
        message = str(error)
        assert repr(stream_id) in message
        assert str(getattr(expected, "name", expected)) in message
        assert f"version {actual}" in message

    # -- atomicity and idempotence ------------------------------------------------------------

    def test_one_unserializable_event_stores_nothing(self, store: EventStore) -> None:
        store.append("s", deposits(1))
        batch = [ConfAnything(1), ConfAnything(object()), ConfAnything(3)]

        with pytest.raises(SerializationError) as caught:
            store.append("s", batch)

        assert caught.value.path == "$.amount"
        assert "$.amount" in str(caught.value)
        assert "ConfAnything" in str(caught.value)
        assert versions(store.read_stream("s")) == [1]
        assert store.stream_version("s") == 1
        assert len(list(store.read_all())) == 1

    def test_non_finite_and_mistyped_values_are_refused_with_their_path(
        self, store: EventStore
    ) -> None:
        # NaN is not JSON; a str in an int field would not read back: both are refused at write.
        for bad in (ConfAnything(float("nan")), ConfDeposited("a", "5")):  # type: ignore[arg-type]
            with pytest.raises(SerializationError) as caught:
                store.append("s", [bad])
            assert caught.value.path == "$.amount"
        assert store.stream_version("s") == 0

    def test_unserializable_metadata_stores_nothing(self, store: EventStore) -> None:
        with pytest.raises(SerializationError) as caught:
            store.append("s", deposits(2), metadata={"user": "ada", "who": object()})

        assert caught.value.path == "$.who"
        assert store.stream_version("s") == 0
        assert list(store.read_all()) == []

    def test_idempotent_reappend_returns_the_stored_events(self, store: EventStore) -> None:
        ids = [str(uuid.uuid4()) for _ in range(3)]
        first = store.append("s", deposits(3), expected_version=NO_STREAM, event_ids=ids)

        # The same append again (its outcome was uncertain), with every kind of expectation.
        for expected in (NO_STREAM, 0, ANY, STREAM_EXISTS):
            again = store.append("s", deposits(3), expected_version=expected, event_ids=ids)
            assert [(e.event_id, e.version, e.position, e.data) for e in again] == [
                (e.event_id, e.version, e.position, e.data) for e in first
            ]

        assert [e.event_id for e in first] == ids
        assert store.stream_version("s") == 3
        assert [e.event_id for e in store.read_all()] == ids

    def test_reusing_an_event_id_of_another_append_stores_nothing(self, store: EventStore) -> None:
        store.append("other", deposits(1), event_ids=["taken"])
        store.append("s", deposits(1), event_ids=["mine"])

        # The second id of each batch is already stored: in another stream, then in this one
        # by a different append. Neither batch may leave its first event behind.
        for ids in (["new-1", "taken"], ["new-2", "mine"]):
            with pytest.raises(BackstageError):
                store.append("s", deposits(2, start=2), event_ids=ids)
            assert versions(store.read_stream("s")) == [1]
            assert store.stream_version("s") == 1

        # And the stream is not wedged.
        assert versions(store.append("s", deposits(1, start=5), expected_version=1)) == [2]
        assert versions(store.read_stream("s")) == [1, 2]

    def test_appending_nothing_stores_nothing(self, store: EventStore) -> None:
        assert store.append("s", [], expected_version=NO_STREAM) == []
        assert store.stream_version("s") == 0
        assert list(store.read_all()) == []

    # -- metadata and payloads ----------------------------------------------------------------

    def test_metadata_round_trip(self, store: EventStore) -> None:
        correlation = uuid.uuid4()
        metadata: dict[str, Any] = {
            "user": "ada",
            "correlation_id": correlation,
            "sent_at": aware(2024),
            "attempt": 2,
            "ratio": 0.25,
            "flags": [True, False, None],
            "nested": {"ip": "127.0.0.1", "née": "ü"},
        }
        expected = {
            **metadata,
            "correlation_id": str(correlation),
            "sent_at": aware(2024).isoformat(),
        }

        recorded = store.append("s", deposits(2), metadata=metadata)
        store.append("t", deposits(1))

        # Readers get JSON; the append's own result says the same as a later read would.
        assert [e.metadata for e in recorded] == [expected, expected]
        assert [e.metadata for e in store.read_stream("s")] == [expected, expected]
        assert [e.metadata for e in store.read_all()] == [expected, expected, {}]

    def test_recorded_at_is_an_aware_timestamp_of_the_append(self, store: EventStore) -> None:
        before = datetime.now(UTC)
        recorded = store.append("s", deposits(2))
        after = datetime.now(UTC)

        read = list(store.read_stream("s"))

        assert [e.recorded_at for e in read] == [e.recorded_at for e in recorded]
        assert all(before <= e.recorded_at <= after for e in read)

    def test_attrs_event_round_trip(self, store: EventStore) -> None:
        events = [
            ConfOrderPlaced(
                order_id=uuid.uuid4(),
                placed_at=aware(2024, offset_hours=9),
                currency=ConfCurrency.JPY,
                lines=[
                    ConfLine("tée-1", 2, Decimal("19.99")),
                    ConfLine("寿司", 1, Decimal("1E+3")),
                ],
                total=Decimal("1039.980"),
                note="für Ada",
                gift=ConfLine("card", 1, Decimal("0")),
                tags=["a", "b"],
            ),
            ConfOrderPlaced(
                order_id=uuid.uuid4(),
                placed_at=datetime(1999, 12, 31, 23, 59, 59),  # naive stays naive
                currency=ConfCurrency.EUR,
                lines=[],
                total=Decimal("-0.00"),
            ),
        ]
        self.assert_round_trip(store, events)

    def test_dataclass_event_round_trip(self, store: EventStore) -> None:
        events = [
            ConfShipment(
                carrier="DHL",
                shipped_at=aware(2023, offset_hours=-5),
                parcel_id=uuid.uuid4(),
                weight=Decimal("1.250"),
                currency=ConfCurrency.EUR,
                lines=[ConfLine("x", 3, Decimal("0.10"))],
                tracking="ÄÖÜ-42",
                delivered_on=datetime(2023, 1, 2, 3, 4, 5),
            ),
            ConfShipment("UPS", aware(2020), uuid.uuid4(), Decimal(7), ConfCurrency.JPY, []),
        ]
        self.assert_round_trip(store, events)

    def assert_round_trip(self, store: EventStore, events: list[Any]) -> None:
        recorded = store.append("s", events)
        read = list(store.read_stream("s"))
        everything = list(store.read_all())

        for got in (
            [e.data for e in recorded],
            [e.data for e in read],
            [e.data for e in everything],
        ):
            assert got == events
            for before, after in zip(events, got, strict=True):
                assert type(after) is type(before)
                # == is not enough: Decimal("1.0") == Decimal("1.00"), and aware datetimes in
                # different zones compare equal; the exact value must come back.
                for field in ("total", "weight"):
                    if hasattr(before, field):
                        assert str(getattr(after, field)) == str(getattr(before, field))
                for field in ("placed_at", "shipped_at"):
                    if hasattr(before, field):
                        assert (
                            getattr(after, field).utcoffset() == getattr(before, field).utcoffset()
                        )

    # -- snapshots ----------------------------------------------------------------------------

    def test_snapshot_save_and_load(self, store: EventStore) -> None:
        assert store.load_snapshot("acct") is None
        state = {"balance": 42, "owner": "Ada", "history": [1, 2, 3], "frozen": False}

        store.save_snapshot("acct", 7, state, schema_version=1, type="Account")
        snapshot = store.load_snapshot("acct", schema_version=1)

        assert snapshot is not None
        assert (snapshot.stream_id, snapshot.version, snapshot.schema_version, snapshot.type) == (
            "acct",
            7,
            1,
            "Account",
        )
        assert snapshot.state == state
        assert snapshot.taken_at.tzinfo is not None
        assert store.load_snapshot("other") is None

    def test_snapshot_overwrite(self, store: EventStore) -> None:
        store.save_snapshot("acct", 5, {"balance": 1})
        store.save_snapshot("acct", 5, {"balance": 2})  # same version: the newer save wins
        snapshot = store.load_snapshot("acct")
        assert snapshot is not None
        assert (snapshot.version, snapshot.state) == (5, {"balance": 2})

        store.save_snapshot("acct", 9, {"balance": 3})
        store.save_snapshot("acct", 6, {"balance": 4})  # late and older: ignored
        snapshot = store.load_snapshot("acct")
        assert snapshot is not None
        assert (snapshot.version, snapshot.state) == (9, {"balance": 3})

    def test_snapshot_of_an_old_schema_version_is_ignored(self, store: EventStore) -> None:
        store.save_snapshot("acct", 5, {"balance": 1}, schema_version=1)

        assert store.load_snapshot("acct", schema_version=2) is None
        assert store.load_snapshot("acct", schema_version=1) is not None

        store.save_snapshot("acct", 6, {"balance": 2, "currency": "EUR"}, schema_version=2)
        assert store.load_snapshot("acct", schema_version=1) is None
        snapshot = store.load_snapshot("acct", schema_version=2)
        assert snapshot is not None
        assert snapshot.state == {"balance": 2, "currency": "EUR"}

    def test_large_snapshot(self, store: EventStore) -> None:
        state = {"blob": "é" * 500_000, "numbers": list(range(50_000))}  # > 1 MB of JSON

        store.save_snapshot("big", 1, state)
        snapshot = store.load_snapshot("big")

        assert snapshot is not None
        assert snapshot.state == state

    def test_unserializable_snapshot_is_refused(self, store: EventStore) -> None:
        with pytest.raises(SerializationError) as caught:
            store.save_snapshot("acct", 1, {"ok": 1, "bad": [1, object()]})

        assert caught.value.path == "$.bad[1]"
        assert store.load_snapshot("acct") is None

    # -- checkpoints and dead letters ---------------------------------------------------------

    def test_checkpoints(self, store: EventStore) -> None:
        assert store.checkpoint("balances") == 0
        assert not store.has_checkpoint("balances")
        store.save_checkpoint("balances", 0)  # (saved at 0 is not the same as never saved)
        assert store.has_checkpoint("balances") and store.checkpoint("balances") == 0

        store.save_checkpoint("balances", 12)
        store.save_checkpoint("notifier", 3)
        assert (store.checkpoint("balances"), store.checkpoint("notifier")) == (12, 3)

        store.save_checkpoint("balances", 40)
        assert store.checkpoint("balances") == 40

        store.delete_checkpoint("balances")
        assert (store.checkpoint("balances"), store.checkpoint("notifier")) == (0, 3)

    def test_a_checkpoint_moves_only_from_where_its_mover_says_it_is(
        self, store: EventStore
    ) -> None:
        """The compare and set a subscriber under a lease saves its checkpoint with."""
        assert store.move_checkpoint("balances", 5, expected=0)  # none yet counts as 0
        assert not store.move_checkpoint("balances", 9, expected=0)
        assert not store.move_checkpoint("balances", 9, expected=4)
        assert store.checkpoint("balances") == 5
        assert store.move_checkpoint("balances", 9, expected=5)
        assert not store.move_checkpoint("notifier", 3, expected=2)  # none is not 2
        assert (store.checkpoint("balances"), store.checkpoint("notifier")) == (9, 0)
        with store.transaction():  # inside a transaction too
            assert store.move_checkpoint("balances", 12, expected=9)
            store.delete_checkpoint("notifier")
        assert store.checkpoint("balances") == 12

    def test_dead_letters(self, store: EventStore) -> None:
        first, second = store.append("s", deposits(2))
        store.park("notifier", first, "ValueError", "bad amount", "Traceback ...", failures=3)
        store.park("balances", second, "KeyError", "'x'", "Traceback ...", failures=1)

        [letter] = store.dead_letters("notifier")
        assert (letter.subscriber, letter.position, letter.event_id) == (
            "notifier",
            first.position,
            first.event_id,
        )
        assert (letter.stream_id, letter.version, letter.type) == ("s", 1, "ConfDeposited")
        assert (letter.error_type, letter.error, letter.failures, letter.status) == (
            "ValueError",
            "bad amount",
            3,
            "parked",
        )
        assert [d.subscriber for d in store.dead_letters()] == ["notifier", "balances"]

        # Parking the same event again updates the letter instead of adding one.
        store.park("notifier", first, "ValueError", "still bad", "Traceback ...", failures=4)
        [again] = store.dead_letters("notifier")
        assert (again.id, again.error, again.failures) == (letter.id, "still bad", 4)

        store.set_dead_letter_status(letter.id, "retried")
        assert store.dead_letters("notifier") == []
        assert [d.status for d in store.dead_letters("notifier", status="retried")] == ["retried"]
        assert len(store.dead_letters(status=None)) == 2

    # -- paging -------------------------------------------------------------------------------

    def test_reads_longer_than_a_page(self, tmp_path: Path) -> None:
        store = self.make_store(tmp_path / "paged.db", page_size=7)
        try:
            for amount in range(1, 13):
                store.append("s", [ConfDeposited("s", amount)])
                store.append("other", [ConfDeposited("other", amount)])
            store.append("s", deposits(38, "s", start=13))  # one append spanning pages

            reader = store.read_stream("s")
            assert isinstance(reader, types.GeneratorType)  # lazy: pages are fetched on demand
            assert versions(reader) == list(range(1, 51))
            assert amounts(store.read_stream("s")) == list(range(1, 51))
            assert versions(store.read_stream("s", backward=True)) == list(range(50, 0, -1))
            assert versions(store.read_stream("s", from_version=10, limit=15)) == list(
                range(10, 25)
            )
            assert versions(store.read_stream("s", 5, 40)) == list(range(5, 41))
            assert versions(store.read_stream("s", backward=True, limit=15)) == list(
                range(50, 35, -1)
            )
            assert versions(store.read_stream("s", 6, 45, limit=14, backward=True)) == list(
                range(45, 31, -1)
            )
            assert versions(store.read_stream("s", limit=7)) == list(range(1, 8))
            assert versions(store.read_stream("s", limit=8)) == list(range(1, 9))

            everything = store.read_all()
            assert isinstance(everything, types.GeneratorType)
            positions = [e.position for e in everything]
            assert len(positions) == 62
            assert positions == sorted(set(positions))
            assert [e.position for e in store.read_all(positions[3], limit=20)] == positions[3:23]
        finally:
            store.close()
