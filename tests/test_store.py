"""The SQLite event store: the conformance suite, plus what only a file on disk can show.

Upcasting and renames of stored types, bad data at rest, a read-only file, group commit, and two
OS processes appending to one stream at the same time.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from backstage_actors.errors import (
    BackstageError,
    SerializationError,
    StorageError,
    StoredEventError,
    WrongExpectedVersion,
)
from backstage_actors.event import event_topic, register_event, upcaster
from backstage_actors.store import NO_STREAM, AppendRequest, EventStore, RecordedEvent

from .conftest import run_at_once
from .store_conformance import EventStoreConformance


class TestSQLiteEventStore(EventStoreConformance):
    def make_store(self, path: Path, *, page_size: int | None = None) -> EventStore:
        if page_size is None:
            return EventStore(str(path))
        return EventStore(str(path), page_size=page_size)


# -- events ----------------------------------------------------------------------------------


@attrs.frozen
class StoreNoted:
    text: str


@attrs.frozen
class StoreOrderPlaced:
    """Version 3: amounts in cents with a currency.

    v1 stored ``{"amount": 5}`` (whole euros), v2 ``{"amount_cents": 500}``.
    """

    __event_type__ = "StoreOrderPlaced"
    __event_version__ = 3

    amount_cents: int
    currency: str


@upcaster("StoreOrderPlaced", 1)
def _order_placed_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"amount_cents": data["amount"] * 100}


@upcaster("StoreOrderPlaced", 2)
def _order_placed_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "EUR"}


@attrs.frozen
class StoreNoUpcaster:
    """Version 2 with no upcaster from 1 registered."""

    __event_version__ = 2

    value: int


@attrs.frozen
class StoreCustomerSignedUp:
    """Renamed from ``CustomerRegistered`` (in a module that no longer exists): the stored name stays."""

    __event_type__ = "StoreCustomerRegistered"

    customer_id: str
    name: str


register_event(StoreCustomerSignedUp)  # old rows name a module path that is gone


@attrs.frozen
class StoreFoundByTopic:
    """Never appended nor registered here: a reader finds it through the stored module path."""

    value: int


@attrs.frozen
class StoreConcurrent:
    writer: str
    seq: int


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    store = EventStore(str(tmp_path / "events.db"))
    try:
        yield store
    finally:
        store.close()


def insert_raw(
    store: EventStore,
    stream_id: str,
    type_name: str,
    data: str,
    schema_version: int = 1,
    topic: str | None = None,
    metadata: str = "{}",
) -> int:
    """Write a row the way an older release (or a damaged disk) left it; returns its position."""
    with store.transaction():
        version = store.stream_version(stream_id) + 1
        position = store.conn.execute(
            "INSERT INTO events (event_id, stream_id, version, type, schema_version, topic, data,"
            " metadata, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(uuid.uuid4()),
                stream_id,
                version,
                type_name,
                schema_version,
                topic,
                data,
                metadata,
                datetime.now(UTC).isoformat(),
            ),
        ).lastrowid
        store.conn.execute(
            "INSERT INTO streams (stream_id, version) VALUES (?, ?)"
            " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
            (stream_id, version),
        )
    assert position is not None
    return position


# -- upcasting and renames -------------------------------------------------------------------


def test_old_payloads_are_upcast_through_every_version(store: EventStore) -> None:
    topic = event_topic(StoreOrderPlaced)
    insert_raw(store, "order-1", "StoreOrderPlaced", '{"amount": 5}', 1, topic)
    insert_raw(store, "order-1", "StoreOrderPlaced", '{"amount_cents": 250}', 2, topic)
    store.append("order-1", [StoreOrderPlaced(99, "JPY")])

    expected = [
        StoreOrderPlaced(500, "EUR"),
        StoreOrderPlaced(250, "EUR"),
        StoreOrderPlaced(99, "JPY"),
    ]
    assert [e.data for e in store.read_stream("order-1")] == expected
    assert [e.data for e in store.read_all()] == expected
    assert [event for _, event in store.stream_events("order-1")] == expected
    # The stored row keeps what was written; new appends are written at the class's version.
    rows = store.conn.execute("SELECT schema_version FROM events ORDER BY position").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]


def test_a_missing_upcaster_or_a_newer_payload_is_a_stored_event_error(store: EventStore) -> None:
    topic = event_topic(StoreNoUpcaster)
    old = insert_raw(store, "s", "StoreNoUpcaster", '{"value": 1}', 1, topic)
    newer = insert_raw(store, "t", "StoreOrderPlaced", '{"amount_cents": 1}', 4, None)

    with pytest.raises(StoredEventError) as caught:
        list(store.read_stream("s"))
    assert caught.value.position == old
    assert f"position {old}" in str(caught.value)
    assert "no upcaster from 1" in str(caught.value)

    with pytest.raises(StoredEventError) as caught:
        list(store.read_stream("t"))
    assert caught.value.position == newer
    assert "newer than the class" in str(caught.value)


def test_renamed_class_keeps_its_stored_type_name(store: EventStore) -> None:
    old_row = insert_raw(
        store,
        "customer-1",
        "StoreCustomerRegistered",
        '{"customer_id": "c-1", "name": "Ada"}',
        topic="shop.old_events:CustomerRegistered",  # the module was deleted in the rename
    )
    [recorded] = store.append("customer-1", [StoreCustomerSignedUp("c-1", "Ada L.")])

    assert recorded.type == "StoreCustomerRegistered"
    read = list(store.read_stream("customer-1"))
    assert [e.type for e in read] == ["StoreCustomerRegistered"] * 2
    assert [e.data for e in read] == [
        StoreCustomerSignedUp("c-1", "Ada"),
        StoreCustomerSignedUp("c-1", "Ada L."),
    ]
    assert read[0].position == old_row
    stored = store.conn.execute("SELECT type FROM events WHERE position = ?", (recorded.position,))
    assert stored.fetchone()[0] == "StoreCustomerRegistered"


def test_an_unregistered_type_is_imported_from_its_stored_module_path(store: EventStore) -> None:
    insert_raw(
        store, "s", "StoreFoundByTopic", '{"value": 7}', topic=event_topic(StoreFoundByTopic)
    )

    assert [e.data for e in store.read_stream("s")] == [StoreFoundByTopic(7)]


# -- bad data at rest ------------------------------------------------------------------------


def read_until_error(events: Iterator[RecordedEvent]) -> tuple[list[int], StoredEventError]:
    """The versions read before the error, and the error: a bad row must stop the read."""
    seen: list[int] = []
    with pytest.raises(StoredEventError) as caught:
        for event in events:
            seen.append(event.version)
    return seen, caught.value


@pytest.mark.parametrize(
    ("type_name", "data", "topic", "metadata", "words"),
    [
        ("StoreNoted", '{"text": "half', event_topic(StoreNoted), "{}", "JSON data is broken"),
        ("StoreVanished", '{"text": "x"}', "no_such_module.events:StoreVanished", "{}", "unknown"),
        ("StoreNeverHadTopic", '{"text": "x"}', None, "{}", "unknown event type"),
        ("StoreNoted", '{"text": "x"}', event_topic(StoreNoted), "{not json", "metadata is broken"),
        ("StoreNoted", '{"words": "x"}', event_topic(StoreNoted), "{}", "text"),
    ],
    ids=["broken-json", "unimportable-topic", "no-topic", "broken-metadata", "missing-field"],
)
def test_bad_rows_raise_a_stored_event_error_naming_the_position(
    store: EventStore, type_name: str, data: str, topic: str | None, metadata: str, words: str
) -> None:
    store.append("s", [StoreNoted("fine")])
    bad = insert_raw(store, "s", type_name, data, topic=topic, metadata=metadata)
    store.append("s", [StoreNoted("after")])

    for reader in (store.read_stream("s"), store.read_all()):
        seen, error = read_until_error(reader)
        assert seen == [1]  # the bad event is never skipped, nor what follows it read
        assert error.position == bad
        assert f"position {bad}" in str(error)
        assert words in str(error)
    with pytest.raises(StoredEventError):
        store.event_at(bad)
    # The row stays where it is for a human to repair: nothing was deleted.
    assert store.stream_version("s") == 3


# -- the file --------------------------------------------------------------------------------


def test_a_read_only_file_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.db"
    with EventStore(str(path)) as store:
        store.append("s", [StoreNoted("before")])
    path.chmod(0o444)
    if os.geteuid() == 0:
        # Root ignores file permissions: after chmod 0o444 root can still write the file, so here
        # the file is opened the way SQLite opens an unwritable file for everyone else: read-only.
        connect = sqlite3.connect

        def read_only(database: str, **kwargs: Any) -> sqlite3.Connection:
            return connect(f"file:{database}?mode=ro", uri=True, **kwargs)

        monkeypatch.setattr(sqlite3, "connect", read_only)

    # Depending on how far SQLite gets, opening or appending fails: either way a StorageError
    # that names the file, never a raw sqlite3 error.
    with pytest.raises(StorageError, match=r"events\.db"):
        store = EventStore(str(path))
        try:
            store.append("s", [StoreNoted("refused")])
        finally:
            store.close()

    monkeypatch.undo()
    path.chmod(0o644)
    with EventStore(str(path)) as store:
        assert [e.data.text for e in store.read_all()] == ["before"]


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot open"):
        EventStore(str(tmp_path))


def test_events_survive_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    with EventStore(path) as store:
        written = store.append("s", [StoreNoted("one"), StoreNoted("two")], metadata={"u": "ada"})
        store.save_checkpoint("h", written[-1].position)

    with EventStore(path) as store:
        read = list(store.read_all())
        assert [(e.event_id, e.data, e.metadata) for e in read] == [
            (e.event_id, e.data, e.metadata) for e in written
        ]
        assert store.checkpoint("h") == written[-1].position
        assert store.append("s", [StoreNoted("three")], expected_version=2)[0].version == 3
    wal = sqlite3.connect(path)
    try:
        assert wal.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        wal.close()


def test_an_append_writes_the_events_alone_and_truncation_keeps_the_version(
    store: EventStore,
) -> None:
    """A stream's version comes from its events' index, so an append writes no second row (a
    commit of one event is one page fewer to flush); only truncation records the version."""
    store.append("s", [StoreNoted("one"), StoreNoted("two")])
    store.append("s", [StoreNoted("three")], expected_version=2)
    assert store.conn.execute("SELECT count(*) FROM streams").fetchone()[0] == 0
    assert store.stream_version("s") == 3

    store.truncate_stream("s", before_version=4)

    assert store.conn.execute("SELECT stream_id, version FROM streams").fetchall() == [("s", 3)]
    assert store.stream_version("s") == 3
    assert store.append("s", [StoreNoted("four")], expected_version=3)[0].version == 4
    with pytest.raises(WrongExpectedVersion):
        store.append("s", [StoreNoted("stale")], expected_version=2)


def test_a_streams_row_written_by_an_earlier_version_still_counts(store: EventStore) -> None:
    """Databases written before this layout have a streams row for every stream."""
    store.append("s", [StoreNoted("one")])
    store.conn.execute("INSERT INTO streams (stream_id, version) VALUES ('s', 1)")

    assert store.append("s", [StoreNoted("two")], expected_version=1)[0].version == 2
    assert store.stream_version("s") == 2


# -- group commit ----------------------------------------------------------------------------


def test_append_batches_keeps_each_outcome(store: EventStore) -> None:
    store.append("b", [StoreNoted("b1")])
    requests = [
        AppendRequest("a", [StoreNoted("a1"), StoreNoted("a2")], NO_STREAM),
        AppendRequest("b", [StoreNoted("b2")], expected_version=5),  # b is at 1
        AppendRequest("c", [StoreNoted("c1")], 0, metadata={"user": "ada"}),
    ]

    first, middle, last = store.append_batches(requests)

    assert isinstance(middle, WrongExpectedVersion)
    assert (middle.stream_id, middle.expected, middle.actual) == ("b", 5, 1)
    assert isinstance(first, list)
    assert isinstance(last, list)
    assert [(e.stream_id, e.version, e.data.text) for e in first + last] == [
        ("a", 1, "a1"),
        ("a", 2, "a2"),
        ("c", 1, "c1"),
    ]
    assert [e.position for e in first + last] == [2, 3, 4]  # the failure took no positions
    assert last[0].metadata == {"user": "ada"}
    assert [e.data.text for e in store.read_all()] == ["b1", "a1", "a2", "c1"]
    assert store.stream_version("b") == 1


def test_a_group_commit_checks_versions_in_order_and_numbers_positions(
    store: EventStore,
) -> None:
    """Many appends at once (one query for the versions, one insert for the rows)."""
    store.append("a", [StoreNoted("a1")])
    requests = [
        AppendRequest("a", [StoreNoted("a2")], 1),
        AppendRequest("b", [StoreNoted("b1"), StoreNoted("b2")], NO_STREAM),
        AppendRequest("a", [StoreNoted("a3")], 2),  # after the first request of this batch
        AppendRequest("a", [StoreNoted("stale")], 1),
        AppendRequest("c", [], NO_STREAM),
        AppendRequest("b", [StoreNoted("b3")], 2, metadata={"user": "ada"}),
    ]

    results = store.append_batches(requests)

    assert isinstance(results[3], WrongExpectedVersion) and results[3].actual == 3
    assert results[4] == []
    recorded = [e for r in results if isinstance(r, list) for e in r]
    assert [(e.stream_id, e.version, e.position, e.data.text) for e in recorded] == [
        ("a", 2, 2, "a2"),
        ("b", 1, 3, "b1"),
        ("b", 2, 4, "b2"),
        ("a", 3, 5, "a3"),
        ("b", 3, 6, "b3"),
    ]
    assert recorded[-1].metadata == {"user": "ada"}
    assert [(e.position, e.event_id) for e in store.read_all()][1:] == [
        (e.position, e.event_id) for e in recorded
    ]


def test_a_group_commit_answers_a_repeat_with_what_was_stored(store: EventStore) -> None:
    first = store.append("s", [StoreNoted("one")], expected_version=0, event_ids=["e-1"])
    requests = [
        AppendRequest("t", [StoreNoted("other")], NO_STREAM),
        AppendRequest("s", [StoreNoted("one")], 0, event_ids=["e-1"]),  # sent again
    ]

    other, again = store.append_batches(requests)

    assert isinstance(other, list) and other[0].version == 1
    assert again == first
    assert store.stream_version("s") == 1


def test_append_batches_rolls_back_only_the_failing_request(store: EventStore) -> None:
    store.append("other", [StoreNoted("x")], event_ids=["taken"])
    requests = [
        AppendRequest("s", [StoreNoted("one")], 0),
        AppendRequest(
            "s", [StoreNoted("bad-id-1"), StoreNoted("bad-id-2")], event_ids=["n", "taken"]
        ),
        AppendRequest("s", [StoreNoted("bad-type")], 1, metadata={"x": object()}),
        AppendRequest("s", [StoreNoted("lone-bad-id")], 1, event_ids=["taken"]),  # no savepoint
        AppendRequest("s", [StoreNoted("two")], 1),  # sees the first request's write
    ]

    results = store.append_batches(requests)

    assert isinstance(results[1], Exception)
    assert isinstance(results[2], SerializationError)
    assert isinstance(results[3], BackstageError) and "already stored" in str(results[3])
    assert [e.data.text for r in results if isinstance(r, list) for e in r] == ["one", "two"]
    assert [(e.version, e.data.text) for e in store.read_stream("s")] == [(1, "one"), (2, "two")]
    assert [e.position for e in store.read_all()] == [1, 2, 3]  # the failures took none


def test_an_append_counting_on_a_failed_one_fails_too(store: EventStore, tmp_path: Any) -> None:
    """A writer that batches two decisions (the second made on the state after the first)
    must not see the second stored when the first fails, even where another writer's event
    brought the stream to the version the second expects."""
    store.append("s", [StoreNoted("one")])
    with EventStore(store.path) as other:
        other.append("s", [StoreNoted("theirs")], expected_version=1)
    requests = [
        AppendRequest("s", [StoreNoted("mine")], 1, event_ids=["m-1"]),  # lost the race
        AppendRequest("s", [StoreNoted("after mine")], 2, event_ids=["m-2"]),
        AppendRequest("s", [StoreNoted("after that")], 3),
        AppendRequest("t", [StoreNoted("elsewhere")], 0),
        AppendRequest("s", [StoreNoted("on what is stored")], 2),
    ]

    results = store.append_batches(requests)

    assert isinstance(results[0], WrongExpectedVersion) and results[0].actual == 2
    for chained in results[1:3]:
        assert isinstance(chained, WrongExpectedVersion)
        assert "earlier append of the same batch, which failed" in str(chained)
    assert [e.data.text for r in results[3:] if isinstance(r, list) for e in r] == [
        "elsewhere",
        "on what is stored",
    ]
    assert [e.data.text for e in store.read_stream("s")] == ["one", "theirs", "on what is stored"]


def test_an_append_counting_on_a_failed_new_stream_fails_too(store: EventStore) -> None:
    with EventStore(store.path) as other:
        other.append("s", [StoreNoted("theirs")], expected_version=NO_STREAM)
    requests = [
        AppendRequest("s", [StoreNoted("mine")], NO_STREAM),
        AppendRequest("s", [StoreNoted("after mine")], 1),
    ]

    mine, after = store.append_batches(requests)

    assert isinstance(mine, WrongExpectedVersion)
    assert isinstance(after, WrongExpectedVersion) and after.actual == -1
    assert [e.data.text for e in store.read_stream("s")] == ["theirs"]


def test_an_append_after_a_repeat_decided_on_its_first_attempt_fails(store: EventStore) -> None:
    """A command run again on a state that held its first attempt: the store answers it with
    the first attempt's events, so it stores nothing now, and what was decided after it must
    not be stored either (here another writer brought the stream to the version it expects)."""
    first = store.append("s", [StoreNoted("x")], expected_version=0, event_ids=["x-1"])
    with EventStore(store.path) as other:
        other.append("s", [StoreNoted("theirs")], expected_version=1)
    requests = [
        AppendRequest("s", [StoreNoted("x")], 1, event_ids=["x-1"]),  # decided after x itself
        AppendRequest("s", [StoreNoted("after x twice")], 2, event_ids=["y-1"]),
    ]

    again, after = store.append_batches(requests)

    assert again == first
    assert isinstance(after, WrongExpectedVersion) and after.actual == -1
    assert [e.data.text for e in store.read_stream("s")] == ["x", "theirs"]


def test_unserializable_metadata_in_a_group_commit_fails_only_its_append(
    store: EventStore,
) -> None:
    requests = [
        AppendRequest("s", [StoreNoted("bad")], 0, metadata={"x": object()}),
        AppendRequest("s", [StoreNoted("after it")], 1),
        AppendRequest("t", [StoreNoted("elsewhere")], 0),
    ]

    bad, after, elsewhere = store.append_batches(requests)

    assert isinstance(bad, SerializationError) and "$.x" in str(bad)
    assert isinstance(after, WrongExpectedVersion)
    assert isinstance(elsewhere, list) and elsewhere[0].version == 1
    assert store.stream_version("s") == 0


# -- two processes, one stream ---------------------------------------------------------------

CONCURRENT_STREAM = "contended"


def concurrent_writer(path: str, writer: str, count: int, barrier: Any, results: Any) -> None:
    """Append ``count`` events one by one with read-then-append, retrying on conflict.

    Both writers read the stream's version before the barrier and append right after it, so
    the first round is a guaranteed conflict; the rest race freely.
    """
    conflicts = 0
    try:
        # NORMAL: durability across power cuts is not what this test is about, isolation is.
        with EventStore(path, synchronous="NORMAL") as store:
            version = store.stream_version(CONCURRENT_STREAM)
            barrier.wait(timeout=60)
            seq = 0
            while seq < count:
                try:
                    store.append(
                        CONCURRENT_STREAM, [StoreConcurrent(writer, seq)], expected_version=version
                    )
                    seq += 1
                except WrongExpectedVersion:
                    conflicts += 1
                version = store.stream_version(CONCURRENT_STREAM)
        results.put((writer, conflicts, None))
    except BaseException as exc:
        results.put((writer, conflicts, f"{type(exc).__name__}: {exc}"))


@pytest.mark.process
def test_two_processes_append_to_one_stream(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    EventStore(path).close()  # create the schema once, before the race
    per_writer = 500
    reports = run_at_once(concurrent_writer, [(path, name, per_writer) for name in ("w1", "w2")])

    assert [error for _, _, error in reports] == [None, None]
    assert sum(conflicts for _, conflicts, _ in reports) >= 1
    with EventStore(path) as store:
        events = list(store.read_stream(CONCURRENT_STREAM))
        assert store.stream_version(CONCURRENT_STREAM) == 2 * per_writer
        assert [e.version for e in events] == list(range(1, 2 * per_writer + 1))
        positions = [e.position for e in events]
        assert all(a < b for a, b in itertools.pairwise(positions))
        assert len({e.event_id for e in events}) == 2 * per_writer
        for name in ("w1", "w2"):  # each writer's events, once each, in its own order
            assert [e.data.seq for e in events if e.data.writer == name] == list(range(per_writer))
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
