"""Handlers and projections under supervision: delivery, order, catch-up, crashes, error policies,
strong consistency, telemetry. Process managers, upcasting and rebuilds: test_subscribers.py."""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import sqlite3
import threading
import time
from typing import Any

import pytest

from backstage_actors import ConsistencyTimeout, telemetry

from .conftest import wait_until
from .handler_domain import (
    HdCurrentRecorder,
    HdDefaultPolicy,
    HdFlaky,
    HdIncrement,
    HdLateRecorder,
    HdNote,
    HdParker,
    HdRecorder,
    HdSkipper,
    HdSlowRecorder,
    HdSlowTally,
    HdSluggish,
    HdStopper,
    HdStreamWatcher,
    HdStuck,
    HdTally,
    make_app,
    query,
    seen,
    subscriber_nodes,
)

Start = Any  # the start_app fixture: start_app(app, **options) -> RunningSystem


# The tests that start an application run on SQLite and on the private PostgreSQL server.
STORES = ["sqlite", "postgres"]


def tally(system: Any, name: str = "hd_tally") -> tuple[list[int], int]:
    """The projection's rows (positions) and its per-event counter."""
    rows = [r[0] for r in query(system, f"SELECT position FROM {name} ORDER BY position")]
    count = query(system, f"SELECT n FROM {name}_count WHERE name = 'events'")
    return rows, count[0][0] if count else 0


def errors(system: Any, subscriber: str, position: int) -> list[int]:
    """The ``failures`` values the subscriber's ``error`` was called with for one event."""
    rows = query(
        system,
        "SELECT failures FROM hd_errors WHERE subscriber = ? AND position = ? ORDER BY id",
        subscriber,
        position,
    )
    return [r[0] for r in rows]


def letters(system: Any, subscriber: str) -> list[dict[str, Any]]:
    cursor = system.store.handle.execute(
        "SELECT * FROM dead_letters WHERE subscriber = ? ORDER BY id", (subscriber,)
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def checkpoint(system: Any, name: str) -> int:
    return int(system.store.checkpoint(name))


# -- delivery -------------------------------------------------------------------------------------


def test_every_subscriber_sees_every_event(start_app: Start) -> None:
    app = make_app(handlers=[HdRecorder], projections=[HdTally], process_managers=[HdStreamWatcher])
    system = start_app(app)
    # Three counters, interleaved: each stream's events are spread over the global order.
    results = system.dispatch_many([HdIncrement(f"c{i % 3}") for i in range(30)])
    assert all(not isinstance(r, BaseException) for r in results)

    last = system.settle()

    assert last == 30
    assert seen(system, "hd-recorder") == list(range(1, 31))
    assert tally(system) == (list(range(1, 31)), 30)
    states = dict(query(system, "SELECT process_id, state FROM process_managers"))
    assert sorted(states) == ["c0", "c1", "c2"]
    for state in states.values():
        assert json.loads(state) == {"totals": list(range(1, 11))}
    nodes = subscriber_nodes(system)
    assert {n: nodes[n]["kind"] for n in nodes} == {
        "hd-recorder": "handler",
        "hd-tally": "projection",
        "hd-watcher": "process_manager",
    }
    for node in nodes.values():
        assert (node["position"], node["lag"], node["failures"], node["parked"]) == (30, 0, 0, 0)
        assert (node["status"], node["restarts"]) == ("running", 0)


def test_each_stream_is_seen_in_version_order(start_app: Start) -> None:
    system = start_app(make_app(handlers=[HdRecorder]))

    # Four writers at once, each to two streams of its own; on multiproc they really overlap.
    def write(writer: int) -> None:
        for i in range(30):
            system.dispatch(HdIncrement(f"w{writer}-{i % 2}"))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    system.settle()

    rows = query(system, "SELECT stream_id, version, position FROM hd_seen ORDER BY id")
    assert len(rows) == 120
    assert [r[2] for r in rows] == sorted(r[2] for r in rows)
    versions: dict[str, list[int]] = {}
    for stream_id, version, _ in rows:
        versions.setdefault(stream_id, []).append(version)
    assert len(versions) == 8
    for stream_id, seen_versions in versions.items():
        assert seen_versions == list(range(1, 16)), stream_id


def test_a_subscriber_added_later_catches_up_from_its_start(start_app: Start) -> None:
    first = start_app(make_app(handlers=[HdRecorder]))
    first.dispatch_many([HdIncrement(f"c{i % 4}") for i in range(20)])
    first.settle()
    first.stop()

    second = start_app(make_app(handlers=[HdRecorder, HdLateRecorder, HdCurrentRecorder]))
    second.dispatch_many([HdIncrement("c9") for _ in range(5)])
    second.settle()

    # The new "origin" handler replays everything; the "current" one only what came after its
    # first start; the old one resumes from its checkpoint (no redelivery after a clean stop).
    assert seen(second, "hd-late") == list(range(1, 26))
    assert seen(second, "hd-current") == list(range(21, 26))
    assert seen(second, "hd-recorder") == list(range(1, 26))


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])
def test_sigkill_of_a_handler_and_a_projection_mid_stream(start_app: Start) -> None:
    app = make_app(handlers=[HdSlowRecorder], projections=[HdSlowTally])
    system = start_app(app)
    # Looked up beforehand: a busy subscriber answers a tree request only between pages.
    pids = {name: node["pid"] for name, node in subscriber_nodes(system).items()}

    # Commands keep coming from another thread, in batches (one commit per counter each), until
    # both subscribers are back, the backlog kept to a few hundred events (a second or so of
    # work). (20 batches and no more ran out before the tally was caught mid-page, once.)
    done = threading.Event()
    failed: list[BaseException] = []

    def write() -> None:
        while not done.is_set():
            behind = system.store.last_position() - min(checkpoint(system, n) for n in pids)
            if behind > 500:
                time.sleep(0.01)  # (pacing: the loop ends on ``done``)
                continue
            results = system.dispatch_many([HdIncrement(f"c{i % 5}") for i in range(50)])
            failed.extend(r for r in results if isinstance(r, BaseException))

    def kill(name: str, busy: Any) -> int:
        """SIGKILL the subscriber's process once it has a checkpoint and ``busy()`` says it is
        at work on a page."""
        wait_until(lambda: checkpoint(system, name) > 0 and busy(), what=f"{name} mid-stream")
        at = checkpoint(system, name)
        os.kill(pids[name], signal.SIGKILL)
        return at

    def fresh_rows() -> int:
        return len(query(system, "SELECT 1 FROM hd_seen WHERE pid != ?", pids["hd-slow-recorder"]))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        # The handler commits a row per event but its checkpoint per page: more rows than the
        # checkpoint says means it is inside a page.
        handler_at = kill(
            "hd-slow-recorder",
            lambda: len(seen(system, "hd-slow-recorder")) > checkpoint(system, "hd-slow-recorder"),
        )
        # The projection's page is one transaction: behind the store, it is inside one.
        tally_at = kill(
            "hd-slow-tally",
            lambda: system.store.last_position() > checkpoint(system, "hd-slow-tally"),
        )
        # Back at work (a tree request would wait for a busy subscriber's page to end).
        wait_until(fresh_rows, what="a fresh handler process")
        wait_until(lambda: checkpoint(system, "hd-slow-tally") > tally_at, what="a fresh tally")
    finally:
        done.set()
        writer.join()
    system.dispatch_many([HdIncrement("c0") for _ in range(50)])
    last = system.settle(timeout=60)

    assert failed == []
    assert last >= 100
    # At-least-once: every event handled; what the killed process had handled past its checkpoint
    # is handled again, nothing before it: the fresh process resumed from the checkpoint.
    deliveries = seen(system, "hd-slow-recorder")
    assert set(deliveries) == set(range(1, last + 1))
    twice = [p for p, n in collections.Counter(deliveries).items() if n > 1]
    assert all(p > handler_at for p in twice)
    fresh = query(
        system,
        "SELECT min(position) FROM hd_seen WHERE subscriber = ? AND pid != ?",
        "hd-slow-recorder",
        pids["hd-slow-recorder"],
    )
    assert fresh[0][0] > handler_at
    # Exactly-once: one row per event (the position is its key) and a counter equal to the count.
    assert tally(system, "hd_tally") == (list(range(1, last + 1)), last)
    assert system.store.dead_letters() == []
    for node in subscriber_nodes(system).values():
        assert (node["restarts"], node["status"], node["position"], node["lag"]) == (
            1,
            "running",
            last,
            0,
        )


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])
def test_subscribers_killed_at_the_same_instant_all_restart(start_app: Start) -> None:
    app = make_app(handlers=[HdRecorder], projections=[HdTally], process_managers=[HdStreamWatcher])
    system = start_app(app)
    system.dispatch_many([HdIncrement(f"c{i % 3}") for i in range(30)])
    system.settle()
    pids = [node["pid"] for node in subscriber_nodes(system).values()]

    # Thespian reports one of several children dying together; the supervisor must see them all.
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    system.dispatch_many([HdIncrement(f"c{i % 3}") for i in range(30)])
    last = system.settle(timeout=30)

    assert last == 60
    assert set(seen(system, "hd-recorder")) == set(range(1, 61))
    assert tally(system) == (list(range(1, 61)), 60)
    nodes = subscriber_nodes(system)
    assert all((n["restarts"], n["status"], n["lag"]) == (1, "running", 0) for n in nodes.values())
    assert not {n["pid"] for n in nodes.values()} & set(pids)


# -- errors ---------------------------------------------------------------------------------------


def test_an_event_failing_forever_is_parked_and_the_handler_goes_on(start_app: Start) -> None:
    system = start_app(make_app(handlers=[HdDefaultPolicy, HdRecorder], projections=[HdTally]))
    system.dispatch(HdIncrement("c1"))
    poison = system.dispatch(HdNote("c1", "poison")).position
    system.dispatch(HdIncrement("c1"))
    system.dispatch(HdIncrement("c2"))

    last = system.settle()

    # The default policy retried (failures 1, 2) and parked at the third failure.
    assert errors(system, "hd-default", poison) == [1, 2, 3]
    [letter] = letters(system, "hd-default")
    assert (letter["position"], letter["status"], letter["failures"]) == (poison, "parked", 3)
    assert (letter["stream_id"], letter["version"], letter["type"]) == (
        "HdCounter-c1",
        2,
        "HdNoted",
    )
    assert letter["error_type"] == "HdHandlerError"
    assert "poison" in letter["error"]
    assert "raise HdHandlerError" in letter["traceback"]
    # It went on with the later events; its siblings saw everything; nothing restarted.
    assert seen(system, "hd-default") == [p for p in range(1, last + 1) if p != poison]
    assert seen(system, "hd-recorder") == list(range(1, last + 1))
    assert tally(system)[1] == last
    nodes = subscriber_nodes(system)
    assert (nodes["hd-default"]["parked"], nodes["hd-default"]["failures"]) == (1, 0)
    assert nodes["hd-default"]["position"] == last
    assert nodes["hd-recorder"]["parked"] == nodes["hd-tally"]["parked"] == 0
    assert all((n["status"], n["restarts"]) == ("running", 0) for n in nodes.values())
    # And the application still answers, strongly consistent.
    assert system.dispatch(HdIncrement("c3"), consistency="strong").version == 1


def test_retry_policy_handles_an_event_that_fails_twice(start_app: Start) -> None:
    system = start_app(make_app(handlers=[HdFlaky]))
    flaky = system.dispatch(HdNote("c1", "flaky")).position
    later = system.dispatch(HdIncrement("c1")).position
    system.settle()

    assert errors(system, "hd-flaky", flaky) == [1, 2]
    assert seen(system, "hd-flaky") == [flaky, later]
    assert letters(system, "hd-flaky") == []
    assert subscriber_nodes(system)["hd-flaky"]["failures"] == 0

    # The count starts over for the next failing event: it is retried too, not parked at once.
    poison = system.dispatch(HdNote("c1", "poison")).position
    system.settle()
    assert errors(system, "hd-flaky", poison) == [1, 2, 3]
    assert [(x["position"], x["failures"]) for x in letters(system, "hd-flaky")] == [(poison, 3)]


@pytest.mark.parametrize(("handler", "status"), [(HdSkipper, "skipped"), (HdParker, "parked")])
def test_skip_and_park_policies_go_past_the_event(
    start_app: Start, handler: type[HdRecorder], status: str
) -> None:
    system = start_app(make_app(handlers=[handler]))
    poison = system.dispatch(HdNote("c1", "poison")).position
    later = system.dispatch(HdIncrement("c1")).position
    system.settle()

    name = handler.name
    assert errors(system, name, poison) == [1]  # decided at the first failure, no retry
    assert seen(system, name) == [later]
    [letter] = letters(system, name)
    assert (letter["position"], letter["status"], letter["error_type"]) == (
        poison,
        status,
        "HdHandlerError",
    )
    # Only parked events count as parked (and can be retried); a skipped one is just recorded.
    assert subscriber_nodes(system)[name]["parked"] == (1 if status == "parked" else 0)


def test_stop_policy_stops_the_subscriber_alone(start_app: Start) -> None:
    system = start_app(make_app(handlers=[HdStopper, HdRecorder]))
    before = system.dispatch(HdIncrement("c1")).position
    poison = system.dispatch(HdNote("c1", "poison")).position

    with pytest.raises(ConsistencyTimeout) as caught:
        system.dispatch(HdIncrement("c1"), consistency="strong")

    message = str(caught.value)
    assert "hd-stopper is stopped" in message
    assert "the events were stored" in message
    last = system.store.last_position()
    assert last == poison + 1
    assert type(system.store.event_at(last).data).__name__ == "HdIncremented"
    system.wait_for(last, handlers=["hd-recorder"])
    assert seen(system, "hd-recorder") == [before, poison, last]
    assert seen(system, "hd-stopper") == [before]
    node = subscriber_nodes(system)["hd-stopper"]
    # "status" is the actor's, which lives on; "state" is the subscriber's.
    assert (node["state"], node["position"], node["lag"], node["failures"]) == (
        "stopped",
        before,
        last - before,
        1,
    )
    assert "hd-stopper cannot take 'poison'" in node["last_error"]
    assert letters(system, "hd-stopper") == []


# -- strong consistency ---------------------------------------------------------------------------


def test_strong_dispatch_returns_once_the_projection_has_the_row(start_app: Start) -> None:
    system = start_app(make_app(handlers=[HdRecorder], projections=[HdTally]))
    system.dispatch(HdIncrement("c1"), consistency="strong")

    # HdTally takes 0.3 s over a "slow" note: the rows must be there the moment dispatch returns.
    result = system.dispatch(HdNote("c1", "slow"), consistency="strong")

    position = result.position
    assert query(system, "SELECT type FROM hd_tally WHERE position = ?", position) == [("HdNoted",)]
    assert seen(system, "hd-recorder") == [1, position]


def test_strong_dispatch_waits_for_the_named_handlers_or_times_out(start_app: Start) -> None:
    system = start_app(make_app(handlers=[HdStuck], projections=[HdTally]))
    stuck = system.dispatch(HdNote("c1", "poison")).position  # hd-stuck retries it in 30 s

    narrowed = system.dispatch(HdIncrement("c1"), consistency="strong", handlers=["hd-tally"])
    assert query(system, "SELECT position FROM hd_tally WHERE position = ?", narrowed.position)

    # Every strongly consistent subscriber (the default), or the stuck one by name: both time out,
    # and say that the events are stored all the same.
    with pytest.raises(ConsistencyTimeout) as everyone:
        system.dispatch(HdIncrement("c1"), consistency="strong", timeout=1.0)
    with pytest.raises(ConsistencyTimeout) as named:
        system.dispatch(HdIncrement("c1"), consistency="strong", handlers=["hd-stuck"], timeout=1.0)
    for caught in (everyone, named):
        assert "the events were stored" in str(caught.value)
        assert "within 1.0s" in str(caught.value)
    assert "hd-stuck" in str(named.value)
    last = system.store.last_position()
    assert last == narrowed.position + 2
    assert [e.type for e in system.store.read_stream("HdCounter-c1")] == [
        "HdNoted",
        *["HdIncremented"] * 3,
    ]
    with pytest.raises(ConsistencyTimeout, match="no subscriber named nobody"):
        system.dispatch(HdIncrement("c1"), consistency="strong", handlers=["nobody"])

    node = subscriber_nodes(system)["hd-stuck"]
    assert (node["state"], node["position"], node["failures"], node["parked"]) == (
        "retrying",
        stuck - 1,
        1,
        0,
    )
    assert node["lag"] == system.store.last_position() - (stuck - 1)


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])  # in-process, a page runs inside dispatch()
def test_a_slow_handler_with_a_backlog_still_answers_the_tree(start_app: Start) -> None:
    system = start_app(make_app(handlers=[HdSluggish]))
    results = system.dispatch_many([HdIncrement("c1") for _ in range(60)])  # 3 s of handling
    last = results[-1].position

    node = subscriber_nodes(system)["hd-sluggish"]  # asked while the backlog is worked through

    assert node["status"] == "running"  # answered between two short pages, not "unresponsive"
    assert node["position"] < last
    system.wait_for(last, handlers=["hd-sluggish"], deadline_in=30)
    assert seen(system, "hd-sluggish") == [r.position for r in results]


def test_the_bus_forgets_a_waiter_that_timed_out(start_app: Start) -> None:
    system = start_app(make_app(handlers=[HdRecorder]))
    system.dispatch(HdIncrement("c1"), consistency="strong")

    with pytest.raises(ConsistencyTimeout):
        system.wait_for(10**9, deadline_in=0.5)  # a position no event will reach

    # The next progress of a subscriber past the waiter's deadline (the bus's clock: it heard
    # of the waiter a little after the client did) finds it given up, and drops it.
    def progress_drops_it() -> bool:
        system.dispatch(HdIncrement("c1"), consistency="strong")
        events = next(c for c in system.tree()["children"] if c["name"] == "events")
        return bool(events["waiting"] == 0)

    wait_until(progress_drops_it, 10, what="the bus to drop the waiter that timed out")


# -- telemetry ------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["simple"])  # handlers run in the test's process only there
def test_telemetry_reports_each_handled_event(start_app: Start) -> None:
    received: list[tuple[str, dict[str, float], dict[str, Any]]] = []

    def record(event: str, measurements: dict[str, float], metadata: dict[str, Any]) -> None:
        received.append((event, measurements, metadata))

    system = start_app(make_app(handlers=[HdRecorder]))
    telemetry.attach(record)
    try:
        for _ in range(3):
            system.dispatch(HdIncrement("c1"), consistency="strong")
    finally:
        telemetry.detach(record)

    handled = [(m, md) for e, m, md in received if e == "handle"]
    assert len(handled) == 3
    executed = [md for e, _, md in received if e == "execute"]
    assert [(md["command"], md["stream_id"]) for md in executed] == [
        ("HdIncrement", executed[0]["stream_id"])
    ] * 3
    assert executed[0]["stream_id"].endswith("c1")
    for measurements, metadata in handled:
        assert metadata["subscriber"] == "hd-recorder"
        assert 0 <= measurements["duration"] < 5


def test_a_park_that_fails_is_logged_as_failed_and_the_event_comes_again(tmp_path: Any) -> None:
    """A full disk, say, while parking: the log says the park failed (not "parked"), the
    checkpoint stays before the event, and once parking works again the event is parked."""
    database = str(tmp_path / "park.db")
    logged = _Lines()
    logger = logging.getLogger("backstage_actors")
    logger.addHandler(logged)
    try:
        with make_app(handlers=[HdParker]).start(base="simple", database=database) as system:
            # A real fault of the database, not a mock: every insert into dead_letters fails.
            with sqlite3.connect(database) as conn:
                conn.execute(
                    "CREATE TRIGGER no_room BEFORE INSERT ON dead_letters "
                    "BEGIN SELECT RAISE(ABORT, 'no room to park'); END"
                )
            poison = system.dispatch(HdNote("c1", "poison")).position
            failed = f"could not record the event at position {poison}"
            # (asking for the tree runs the in-process actors meanwhile)
            wait_until(lambda: system.tree() and failed in logged.text(), what="the failed park")
            assert f"parked the event at position {poison}" not in logged.text()
            assert "no room to park" in logged.text()
            assert letters(system, "hd-parker") == []
            assert checkpoint(system, "hd-parker") < poison

            with sqlite3.connect(database) as conn:
                conn.execute("DROP TRIGGER no_room")
            later = system.dispatch(HdIncrement("c1")).position
            system.settle(timeout=30.0)

            assert [x["position"] for x in letters(system, "hd-parker")] == [poison]
            assert seen(system, "hd-parker") == [later]
            assert f"parked the event at position {poison}" in logged.text()
    finally:
        logger.removeHandler(logged)


class _Lines(logging.Handler):
    """The log records of a logger, as text (Thespian's simple base keeps pytest's caplog out)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.lines)
