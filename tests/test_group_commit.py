"""The PostgreSQL recorder's group commit (``store/_group_commit.py``) on its own: real threads,
a commit that takes the time a flush takes (the recorder's own commit is covered with a real
server in test_postgres_app.py and test_store_postgres.py)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from backstage_actors.store._group_commit import GroupCommit

FLUSH = 0.03  # seconds a commit takes here (long: the test must hold on a loaded machine)
GATHER = 0.1  # (the recorder's default is 2 ms; waking threads on a loaded machine takes longer)


def _run(
    callers: int, rounds: int, work: float, gather: float = GATHER
) -> tuple[list[int], GroupCommit]:
    """``callers`` threads, each doing ``work`` seconds of its own (standing in for encoding
    its next append) then one append, ``rounds`` times; returns the sizes of the groups."""
    sizes: list[int] = []

    def commit(prepared: Any, results: Any, recorded_at: datetime, stamp: str) -> None:
        sizes.append(len(prepared))
        time.sleep(FLUSH)
        for index, item in enumerate(prepared):
            results[index] = item

    group = GroupCommit(commit, max_gather=gather)
    now = datetime.now(UTC)
    failures: list[str] = []

    def caller(index: int) -> None:
        for n in range(rounds):
            time.sleep(work)
            results: list[Any] = [None]
            group.write([(index, n)], results, now, "stamp")
            if results != [(index, n)]:
                failures.append(f"{index}/{n}: {results}")

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    return sizes, group


def test_a_leader_waits_for_the_callers_of_the_last_group() -> None:
    """Eight callers that each work a little between appends: the first back would commit
    alone and the other seven one commit later (groups of 1 and 7: see the control below); the
    leader waits for the last group's size instead."""
    sizes, _ = _run(callers=8, rounds=10, work=0.001)
    assert sum(sizes) == 80
    assert sum(sizes) / len(sizes) >= 6.5, sizes


def test_a_lone_caller_never_waits() -> None:
    sizes, group = _run(callers=1, rounds=10, work=0.0)
    assert sizes == [1] * 10
    assert group.gathers == 0  # its last group was itself: nobody to wait for


def test_without_gathering_the_first_caller_back_commits_alone() -> None:
    """The control: the same callers with gathering off split into groups of 1 and 7."""
    sizes, _ = _run(callers=8, rounds=10, work=0.001, gather=0.0)
    assert sum(sizes) == 80
    assert sum(sizes) / len(sizes) < 6.5, sizes
