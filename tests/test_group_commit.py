"""The PostgreSQL recorder's group commit (``store/_group_commit.py``) on its own: real threads,
a commit that takes the time a flush takes (the recorder's own commit is covered with a real
server in test_postgres_app.py and test_store_postgres.py)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from backstage_actors.store._group_commit import GroupCommit

FLUSH = 0.003  # seconds a commit takes here


def _run(callers: int, rounds: int, work: float) -> list[int]:
    """``callers`` threads, each doing ``work`` seconds of its own (standing in for encoding
    its next append) then one append, ``rounds`` times; returns the sizes of the groups."""
    sizes: list[int] = []

    def commit(prepared: Any, results: Any, recorded_at: datetime, stamp: str) -> None:
        sizes.append(len(prepared))
        time.sleep(FLUSH)
        for index, item in enumerate(prepared):
            results[index] = item

    group = GroupCommit(commit)
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
    return sizes


def test_a_leader_waits_for_the_callers_of_the_last_group() -> None:
    """Eight callers that each work a little between appends: the first back would commit
    alone and the other seven one commit later (groups of 1 and 7, checked: mean 3.6 with the
    gathering off); the leader waits for the last group's size instead."""
    sizes = _run(callers=8, rounds=20, work=0.001)
    assert sum(sizes) == 160
    assert sum(sizes) / len(sizes) >= 6.5, sizes


def test_a_lone_caller_never_waits() -> None:
    started = time.monotonic()
    sizes = _run(callers=1, rounds=30, work=0.0)
    elapsed = time.monotonic() - started
    assert sizes == [1] * 30
    assert elapsed < 30 * (FLUSH + 0.002) + 0.5, elapsed
