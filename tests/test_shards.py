"""Shards: many aggregates per actor, one group commit per round, answers only on durable state.

On both Thespian bases through the ``start_app`` fixture: in-process there is one shard, on
multiproc a fixed pool of shard processes.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import psutil
import pytest

from backstage_actors import (
    AggregateFailed,
    Application,
    CommandRejected,
    DispatchResult,
    DispatchTimeout,
)

from .conftest import free_port, process_alive, run_at_once, wait_until
from .dispatch_domain import Add, Explode, make_router
from .dispatch_domain import make_app as make_counters
from .shards_domain import Open, OpenRacing, make_app


def shard_nodes(system: Any) -> list[dict[str, Any]]:
    router = next(c for c in system.tree()["children"] if c["name"] == "router")
    return [c for c in router["children"] if c.get("kind") == "shard"]


def writer_counts(system: Any) -> tuple[int, int, int]:
    """(commits, appends, flushes) of every shard's writer."""
    writers = [node["writer"] for node in shard_nodes(system)]
    return (
        sum(w["commits"] for w in writers),
        sum(w["appends"] for w in writers),
        sum(w["flushes"] or 0 for w in writers),
    )


# -- answers only on durable state ----------------------------------------------------------


def test_no_answer_is_given_from_a_state_whose_append_failed(start_app: Any) -> None:
    """``OpenRacing`` decides ``Opened`` while a competing writer closes the account: its append
    fails. ``Open``, queued behind it, was decided on the opened state (no events): that answer
    must not leave; decided again on the stored state, the account is closed."""
    system = start_app(make_app())
    database = system.settings.database

    racing, again = system.dispatch_many([OpenRacing("a-1", database), Open("a-1")])

    assert isinstance(racing, CommandRejected), racing
    assert isinstance(again, CommandRejected), again  # not "opened, nothing to do"
    assert "closed" in str(again)
    assert [e.type for e in system.store.read_stream("Account-a-1")] == ["Closed"]


# -- isolation inside a shard ---------------------------------------------------------------


def test_an_aggregate_whose_apply_raises_restarts_alone(start_app: Any) -> None:
    system = start_app(make_counters())
    system.dispatch(Add("mate", 1))
    system.dispatch(Add("crashy", 1))
    before = {n["name"]: n.get("pid") for n in shard_nodes(system)}

    failed = system.dispatch_many([Add("crashy", 1), Explode("crashy"), Add("mate", 1)])

    assert isinstance(failed[0], DispatchResult) and failed[0].version == 2
    assert isinstance(failed[1], AggregateFailed)
    assert isinstance(failed[2], DispatchResult) and failed[2].version == 2
    # The crashed aggregate rebuilt from the store; its shard and shard-mates served on.
    assert system.dispatch(Add("crashy", 1)).version == 3
    assert system.dispatch(Add("mate", 1)).version == 3
    assert {n["name"]: n.get("pid") for n in shard_nodes(system)} == before
    assert sum(n["aggregate_restarts"] for n in shard_nodes(system)) == 1


# -- the shape on multiproc -----------------------------------------------------------------


def family(pid: int) -> set[int]:
    root = psutil.Process(pid)
    return {root.pid, *(p.pid for p in root.children(recursive=True))}


@pytest.mark.parametrize("base", ["multiproc"], indirect=True)
def test_many_aggregates_run_in_the_shards_processes(start_app: Any) -> None:
    system = start_app(make_counters(shards=2))
    system.dispatch(Add("first", 1))
    admin = psutil.Process(shard_nodes(system)[0]["pid"]).parent()
    while admin.parent() is not None and "python" in " ".join(admin.parent().cmdline()):
        if admin.parent().pid == os.getpid():
            break
        admin = admin.parent()
    before = family(admin.pid)

    results = system.dispatch_many([Add(f"many-{i}", 1) for i in range(10_000)], timeout=120)

    assert [r for r in results if not isinstance(r, DispatchResult)][:3] == []
    assert family(admin.pid) == before
    shards = shard_nodes(system)
    assert len(shards) == 2
    assert sum(n["live"] for n in shards) == 10_001


def _named_adds(port: int, prefix: str, count: int, barrier: Any, results: Any) -> None:
    """A client process: ``count`` named commands, each sent again until it is answered."""
    app = Application("dispatch", router=make_router())
    system = app.attach(port=port)
    barrier.wait()
    confirmed = 0
    try:
        for i in range(count):
            metadata = {"command_id": f"{prefix}-{i}"}
            while True:
                try:
                    system.dispatch(Add(f"{prefix}-{i % 50}", 1), metadata=metadata, timeout=10)
                    confirmed += 1
                    break
                except DispatchTimeout:
                    continue
    finally:
        system.stop()
    results.put(confirmed)


@pytest.mark.parametrize("base", ["multiproc"], indirect=True)
def test_sigkill_of_a_shard_under_load_loses_and_doubles_nothing(start_app: Any) -> None:
    port = free_port()
    system = start_app(make_counters(shards=2), port=port)
    system.dispatch(Add("warm", 1))
    victim = shard_nodes(system)[0]["pid"]
    start = system.store.last_position()

    def kill_under_load() -> None:  # once the clients' commands are being stored, not by a clock
        wait_until(lambda: system.store.last_position() >= start + 60, 60, what="load")
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_under_load)
    killer.start()
    try:
        confirmed = run_at_once(_named_adds, [(port, f"c{n}", 150) for n in range(3)])
    finally:
        killer.join(60)
    assert confirmed == [150, 150, 150]
    assert not process_alive(victim)
    events = [e for e in system.store.read_all() if e.stream_id.startswith("Counter-c")]
    ids = [e.metadata["command_id"] for e in events]
    assert len(ids) == len(set(ids)) == 450


def _adds(port: int, prefix: str, count: int, barrier: Any, results: Any) -> None:
    system = Application("dispatch", router=make_router()).attach(port=port)
    barrier.wait()
    try:
        answers = [system.dispatch(Add(f"{prefix}-{i}", 1), timeout=30) for i in range(count)]
    finally:
        system.stop()
    results.put(sum(isinstance(a, DispatchResult) for a in answers))


@pytest.mark.parametrize("base", ["multiproc"], indirect=True)
def test_eight_client_processes_share_flushes(start_app: Any) -> None:
    port = free_port()
    system = start_app(make_counters(shards=2), port=port)
    system.dispatch(Add("warm", 1))
    confirmed = run_at_once(_adds, [(port, f"p{n}", 40) for n in range(8)])
    assert confirmed == [40] * 8
    commits, appends, flushes = wait_until(
        lambda: (c := writer_counts(system))[1] >= 321 and c, what="the shards' counts"
    )
    assert appends >= 321
    assert 0 < flushes < commits or commits < appends


@pytest.mark.parametrize("base", ["simple"], indirect=True)
def test_eight_threads_in_process_share_flushes(start_app: Any) -> None:
    system = start_app(make_counters())
    system.dispatch(Add("warm", 1))
    confirmed: list[int] = []

    def run(prefix: str) -> None:
        answers = [system.dispatch(Add(f"{prefix}-{i}", 1), timeout=30) for i in range(50)]
        confirmed.append(sum(isinstance(a, DispatchResult) for a in answers))

    threads = [threading.Thread(target=run, args=(f"t{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert confirmed == [50] * 8
    commits, appends, flushes = writer_counts(system)
    assert appends == 401
    assert 0 < flushes < commits


def routed(system: Any) -> int:
    return int(next(c for c in system.tree()["children"] if c["name"] == "router")["routed"])


@pytest.mark.parametrize("base", ["simple"], indirect=True)
def test_in_process_batches_go_straight_to_the_shard_once_it_answered(start_app: Any) -> None:
    """A program that only ever calls dispatch_many learns the one shard from its first
    answers: later batches skip the router (one hop and a routing of every command fewer)."""
    system = start_app(make_counters())
    first = system.dispatch_many([Add(f"c{i}", 1) for i in range(20)])
    assert all(isinstance(a, DispatchResult) for a in first)
    assert routed(system) == 20

    later = system.dispatch_many([Add(f"c{i}", 2) for i in range(20)])

    assert [a.version for a in later] == [2] * 20  # type: ignore[union-attr]
    assert routed(system) == 20


@pytest.mark.parametrize("base", ["simple"], indirect=True)
def test_eight_threads_in_process_share_rounds_and_each_gets_its_own_answers(
    start_app: Any,
) -> None:
    """Threads queue their commands together (``_combiner``): one round, one transaction for
    several callers' commands, and every caller still gets exactly the answers to its own."""
    system = start_app(make_counters())
    system.dispatch(Add("warm", 1))
    mismatched: list[tuple[str, Any]] = []
    barrier = threading.Barrier(8)

    def run(prefix: str) -> None:
        barrier.wait()
        for i in range(40):
            answer = system.dispatch(Add(f"{prefix}-{i % 4}", 1), timeout=30)
            if answer.stream_id != f"Counter-{prefix}-{i % 4}" or answer.version != i // 4 + 1:
                mismatched.append((f"{prefix}-{i}", answer))

    threads = [threading.Thread(target=run, args=(f"t{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert mismatched == []
    commits, appends, flushes = writer_counts(system)
    assert appends == 321
    assert commits < appends  # some rounds held the commands of several callers
    assert 0 < flushes < commits
