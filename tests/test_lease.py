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
from typing import Any

import pytest

from backstage_actors._lease import Lease
from examples.bank import make_app as make_bank
from examples.bank.domain import Deposit, OpenAccount

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
