"""History, snapshots, schema evolution, export and copy at their edges (found by helper-31's
review; each test failed before its fix): positions a copy must not hand out again, truncated
events no snapshot covers (rebuild, diff, state at a time), a copy's projections, upcasters
that raise, snapshots of sets and of int-keyed dicts, --where on booleans, times under an ICU
collation, a saga begun by an appended event, and bad inputs to the history verbs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from backstage_actors import Aggregate, Projection, register_event, upcaster
from backstage_actors._copy import copy_store
from backstage_actors.cli import run
from backstage_actors.errors import AggregateFailed
from backstage_actors.history import HistoryError, diff, state_of
from backstage_actors.store import EventStore
from examples.bank import make_app as make_bank
from examples.bank.domain import Deposit, OpenAccount

from .dispatch_domain import Add, Count, Tally, aggregate_nodes, make_app


@attrs.frozen
class RvhDeposited:
    account: str
    amount: int


def _fill_then_erase_newest(where: str) -> int:
    """Events at positions 1..6, a subscriber that processed all six, then the stream that
    holds the newest events erased (a total truncation, as ``truncate_stream`` allows).
    Returns the highest position ever handed out."""
    with EventStore(where) as store:
        store.append("keep", [RvhDeposited("k", n) for n in range(1, 4)])
        last = store.append("erase", [RvhDeposited("e", n) for n in range(1, 4)])[-1].position
        store.save_checkpoint("notifier", last)
        assert store.truncate_stream("erase", before_version=4) == 3
        # The source itself never hands a position out twice.
        return last


@pytest.mark.parametrize(
    "route", ["sqlite->sqlite", "sqlite->postgres", "postgres->sqlite", "sqlite->memory"]
)
def test_a_copy_never_hands_out_a_position_the_source_already_used(
    tmp_path: Path, route: str, request: pytest.FixtureRequest
) -> None:
    """A copy continues where the source stopped: the next event appended to the copy gets a
    position past every position the source ever handed out, or a subscriber whose checkpoint
    was copied (at the last position it processed) skips it."""
    kinds = route.split("->")

    def where(kind: str, name: str) -> str:
        if kind == "postgres":
            return str(request.getfixturevalue("pg_dsn"))
        if kind == "memory":
            return f"memory:rvh-{name}"
        return str(tmp_path / f"{name}.db")

    source, destination = where(kinds[0], "source"), where(kinds[1], "copy")
    highest = _fill_then_erase_newest(source)
    keep_open = EventStore(destination) if kinds[1] == "memory" else None
    try:
        copy_store(source, destination)
        with EventStore(destination) as copy:
            checkpoint = copy.checkpoint("notifier")
            assert checkpoint == highest
            [event] = copy.append("new", [RvhDeposited("n", 1)])
            assert event.position > highest, (
                f"the copy handed out position {event.position} again (the source had used up"
                f" to {highest}, the notifier's checkpoint): the notifier never sees this event"
            )
            # What a subscriber reads after its checkpoint includes it.
            assert [e.position for e in copy.read_all(checkpoint + 1)] == [event.position]
    finally:
        if keep_open is not None:
            keep_open.close()


# -- a rebuild over truncated events ----------------------------------------------------------


def evict(system: Any, stream_id: str) -> None:
    """With ``max_live=1`` and one shard: a command to another aggregate passivates
    ``stream_id`` (as in test_passivation)."""
    system.dispatch(Add("evictor", 1))
    assert stream_id not in aggregate_nodes(system)


def test_a_rebuild_never_skips_truncated_events_the_snapshot_does_not_cover(
    start_app: Any,
) -> None:
    """Truncated past the latest snapshot (Tally snapshots every 5 events; the events 6 and 7
    are gone with no snapshot at 7): the aggregate that stayed live knows its total, a rebuilt
    one would start from the snapshot at 5 and apply 8, 9 on it, missing 6 and 7, and go on
    deciding on that total. It must refuse, as ``state_of`` does, not decide on a wrong state."""
    system = start_app(make_app(max_live=1, shards=1))
    for amount in range(1, 10):
        system.dispatch(Count("t", amount))
    assert system.store.load_snapshot("Tally-t").version == 5
    evict(system, "Tally-t")
    assert system.store.truncate_stream("Tally-t", before_version=8) == 7
    with pytest.raises(HistoryError, match="truncated"):
        state_of(system.store, Tally, "t")

    with pytest.raises(AggregateFailed, match="truncated"):
        result = system.dispatch(Count("t", 10))
        pytest.fail(f"decided on a wrong state: {result.events[0].data} (the total is 55)")
    assert system.store.stream_version("Tally-t") == 9


class RvhCounter(Aggregate):
    def __init__(self) -> None:
        self.total = 0

    def apply(self, event: Any) -> None:
        self.total += event.amount


class RvhSnapCounter(RvhCounter):
    snapshot_every = 3


@pytest.mark.parametrize("where", ["sqlite", "memory"])
def test_a_diff_over_truncated_events_is_an_error_not_a_wrong_answer(
    tmp_path: Path, where: str
) -> None:
    """The state at version 0 is the fresh one, but the events 1..3 that lead from it are gone:
    a diff from 0 to 5 cannot be told, and must not be told as 0 -> 9 (only 4 and 5 applied)
    when the state at 5 is 15."""
    database = str(tmp_path / "d.db") if where == "sqlite" else "memory:rvh-diff"
    with EventStore(database) as store:
        store.append("RvhSnapCounter-x", [RvhDeposited("x", n) for n in range(1, 6)])
        store.save_snapshot("RvhSnapCounter-x", 3, {"total": 6})
        store.truncate_stream("RvhSnapCounter-x", before_version=4)
        assert state_of(store, RvhSnapCounter, "x").total == 15
        assert diff(store, RvhSnapCounter, "x", 3, 5)["changed"] == {"total": [6, 15]}
        with pytest.raises(HistoryError, match="truncated"):
            changes = diff(store, RvhSnapCounter, "x", 0, 5)
            pytest.fail(f"a wrong diff: {changes['changed']} (the state at 5 is 15)")
        with pytest.raises(HistoryError, match="truncated"):
            changes = diff(store, RvhSnapCounter, "x", 0, 2)  # (none of its events is kept)
            pytest.fail(f"a wrong diff: {changes['changed']} (the state at 2 is 3)")


# -- an application on a copied store ---------------------------------------------------------


def _balances(store: EventStore) -> list[tuple[Any, ...]]:
    sql = "SELECT account_id, balance FROM balances ORDER BY account_id"
    if store.kind == "postgres":
        return [tuple(r) for r in store.handle.query(sql)]
    return [tuple(r) for r in store.handle.execute(sql).fetchall()]


@pytest.mark.parametrize("route", ["sqlite->sqlite", "sqlite->postgres", "postgres->sqlite"])
def test_the_bank_goes_on_on_a_copy_with_its_balances(
    tmp_path: Path, route: str, request: pytest.FixtureRequest
) -> None:
    """``backstage copy`` moves the store's tables and the checkpoints, not the projection's
    own tables (they are the application's): on the copy the balances projection found its
    checkpoint at the end and no table, so every account it had shown was gone and the next
    deposit to one was parked ("no balances row"). A projection whose tables are all missing
    while its checkpoint says it wrote them replays from the origin. The transfer saga goes on
    too (its state and checkpoint are copied)."""
    from examples.bank.transfers import TransferMoney

    def where(kind: str, name: str) -> str:
        if kind == "postgres":
            return str(request.getfixturevalue("pg_dsn"))
        return str(tmp_path / f"{name}.db")

    source_kind, destination_kind = route.split("->")
    source = where(source_kind, "bank")
    with make_bank(source).start(base="simple") as system:
        system.dispatch(OpenAccount("ada", "Ada"))
        system.dispatch(Deposit("ada", 100))
        system.dispatch(OpenAccount("bo", "Bo"))
        system.dispatch(TransferMoney("t-1", "ada", "bo", 30))
        system.settle()
        assert _balances(system.store) == [("ada", 70), ("bo", 30)]
    destination = where(destination_kind, "copy")
    copy_store(source, destination)

    with make_bank(destination).start(base="simple") as system:
        system.dispatch(Deposit("ada", 5), consistency="strong")
        system.dispatch(TransferMoney("t-2", "bo", "ada", 7))
        system.settle()
        assert system.store.dead_letters(None) == []
        assert _balances(system.store) == [("ada", 82), ("bo", 23)]
        # Nothing was done twice: one withdrawal and one deposit per transfer.
        kinds = [e.type for e in system.store.read_stream("Account-bo")]
        assert kinds == ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"], kinds


# -- the history verbs name every bad input at once --------------------------------------------


def test_history_verbs_name_every_bad_input_in_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One run tells everything that is wrong with its input (exit 2, one line), not the first
    problem only, to be found again on the next run."""
    db = str(tmp_path / "bank.db")
    with make_bank(db).start(base="simple") as system:
        system.dispatch(OpenAccount("ada", "Ada"))
        system.dispatch(Deposit("ada", 100))
    app = ["--app", "examples.bank:app", "--db", db]
    out = str(tmp_path / "x.jsonl")
    cases = [
        (
            [
                "export",
                out,
                "--format",
                "xml",
                "--where",
                "a b=1",
                "--since",
                "someday",
                "--db",
                db,
            ],
            ["unknown export format 'xml'", "'a b'", "--since: bad time 'someday'"],
        ),
        (
            ["export", out, "--format", "parquet", "--resume", "--where", "user", "--db", db],
            ["--resume works with jsonl only", "--where 'user': use FIELD=VALUE"],
        ),
        (
            ["diff", "Account-ada", "--from", "-1", "--to", "9", *app],
            ["has no version -1", "has no version 9"],
        ),
        (
            ["state", "Nothing-1", "--at", "someday", *app],
            ["bad time 'someday'", "'Nothing-1' is no stream of bank's aggregates"],
        ),
    ]
    for args, messages in cases:
        code = run(args)
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert len(err.splitlines()) == 1, err
        for message in messages:
            assert message in err, (args, err)


# -- --where on a boolean, the same on every store ---------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "memory"])
def test_where_on_a_boolean_or_a_number_matches_the_same_events_on_every_store(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """``backstage events --where flagged=true`` is what an audit of a boolean looks like: on
    SQLite it found nothing (json_extract gives 1 for true), and ``--where flagged=1`` found
    the ``true`` events too; PostgreSQL and memory compare the value's JSON text."""
    from backstage_actors.history import query_rows
    from backstage_actors.store.records import EventQuery

    where = {
        "sqlite": str(tmp_path / "w.db"),
        "memory": "memory:rvh-where",
        "postgres": "",
    }[kind] or str(request.getfixturevalue("pg_dsn"))
    with EventStore(where) as store:
        for n, flag in enumerate([True, False, 1, 0, "true", None]):
            store.append(f"s-{n}", [RvhDeposited("x", n)], metadata={"flagged": flag})

        def found(value: str) -> list[str]:
            query = EventQuery(metadata=(("flagged", value),))
            return [row[2] for row in query_rows(store, query)]

        assert found("true") == ["s-0", "s-4"]
        assert found("false") == ["s-1"]
        assert found("1") == ["s-2"]
        assert found("0") == ["s-3"]


# -- state_of and snapshots of a class that takes none -------------------------------------------


def test_state_of_a_class_that_takes_no_snapshots_ignores_old_ones(tmp_path: Path) -> None:
    """The class took snapshots once (its state was ``amount_sum`` then); it takes none now,
    so it never bumped ``snapshot_version`` when it renamed its state to ``total``. The live
    aggregate looks up no snapshot for such a class and replays; ``state_of`` must give the
    same state, not restore the old shape and replay only the events after it."""
    with EventStore(str(tmp_path / "s.db")) as store:
        store.append("RvhCounter-x", [RvhDeposited("x", n) for n in range(1, 6)])
        store.save_snapshot("RvhCounter-x", 3, {"amount_sum": 6}, 1, "RvhCounter")
        assert RvhCounter.snapshot_every is None
        replayed = RvhCounter()
        for event in store.read_stream("RvhCounter-x"):
            replayed.apply(event.data)
        assert replayed.total == 15
        for version in (3, 4, 5):
            rebuilt = state_of(store, RvhCounter, "x", version=version)
            assert rebuilt.total == sum(range(1, version + 1)), version
            assert not hasattr(rebuilt, "amount_sum")


def test_state_at_a_time_among_truncated_events_does_not_say_the_stream_had_none(
    tmp_path: Path,
) -> None:
    """Events 1..3 truncated (a snapshot at 3 kept), 4 and 5 kept: at a time between 3 and 4
    the stream held three events. "had no event yet" is false; the error must say that the
    events of that time were truncated."""
    from datetime import timedelta

    with EventStore(str(tmp_path / "t.db")) as store:
        store.append("RvhSnapCounter-x", [RvhDeposited("x", n) for n in range(1, 4)])
        store.save_snapshot("RvhSnapCounter-x", 3, {"total": 6})
        [fourth] = store.append("RvhSnapCounter-x", [RvhDeposited("x", 4)])
        store.append("RvhSnapCounter-x", [RvhDeposited("x", 5)])
        store.truncate_stream("RvhSnapCounter-x", before_version=4)
        before_fourth = fourth.recorded_at - timedelta(microseconds=1)
        with pytest.raises(HistoryError) as caught:
            state_of(store, RvhSnapCounter, "x", at=before_fourth)
        assert "had no event yet" not in str(caught.value)
        assert "truncated" in str(caught.value)
        assert state_of(store, RvhSnapCounter, "x", at=fourth.recorded_at).total == 10


# -- an upcaster that fails on one stored payload ------------------------------------------------


@register_event
@attrs.frozen
class RvhNoted:
    """Version 2 renamed ``txt`` to ``text`` and added ``size``."""

    __event_version__ = 2

    text: str
    size: int


@upcaster("RvhNoted", 1)
def _rvh_noted_v1(data: dict[str, Any]) -> dict[str, Any]:
    return {"text": data["txt"], "size": len(data["txt"])}


def test_an_upcaster_that_fails_makes_its_event_unreadable_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An old payload the upcaster does not expect (its KeyError) is an unreadable event like
    one whose JSON is broken: ``backstage events`` skips it with a warning naming its position
    and shows the rest (README, Reliability), and readers get a StoredEventError naming it."""
    import json

    from backstage_actors.errors import StoredEventError

    db = str(tmp_path / "up.db")
    topic = f"{RvhNoted.__module__}:RvhNoted"
    with EventStore(db) as store:
        store.append("n-1", [RvhNoted("a", 1)])
        with store.transaction():
            store.recorder.import_rows(
                "events",
                [
                    (
                        2,
                        "old-1",
                        "n-1",
                        2,
                        "RvhNoted",
                        1,
                        topic,
                        json.dumps({"txt": "hello"}),
                        "{}",
                        "2026-01-01T00:00:00+00:00",
                    ),
                    (
                        3,
                        "old-2",
                        "n-1",
                        3,
                        "RvhNoted",
                        1,
                        topic,
                        json.dumps({"text": "odd"}),
                        "{}",
                        "2026-01-01T00:00:00+00:00",
                    ),
                ],
            )
        unreadable: list[StoredEventError] = []
        readable = list(store.read_all(on_unreadable=unreadable.append))
        assert [e.position for e in readable] == [1, 2]
        assert readable[1].data == RvhNoted("hello", 5)
        assert [e.position for e in unreadable] == [3]
        assert "KeyError" in str(unreadable[0]) and "RvhNoted" in str(unreadable[0])

    code = run(["events", "--db", db])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "warning: skipped the event at position 3" in err
    assert len(out.splitlines()) == 2


class RvhLog(Projection):
    """Appends a row per event (a replay would double them); declares its table in another
    case than it creates it (SQLite and PostgreSQL fold unquoted names)."""

    name = "rvh_log"
    tables = ("RvhLog",)

    def init(self, db: Any) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS rvhlog (position BIGINT)")

    def project(self, event: Any, metadata: Any, db: Any) -> None:
        db.execute("INSERT INTO rvhlog (position) VALUES (?)", (metadata.position,))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_projection_with_its_tables_is_not_replayed_on_restart(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """The check for lost tables must not mistake a table for missing (another case of its
    name): that would replay every event into the tables it kept."""
    from backstage_actors import Application

    database = (
        str(request.getfixturevalue("pg_dsn")) if kind == "postgres" else str(tmp_path / "l.db")
    )

    def app() -> Application:
        bank = make_bank(database)
        return Application("rvh", router=bank.router, projections=[RvhLog], database=database)

    for deposit in (1, 2):
        with app().start(base="simple") as system:
            if deposit == 1:
                system.dispatch(OpenAccount("ada", "Ada"))
            system.dispatch(Deposit("ada", deposit), consistency="strong")
            system.settle()
            rows = _rows(system.store, "SELECT position FROM rvhlog ORDER BY position")
            assert rows == [(n,) for n in range(1, deposit + 2)], rows


def _rows(store: EventStore, sql: str) -> list[tuple[Any, ...]]:
    if store.kind == "postgres":
        return [tuple(r) for r in store.handle.query(sql)]
    return [tuple(r) for r in store.handle.execute(sql).fetchall()]


# -- times on a PostgreSQL database whose collation is not C -------------------------------------


def test_times_compare_as_times_on_a_postgres_database_with_an_icu_collation(
    pg_server: Any,
) -> None:
    """``recorded_at`` is ISO 8601 text, compared as text: in C order the time of a whole
    second ('...:00+00:00') sorts before the same second's fractions ('...:00.5+00:00'), but
    an ICU collation puts '.' before '+'. On a database made with one, ``state --at`` a whole
    second counted an event of half a second later, and ``--since`` it left that event out."""
    import uuid

    import psycopg

    from backstage_actors.store.records import EventQuery

    name = f"rvh_icu_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            " LOCALE 'C.UTF-8'"
        )
    try:
        dsn = pg_server.dsn().replace("@/postgres?", f"@/{name}?")
        with EventStore(dsn) as store:
            topic = f"{RvhDeposited.__module__}:RvhDeposited"
            with store.transaction():
                store.recorder.import_rows(
                    "events",
                    [
                        (
                            1,
                            "e-1",
                            "RvhSnapCounter-x",
                            1,
                            "RvhDeposited",
                            1,
                            topic,
                            '{"account": "x", "amount": 1}',
                            "{}",
                            "2026-01-01T00:00:00+00:00",
                        ),
                        (
                            2,
                            "e-2",
                            "RvhSnapCounter-x",
                            2,
                            "RvhDeposited",
                            1,
                            topic,
                            '{"account": "x", "amount": 2}',
                            "{}",
                            "2026-01-01T00:00:01.500000+00:00",
                        ),
                    ],
                )
            whole_second = "2026-01-01T00:00:01+00:00"
            assert store.recorder.version_at("RvhSnapCounter-x", whole_second) == 1
            since = store.recorder.query_page(0, 10, EventQuery(since=whole_second))
            assert [row[0] for row in since] == [2]
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- the trace of a request begun by an event appended without a command --------------------------


def test_the_trace_of_a_saga_begun_by_an_appended_event_starts_with_that_event(
    tmp_path: Path,
) -> None:
    """An event appended to the store directly (an integration: no command, no correlation id)
    starts the transfer saga; the process manager's commands carry its event id as their
    correlation and causation. Their trace, found from any of its ids, must hold that first
    event with the saga under it, not leave it out."""
    from examples.bank.transfers import TransferRequested

    from .conftest import wait_until

    with make_bank(str(tmp_path / "t.db")).start(base="simple") as system:
        system.dispatch(OpenAccount("a", "A"))
        system.dispatch(OpenAccount("b", "B"))
        system.dispatch(Deposit("a", 100))
        [begun] = system.store.append("Transfer-x", [TransferRequested("x", "a", "b", 10)])

        def completed() -> bool:
            system.settle()
            return system.store.stream_version("Transfer-x") == 2  # TransferCompleted

        wait_until(completed, timeout=30, what="the saga's three steps")
        tree = system.trace(begun.event_id)
        assert tree["events"] == 4 and tree["commands"] == 3
        [root] = tree["roots"]
        assert (root["kind"], root["event_id"]) == ("event", begun.event_id)
        [withdraw] = root["children"]
        assert (withdraw["command"], withdraw["process_manager"]) == (
            "WithdrawForTransfer",
            "transfers",
        )
        # The same tree from a command of the saga.
        assert system.trace(withdraw["command_id"])["roots"] == tree["roots"]


def test_export_to_a_file_it_cannot_write_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory that does not exist, a directory in the file's place: one line naming the
    file and why (exit 2), not a Python traceback."""
    db = str(tmp_path / "bank.db")
    with make_bank(db).start(base="simple") as system:
        system.dispatch(OpenAccount("ada", "Ada"))
    (tmp_path / "a-dir").mkdir()
    for target, extra in [
        (tmp_path / "missing" / "x.jsonl", []),
        (tmp_path / "a-dir", []),
        (tmp_path / "a-dir", ["--resume"]),
    ]:
        code = run(["export", str(target), *extra, "--db", db])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert len(err.splitlines()) == 1 and str(target) in err, err


# -- an aggregate that holds a set ---------------------------------------------------------------


@attrs.frozen
class RvhTag:
    item_id: str
    tag: str


@attrs.frozen
class RvhTagged:
    tag: str


class RvhItem(Aggregate):
    """A set in its state, as plain Python aggregates often hold."""

    snapshot_every = 2

    def __init__(self) -> None:
        self.tags: set[str] = set()

    def execute(self, command: Any) -> Any:
        return RvhTagged(command.tag)

    def apply(self, event: Any) -> None:
        self.tags = self.tags | {event.tag}


def rvh_item_app(database: str) -> Any:
    from backstage_actors import Application, Router

    router = Router()
    router.dispatch(RvhTag, to=RvhItem, identity="item_id")
    return Application("rvh_items", router=router, database=database)


RVH_ITEMS = rvh_item_app("rvh-items.db")


def test_an_aggregate_holding_a_set_has_snapshots_and_a_state_to_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A set is no JSON: its snapshots were never saved (a warning at each attempt), so
    ``snapshot_every`` did nothing, and ``backstage state`` and ``diff`` ended in a traceback
    (TypeError: Object of type set is not JSON serializable)."""
    db = str(tmp_path / "items.db")
    with rvh_item_app(db).start(base="simple") as system:
        for tag in ("b", "a", "c"):
            system.dispatch(RvhTag("i", tag))
        snapshot = system.store.load_snapshot("RvhItem-i")
        assert snapshot is not None and snapshot.version == 2, snapshot
        assert state_of(system.store, RvhItem, "i", version=2).tags == {"a", "b"}
        assert state_of(system.store, RvhItem, "i").tags == {"a", "b", "c"}

    app = ["--app", f"{__name__}:RVH_ITEMS", "--db", db]
    assert run(["state", "RvhItem-i", "--json", *app]) == 0, capsys.readouterr().err
    shown = json.loads(capsys.readouterr().out)
    assert sorted(shown["state"]["tags"]) == ["a", "b", "c"]
    assert run(["diff", "RvhItem-i", "--from", "1", "--to", "3", *app]) == 0
    out = capsys.readouterr().out
    assert "v3 #3 RvhTagged: tags" in out, out


# -- a snapshot of a state keyed by numbers --------------------------------------------------------


@attrs.frozen
class RvhBook:
    hall_id: str
    seat: int
    buyer: str


@attrs.frozen
class RvhBooked:
    seat: int
    buyer: str


class RvhHall(Aggregate):
    """Seats by number, annotated as the docstrings ask (so a snapshot restores int keys)."""

    snapshot_every = 2
    seats: dict[int, str]

    def __init__(self) -> None:
        self.seats = {}

    def execute(self, command: Any) -> Any:
        if command.seat in self.seats:
            raise ValueError(f"seat {command.seat} is taken")
        return RvhBooked(command.seat, command.buyer)

    def apply(self, event: Any) -> None:
        self.seats = {**self.seats, event.seat: event.buyer}


def test_a_snapshot_of_a_dict_keyed_by_int_restores(tmp_path: Path) -> None:
    """JSON object keys are strings: a snapshot of ``dict[int, str]`` never restored (the
    strict int hook refused "1"), so every rebuild replayed from the first event, and once the
    events behind the snapshot were truncated the hall could not be rebuilt at all."""
    from backstage_actors import Application, Router

    router = Router()
    router.dispatch(RvhBook, to=RvhHall, identity="hall_id")
    database = str(tmp_path / "hall.db")
    with Application("rvh_hall", router=router, database=database).start() as system:
        system.dispatch(RvhBook("h", 1, "ada"))
        system.dispatch(RvhBook("h", 2, "bo"))
        snapshot = system.store.load_snapshot("RvhHall-h")
        assert snapshot is not None and snapshot.version == 2
        restored = RvhHall()
        restored.restore_snapshot(snapshot.state)
        assert restored.seats == {1: "ada", 2: "bo"}
        system.store.truncate_stream("RvhHall-h", before_version=3)
        assert state_of(system.store, RvhHall, "h").seats == {1: "ada", 2: "bo"}
