"""The PostgreSQL recorder's group commit (``store/_group_commit.py``) on its own: real threads,
a commit that takes the time a flush takes (the recorder's own commit is covered with a real
server in test_postgres_app.py and test_store_postgres.py)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from backstage_actors.errors import StorageError
from backstage_actors.store import _group_commit
from backstage_actors.store._group_commit import GroupCommit

from .conftest import wait_until

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


def test_a_leader_interrupted_in_its_commit_leaves_the_others_an_unknown_outcome() -> None:
    """The leader's KeyboardInterrupt is its own: the member it was committing for hears that
    its append may or may not be stored (a StorageError), not the interruption."""
    first_in, release = threading.Event(), threading.Event()
    groups: list[int] = []

    def commit(prepared: Any, results: Any, recorded_at: datetime, stamp: str) -> None:
        groups.append(len(prepared))
        if len(groups) == 1:  # "a" commits alone while "b" and "c" queue behind it
            first_in.set()
            release.wait(30)
            return
        raise KeyboardInterrupt  # in the thread that leads "b" and "c"

    group = GroupCommit(commit, max_gather=GATHER)
    outcomes = _b_and_c_behind_a(group, first_in, release)
    assert groups == [1, 2]
    assert outcomes["a"] is None
    interrupted = [n for n in "bc" if isinstance(outcomes[n], KeyboardInterrupt)]
    assert len(interrupted) == 1, outcomes  # the leader of the second group
    [other] = [n for n in "bc" if n not in interrupted]
    assert isinstance(outcomes[other], StorageError), outcomes
    assert "may or may not" in str(outcomes[other])


def test_a_caller_interrupted_while_it_waits_leaves_the_queue(monkeypatch: Any) -> None:
    """A member interrupted in its wait (KeyboardInterrupt) must not stay queued: handed the
    lead, it would lead nobody, and every later append would wait forever."""

    class Interrupted(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            raise KeyboardInterrupt

    class Waiting(_group_commit._Waiting):
        def __init__(self, prepared: Any, results: Any) -> None:
            super().__init__(prepared, results)
            if prepared == ["b"]:
                self.done = Interrupted()

    monkeypatch.setattr(_group_commit, "_Waiting", Waiting)
    first_in, release = threading.Event(), threading.Event()

    def commit(prepared: Any, results: Any, recorded_at: datetime, stamp: str) -> None:
        if prepared == ["a"]:
            first_in.set()
            release.wait(30)

    group = GroupCommit(commit, max_gather=GATHER)
    outcomes, threads = _three_callers(group)
    try:
        threads["a"].start()
        assert first_in.wait(30)
        threads["b"].start()
        wait_until(lambda: "b" in outcomes, what="b to be interrupted")
        threads["c"].start()
        wait_until(lambda: any(w.prepared == ["c"] for w in group._waiting), what="c to queue")
    finally:
        release.set()
    for thread in threads.values():
        thread.join(5)
    assert isinstance(outcomes["b"], KeyboardInterrupt), outcomes
    assert outcomes.get("a", 0) is None and outcomes.get("c", 0) is None, outcomes
    assert not group._leading and not group._waiting


def test_a_leader_interrupted_as_it_ends_its_gathering_leaves_nobody_waiting() -> None:
    """The second group's leader is interrupted (KeyboardInterrupt) the moment its gathering
    ends. It took the group there, outside the block that hands a group on: the lead stayed
    with it, its member waited forever, and so did every later append of the process."""
    first_in, release = threading.Event(), threading.Event()
    groups: list[list[str]] = []

    def commit(prepared: Any, results: Any, recorded_at: datetime, stamp: str) -> None:
        groups.append(list(prepared))
        if len(groups) == 1:  # "a" commits alone while "b" and "c" queue behind it
            first_in.set()
            release.wait(30)

    class Interrupted(GroupCommit):
        interrupted = False

        def _gather(self) -> Any:
            gathered = super()._gather()
            if len(groups) == 1 and not self.interrupted:  # the leader after "a"
                self.interrupted = True
                raise KeyboardInterrupt
            return gathered

    group = Interrupted(commit, max_gather=GATHER)
    outcomes = _b_and_c_behind_a(group, first_in, release)
    interrupted = [n for n in "bc" if isinstance(outcomes[n], KeyboardInterrupt)]
    assert len(interrupted) == 1, outcomes
    [other] = [n for n in "bc" if n not in interrupted]
    assert outcomes[other] is None or isinstance(outcomes[other], StorageError), outcomes
    done = threading.Thread(target=group.write, args=(["d"], [None], datetime.now(UTC), "s"))
    done.start()
    done.join(30)
    assert not done.is_alive(), "a later append waits forever"
    assert groups[-1] == ["d"]


def _b_and_c_behind_a(
    group: GroupCommit, first_in: threading.Event, release: threading.Event
) -> dict[str, BaseException | None]:
    """Callers "a", "b" and "c": "a" first (its commit sets ``first_in`` and waits for
    ``release``), then "b" and "c" queued behind it; ``release``, and their outcomes once all
    three have ended (an append still waiting after 30 s fails the test)."""
    outcomes, threads = _three_callers(group)
    try:
        threads["a"].start()
        assert first_in.wait(30)
        for name, queued in (("b", 1), ("c", 2)):
            threads[name].start()
            wait_until(lambda n=queued: len(group._waiting) == n, what=f"{name} to queue")
    finally:
        release.set()
    for thread in threads.values():
        thread.join(30)
        assert not thread.is_alive(), f"an append waits forever: {outcomes}"
    return outcomes


def _three_callers(
    group: GroupCommit,
) -> tuple[dict[str, BaseException | None], dict[str, threading.Thread]]:
    """Threads "a", "b" and "c" (not started yet), each appending its name once, and their
    outcomes as they end: None for a commit, else what the append raised."""
    outcomes: dict[str, BaseException | None] = {}

    def caller(name: str) -> None:
        try:
            group.write([name], [None], datetime.now(UTC), "stamp")
            outcomes[name] = None
        except BaseException as exc:
            outcomes[name] = exc

    threads = {name: threading.Thread(target=caller, args=(name,), daemon=True) for name in "abc"}
    return outcomes, threads
