"""Subscribers as singletons over one PostgreSQL store: a lease (an advisory lock) per subscriber.

Two applications on one store stand for two members of a cluster: only the first runs the
subscribers, the second stands by, and takes over from the checkpoint when the first stops or
dies (its connection, and so its lease, goes with it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backstage_actors import Application
from backstage_actors._lease import Lease, lease_key
from backstage_actors.handler import Metadata
from backstage_actors.projection import Projection
from examples.bank import make_app as make_bank
from examples.bank import router as bank_router
from examples.bank.domain import Deposit, MoneyDeposited, OpenAccount

from .conftest import wait_until

STORES = ["postgres"]


def test_one_holder_at_a_time_and_the_lease_passes_on_release(pg_dsn: str) -> None:
    first, second = Lease(pg_dsn, "bank", "balances"), Lease(pg_dsn, "bank", "balances")
    other = Lease(pg_dsn, "bank", "notifier")
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        assert other.try_acquire()  # one lock per subscriber
        assert first.try_acquire() and first.still_held()
        first.release()
        assert second.try_acquire()
        assert not first.try_acquire()
    finally:
        for lease in (first, second, other):
            lease.close()


def test_the_lease_of_a_killed_process_passes_to_the_next(pg_dsn: str) -> None:
    holder = textwrap.dedent(
        f"""
        import sys, time
        from backstage_actors._lease import Lease
        lease = Lease({pg_dsn!r}, "bank", "balances")
        assert lease.try_acquire()
        print("held", flush=True)
        time.sleep(120)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    waiting = Lease(pg_dsn, "bank", "balances")
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        assert not waiting.try_acquire()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        wait_until(waiting.try_acquire, timeout=5, interval=0.05, what="the lease to pass on")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        waiting.close()


def states(system: Any) -> dict[str, str]:
    """Each subscriber's state, from the live tree."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if "state" in node and "position" in node:
            found[str(node["name"])] = str(node["state"])
        for child in node.get("children", []):
            walk(child)

    walk(system.tree())
    return found


def balances(system: Any) -> list[tuple[Any, ...]]:
    return list(system.store.handle.query("SELECT account_id, balance FROM balances ORDER BY 1"))


# Two systems in one process on the simple base run only when called: members are processes.
@pytest.mark.parametrize("base", ["multiproc"], indirect=True)
def test_a_second_member_stands_by_and_takes_over_from_the_checkpoint(start_app: Any) -> None:
    bank = make_bank()
    first = start_app(bank)
    second = start_app(bank)
    names = {"balances", "notifier", "transfers"}
    wait_until(lambda: set(states(first)) >= names and set(states(second)) >= names)
    assert {states(first)[n] for n in names} == {"running"}
    assert {states(second)[n] for n in names} == {"standby"}

    second.dispatch(OpenAccount("ada", "Ada"))
    second.dispatch(Deposit("ada", 10))
    last = second.store.last_position()
    wait_until(lambda: second.store.checkpoint("balances") == last, what="the first to project")
    assert balances(second) == [("ada", 10)]

    first.stop()
    wait_until(lambda: {states(second)[n] for n in names} == {"running"}, what="the takeover")
    second.dispatch(Deposit("ada", 5))
    last = second.settle()
    assert second.store.checkpoint("balances") == last
    assert balances(second) == [("ada", 15)]  # exactly once across the takeover
    notes = list(second.store.handle.query("SELECT count(*) FROM notifications"))
    assert notes == [(1,)]  # the opening's note, written by the first member only


# -- fencing: a member whose lease lapsed while it worked commits nothing (helper-25's review) -

HOLD = 999  # a deposit of this amount: the projection below waits at it until released


class Seen(Projection):
    """One row per event projected (no key: an event projected twice shows twice). At a
    deposit of HOLD it waits, in the middle of its page's transaction, for the test to release
    it (``release-<pid>`` in ``$FENCE_DIR``; ``arrived-<pid>`` says it is there)."""

    name = "seen"
    tables = ("seen",)

    def init(self, db: Any) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS seen (position BIGINT NOT NULL, pid INT NOT NULL)")

    def project(self, event: Any, metadata: Metadata, db: Any) -> None:
        db.execute(
            "INSERT INTO seen (position, pid) VALUES (?, ?)", (metadata.position, os.getpid())
        )
        if isinstance(event, MoneyDeposited) and event.amount == HOLD:
            folder = Path(os.environ["FENCE_DIR"])
            (folder / f"arrived-{os.getpid()}").touch()
            deadline = time.monotonic() + 60
            while not (folder / f"release-{os.getpid()}").exists():
                assert time.monotonic() < deadline, "never released"
                time.sleep(0.01)


def lease_backend(dsn: str, app_name: str, name: str) -> int | None:
    """The PostgreSQL backend holding the lease of subscriber ``name``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_schema()").fetchone()
        key = lease_key(row[0] if row else "public", app_name, name) & 0xFFFF_FFFF_FFFF_FFFF
        for pid, high, low in conn.execute(
            "SELECT pid, classid::int8, objid::int8 FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        ).fetchall():
            if (high << 32) | low == key:
                return int(pid)
    return None


@pytest.mark.parametrize("base", ["multiproc"], indirect=True)
def test_a_member_whose_lease_lapsed_mid_page_commits_none_of_it(
    start_app: Any, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first member's projection is in the middle of a page when its lease connection is
    cut (a failover, a proxy's timeout, a long pause of the process); the second takes the
    lease over, projects the same events and moves the checkpoint on. Then the first goes on
    with its page: its checkpoint is no longer where it left it, so its page rolls back,
    instead of projecting those events a second time."""
    monkeypatch.setenv("FENCE_DIR", str(tmp_path))
    app = Application("fencebank", router=bank_router, projections=[Seen], database=pg_dsn)
    first = start_app(app)
    second = start_app(app)
    wait_until(lambda: states(first).get("seen") == "running" and "seen" in states(second))
    assert states(second)["seen"] == "standby"

    second.dispatch(OpenAccount("ada", "Ada"))
    [held] = second.dispatch(Deposit("ada", HOLD)).events

    def arrived(other_than: int = 0) -> int | None:
        pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("arrived-*")]
        return next((pid for pid in pids if pid != other_than), None)

    stale = wait_until(arrived, what="the first member's projection at the held event")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # its lease connection is cut
        conn.execute(
            "SELECT pg_terminate_backend(%s)", (lease_backend(pg_dsn, "fencebank", "seen"),)
        )
    # The second takes the lease over and projects from the checkpoint, up to the held event.
    fresh = wait_until(lambda: arrived(other_than=stale), what="the new holder at the event")
    (tmp_path / f"release-{fresh}").touch()
    wait_until(lambda: second.store.checkpoint("seen") >= held.position, what="the new holder")

    (tmp_path / f"release-{stale}").touch()  # the first member goes on with its page
    wait_until(
        lambda: states(first).get("seen") == "standby", what="the first member's page to end"
    )
    twice = second.store.handle.query(
        "SELECT position, count(*) FROM seen GROUP BY position HAVING count(*) > 1"
    )
    assert list(twice) == [], "events projected twice: the stale member committed its page"
    assert second.store.checkpoint("seen") >= held.position
    by = second.store.handle.query(
        "SELECT DISTINCT pid FROM seen WHERE position = %s", (held.position,)
    )
    assert list(by) == [(fresh,)]
