"""The recorder queries history needs (``backstage_actors.history``), part of the conformance
suite: :class:`~tests.store_conformance.EventStoreConformance` inherits these, so they run on
every recorder (SQLite, PostgreSQL, memory)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from backstage_actors.errors import BackstageError
from backstage_actors.store import EventStore
from backstage_actors.store.records import EventQuery

__all__ = ["HistoryConformance"]


def _fill(store: EventStore) -> None:
    """Six events over three streams, by two users, in two requests."""
    # Late import of the suite's event class: this module is imported by store_conformance.
    from .store_conformance import ConfDeposited

    store.append(
        "acct-1", [ConfDeposited("1", 1)], metadata={"user": "ada", "correlation_id": "r1"}
    )
    store.append(
        "acct-2",
        [ConfDeposited("2", 2)],
        metadata={"user": "bob", "correlation_id": "r1", "causation_id": "e1"},
    )
    store.append(
        "acct-1",
        [ConfDeposited("1", 3)],
        metadata={"user": "ada", "correlation_id": "r2", "tries": 3},
    )
    store.append("other-1", [ConfDeposited("o", 4)], metadata={"user": "ada"})
    store.append(
        "acct-10", [ConfDeposited("10", 5), ConfDeposited("10", 6)], metadata={"user": "cy"}
    )


def _positions(rows: list[tuple[object, ...]]) -> list[int]:
    return [int(r[0]) for r in rows]  # type: ignore[call-overload]


class HistoryConformance:
    def test_query_page_filters_on_metadata(self, store: EventStore) -> None:
        _fill(store)
        ada = EventQuery(metadata=(("user", "ada"),))
        assert _positions(store.recorder.query_page(0, 100, ada)) == [1, 3, 4]
        both = EventQuery(metadata=(("user", "ada"), ("correlation_id", "r2")))
        assert _positions(store.recorder.query_page(0, 100, both)) == [3]
        assert _positions(
            store.recorder.query_page(0, 100, EventQuery(metadata=(("causation_id", "e1"),)))
        ) == [2]
        # A number in the metadata matches its decimal text, as on a command line.
        assert _positions(
            store.recorder.query_page(0, 100, EventQuery(metadata=(("tries", "3"),)))
        ) == [3]
        assert store.recorder.query_page(0, 100, EventQuery(metadata=(("user", "eve"),))) == []

    def test_query_page_filters_on_type_stream_prefix_and_pages(self, store: EventStore) -> None:
        _fill(store)
        acct = EventQuery(stream_prefix="acct-1")
        assert _positions(store.recorder.query_page(0, 100, acct)) == [1, 3, 5, 6]
        assert _positions(store.recorder.query_page(3, 1, acct)) == [5]
        assert store.recorder.query_page(0, 100, EventQuery(types=("Nothing",))) == []
        assert len(store.recorder.query_page(0, 100, EventQuery(types=("ConfDeposited", "X")))) == 6
        row = store.recorder.query_page(0, 1, EventQuery())[0]
        assert row[1:5] == (row[1], "acct-1", 1, "ConfDeposited")

    def test_query_page_since_a_time(self, store: EventStore) -> None:
        _fill(store)
        time.sleep(0.002)  # (a distinct timestamp, not synchronisation)
        middle = datetime.now(UTC).isoformat()
        store.append("late", [], metadata={})
        from .store_conformance import ConfDeposited

        store.append("late", [ConfDeposited("l", 7)])
        rows = store.recorder.query_page(0, 100, EventQuery(since=middle))
        assert [r[2] for r in rows] == ["late"]

    def test_a_bad_field_name_is_refused(self, store: EventStore) -> None:
        with pytest.raises(BackstageError, match="metadata field"):
            store.recorder.query_page(0, 10, EventQuery(metadata=(("user') OR 1=1 --", "x"),)))

    def test_version_at_and_event_by_id(self, store: EventStore) -> None:
        _fill(store)
        first = store.recorder.query_page(0, 1, EventQuery())[0]
        assert store.recorder.event_by_id(first[1])[:4] == first[:4]  # type: ignore[index]
        assert store.recorder.event_by_id("no-such-id") is None
        assert store.recorder.version_at("acct-1", "1970-01-01T00:00:00+00:00") == 0
        assert store.recorder.version_at("acct-1", "9999-01-01T00:00:00+00:00") == 2
        assert store.recorder.version_at("acct-1", str(first[9])) == 1
        assert store.recorder.version_at("nothing", "9999-01-01T00:00:00+00:00") == 0

    def test_rejections_are_kept_and_found(self, store: EventStore) -> None:
        meta = {"command_id": "c2", "correlation_id": "r1", "causation_id": "e1", "command": "Pay"}
        store.record_rejection("acct-1", meta, ValueError("no money"))
        store.record_rejection("acct-1", {"command_id": "c3", "command": "Pay"}, KeyError("k"))
        [found] = store.recorder.rejections("correlation_id", "r1")
        assert (found.command_id, found.causation_id, found.stream_id, found.command) == (
            "c2",
            "e1",
            "acct-1",
            "Pay",
        )
        assert (found.error_type, found.error) == ("ValueError", "no money")
        # Without ids of its own, a command is its own request.
        [alone] = store.recorder.rejections("command_id", "c3")
        assert alone.correlation_id == alone.causation_id == "c3"
        assert store.recorder.count("rejections") == 2
        assert len([r for page in store.recorder.export("rejections") for r in page]) == 2

    # -- the snapshot history ---------------------------------------------------------------

    def test_every_snapshot_is_kept_and_found_at_or_before_a_version(
        self, store: EventStore
    ) -> None:
        for version in (3, 6, 9):
            store.save_snapshot("acct", version, {"at": version}, 1, "Acct")
        store.save_snapshot("acct", 4, {"at": 4}, 1, "Acct")  # late and older: history only
        store.save_snapshot("other", 5, {"at": "other"})

        def at(version: int, schema: int | None = None) -> object:
            found = store.load_snapshot_at("acct", version, schema)
            return None if found is None else (found.version, found.state["at"], found.type)

        assert [at(v) for v in (2, 3, 4, 5, 8, 9, 100)] == [
            None,
            (3, 3, "Acct"),
            (4, 4, "Acct"),
            (4, 4, "Acct"),
            (6, 6, "Acct"),
            (9, 9, "Acct"),
            (9, 9, "Acct"),
        ]
        latest = store.load_snapshot("acct")  # the latest is still the latest
        assert latest is not None and latest.version == 9
        store.save_snapshot("acct", 6, {"at": "again"}, 1, "Acct")  # same version: replaced
        assert at(7) == (6, "again", "Acct")
        # One of another schema_version is passed over for the one before it.
        store.save_snapshot("acct", 12, {"at": 12}, 2, "Acct")
        assert at(20, 1) == (9, 9, "Acct")
        assert at(20, 2) == (12, 12, "Acct")
        assert at(11, 2) is None
        assert at(20) == (12, 12, "Acct")
        assert store.load_snapshot_at("nothing", 10) is None
        assert store.recorder.count("snapshot_history") == 6
        rows = [r for page in store.recorder.export("snapshot_history") for r in page]
        assert [(r[0], r[1]) for r in rows] == [("acct", n) for n in (3, 4, 6, 9, 12)] + [
            ("other", 5)
        ]

    def test_a_snapshot_rolled_back_is_kept_nowhere(self, store: EventStore) -> None:
        with pytest.raises(RuntimeError), store.transaction():
            store.save_snapshot("acct", 3, {"at": 3})
            raise RuntimeError("undo")
        assert store.load_snapshot("acct") is None
        assert store.load_snapshot_at("acct", 3) is None

    def test_truncation_drops_the_snapshots_no_kept_event_follows(self, store: EventStore) -> None:
        from .store_conformance import deposits

        store.append("s", deposits(10))
        store.append("t", deposits(3))
        for version in (2, 4, 5, 8):
            store.save_snapshot("s", version, {"at": version})
        store.save_snapshot("t", 1, {"at": 1})
        store.truncate_stream("s", before_version=6)
        kept = [r[:2] for page in store.recorder.export("snapshot_history") for r in page]
        # Version 5 stays: from it the events 6.. rebuild every later state.
        assert kept == [("s", 5), ("s", 8), ("t", 1)]
        assert store.load_snapshot_at("s", 4) is None
        found = store.load_snapshot_at("s", 7)
        assert found is not None and found.version == 5
        latest = store.load_snapshot("s")
        assert latest is not None and latest.version == 8
