"""Subscribers at their edges (found by helper-27's review; each test failed before its fix): a
"current" subscriber restarted before its first event, a rebuild interrupted or asked twice,
dead letters retried twice, across a rebuild, or left by a page that never committed, a process
manager whose own code fails, and waiting for a stopped subscriber that is already past."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from .conftest import wait_until
from .handler_domain import HdIncrement, HdNote, make_app, query
from .subscriber_edges_domain import ReProj, ReSlowProj


def applied(system: Any, position: int) -> int:
    return query(system, "SELECT count(*) FROM re_applied WHERE position = ?", position)[0][0]


def park_poison(system: Any) -> tuple[int, int]:
    system.dispatch(HdIncrement("c1"))
    poison = system.dispatch(HdNote("c1", "poison")).position
    system.dispatch(HdIncrement("c1"), consistency="strong")
    [letter] = system.store.dead_letters("re-proj")
    assert letter.position == poison and applied(system, poison) == 0
    system.store.handle.execute("INSERT INTO re_control VALUES (1)")  # the fix is deployed
    return letter.id, poison


def test_a_letter_retried_twice_at_once_is_projected_once(start_app: Any) -> None:
    system = start_app(make_app(projections=[ReProj]))
    letter_id, poison = park_poison(system)
    outcomes: list[Any] = []
    barrier = threading.Barrier(2)

    def retry() -> None:
        barrier.wait()
        outcomes.append(system.retry_dead_letters([letter_id]))

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert applied(system, poison) == 1, f"projected {applied(system, poison)} times; {outcomes}"


def test_a_letter_parked_before_a_rebuild_is_not_projected_again(start_app: Any) -> None:
    system = start_app(make_app(projections=[ReProj]))
    _, poison = park_poison(system)
    system.rebuild("re-proj", timeout=30)
    assert applied(system, poison) == 1  # the rebuild projected it (the fix is in)
    outcome = system.retry_dead_letters()
    assert applied(system, poison) == 1, f"projected {applied(system, poison)} times: {outcome}"


def test_a_letter_whose_event_was_truncated_is_closed_by_its_retry(start_app: Any) -> None:
    """A parked letter whose event truncate_stream deleted stayed parked: every retry failed
    again and it was listed for ever. Its retry says the event is gone and closes it."""
    system = start_app(make_app(projections=[ReProj]))
    letter_id, poison = park_poison(system)
    stream = system.store.event_at(poison).stream_id
    system.store.truncate_stream(stream, system.store.stream_version(stream))
    assert system.store.event_at(poison) is None
    outcome = system.retry_dead_letters()
    assert outcome == {letter_id: f"failed: the event at position {poison} is gone (truncated)"}
    assert system.store.dead_letters("re-proj") == []
    assert [d.status for d in system.store.dead_letters("re-proj", None)] == ["truncated"]
    assert system.retry_dead_letters() == {}


def test_two_rebuilds_at_once_both_finish(start_app: Any) -> None:
    system = start_app(make_app(projections=[ReSlowProj]))
    assert not any(
        isinstance(r, BaseException)
        for r in system.dispatch_many([HdIncrement(f"c{i % 5}") for i in range(1500)])
    )
    system.settle()
    results: dict[int, Any] = {}

    def rebuild(i: int) -> None:
        try:
            results[i] = system.rebuild("re-slow-proj", timeout=12)
        except Exception as exc:
            results[i] = exc

    first = threading.Thread(target=rebuild, args=(1,))
    first.start()
    wait_until(lambda: query(system, "SELECT count(*) FROM re_applied")[0][0] < 1400, 10)
    second = threading.Thread(target=rebuild, args=(2,))
    second.start()
    first.join(40)
    second.join(40)
    assert not any(isinstance(r, BaseException) for r in results.values()), results


def test_a_process_manager_whose_apply_fails_applies_its_error_policy(start_app: Any) -> None:
    from .handler_domain import HdPlaceOrder
    from .subscriber_edges_domain import ReBadApplySaga

    system = start_app(make_app(process_managers=[ReBadApplySaga]))
    system.dispatch(HdPlaceOrder("o1", 13))
    system.dispatch(HdPlaceOrder("o2", 5))
    wait_until(  # (tree() drives a simple system: its retries are wakeups)
        lambda: system.tree() and system.store.dead_letters("re-bad-apply"), 15, what="a letter"
    )
    wait_until(
        lambda: query(
            system,
            "SELECT count(*) FROM events WHERE type = 'HdStockReserved' AND stream_id LIKE '%o2%'",
        )[0][0],
        10,
        what="o2's stock reserved",
    )


def test_a_current_handler_restarted_before_its_first_event_skips_nothing(
    start_app: Any,
) -> None:

    from .handler_domain import seen
    from .subscriber_edges_domain import ReCurrentRecorder

    first = start_app(make_app(handlers=[ReCurrentRecorder]))  # on an empty store
    poison = first.dispatch(HdNote("c1", "poison")).position
    wait_until(  # it fails on it, and retries (its table is made when it starts)
        lambda: (
            query(first, "SELECT count(*) FROM sqlite_master WHERE name = 'hd_errors'")[0][0]
            and query(first, "SELECT count(*) FROM hd_errors")[0][0]
        ),
        what="a failure",
    )
    first.stop()  # a deploy...
    import sqlite3

    with sqlite3.connect(first.settings.database) as conn:  # ... with the fix
        conn.execute("CREATE TABLE re_fixed (x)")

    second = start_app(make_app(handlers=[ReCurrentRecorder]))
    after = second.dispatch(HdIncrement("c1"), consistency="strong").position
    second.settle()
    assert seen(second, "re-current") == [poison, after]


def test_a_current_projection_restarted_in_its_rebuild_replays_from_the_origin(
    start_app: Any,
) -> None:
    import sqlite3

    from backstage_actors.errors import BackstageError

    from .subscriber_edges_domain import ReCurrentProj

    first = start_app(make_app(projections=[ReCurrentProj]))  # on an empty store
    first.dispatch(HdNote("c1", "poison"))
    first.dispatch(HdIncrement("c1"))
    first.settle()
    assert query(first, "SELECT count(*) FROM re_applied")[0][0] == 2
    first.store.handle.execute("CREATE TABLE re_broken (x)")  # a transient fault
    with pytest.raises(BackstageError):
        first.rebuild("re-current-proj", timeout=1.0)  # stuck on its first event, retrying
    first.stop()  # a restart
    with sqlite3.connect(first.settings.database) as conn:
        conn.execute("DROP TABLE re_broken")  # the fault is gone

    second = start_app(make_app(projections=[ReCurrentProj]))
    wait_until(
        lambda: query(second, "SELECT position FROM re_applied ORDER BY position") == [(1,), (2,)],
        what="the rebuild to replay both events",
    )


def test_waiting_for_a_position_a_stopped_handler_passed_succeeds(start_app: Any) -> None:
    from backstage_actors.errors import ConsistencyTimeout

    from .handler_domain import HdStopper

    system = start_app(make_app(handlers=[HdStopper]))
    before = system.dispatch(HdIncrement("c1"), consistency="strong").position
    system.dispatch(HdNote("c1", "poison"))  # (another client's) stops it, past `before`
    with pytest.raises(ConsistencyTimeout):
        system.dispatch(HdIncrement("c1"), consistency="strong")
    assert system.store.checkpoint("hd-stopper") >= before
    system.wait_for(before)  # it handled `before`: nothing to wait for


@pytest.mark.parametrize("base", ["multiproc"])
def test_a_letter_parked_by_a_page_that_never_committed_is_not_retried(
    start_app: Any, tmp_path: Any, monkeypatch: Any
) -> None:
    import os
    import signal
    import sqlite3

    from .handler_domain import subscriber_nodes
    from .subscriber_edges_domain import ReOwnProj

    own, flag = tmp_path / "own.db", tmp_path / "broken"
    flag.write_text("")
    monkeypatch.setenv("RE_OWN_DB", str(own))
    monkeypatch.setenv("RE_FLAG", str(flag))
    system = start_app(make_app(projections=[ReOwnProj]))
    pid = subscriber_nodes(system)["re-own"]["pid"]
    results = system.dispatch_many([HdNote("c1", "poison"), HdNote("c1", "slow")])
    poison = results[0].position
    wait_until(lambda: system.store.dead_letters("re-own"), 10, what="the poison parked")
    at = tmp_path / "broken-at"
    wait_until(at.exists, 10, what="the projection in the slow event")
    os.kill(pid, signal.SIGKILL)  # its page in the projection's file uncommitted
    at.unlink()
    flag.unlink()  # the fault was transient
    wait_until(
        lambda: (
            sqlite3.connect(str(own)).execute("SELECT count(*) FROM re_applied").fetchone()[0] == 2
        ),
        20,
        what="the page projected again by the restarted projection",
    )
    system.retry_dead_letters()
    rows = (
        sqlite3.connect(str(own))
        .execute("SELECT count(*) FROM re_applied WHERE position = ?", (poison,))
        .fetchone()[0]
    )
    assert rows == 1, f"the poison projected {rows} times"
