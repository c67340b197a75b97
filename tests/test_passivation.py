"""Passivation (idle time, cap on live aggregates) and snapshots, on both Thespian bases.

A passivated aggregate leaves its shard (its state and mailbox are dropped; the shard's process
stays); the next command for it rebuilds the state from the store, from the latest usable
snapshot on. The cap is divided among the shards: these tests run one shard.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from backstage_actors import DispatchResult

from .conftest import wait_until
from .dispatch_domain import (
    Add,
    Added,
    Count,
    Counted,
    aggregate_nodes,
    make_app,
    router_node,
    stored,
)


def shard_pids(system: Any) -> set[int]:
    """The shards' processes: passivation never ends one."""
    return {s.get("pid", 0) for s in router_node(system)["children"]}


# -- passivation ----------------------------------------------------------------------------


def test_idle_aggregates_are_passivated_and_rebuilt(start_app: Any) -> None:
    system = start_app(make_app(lifespan=0.3, shards=1))
    system.dispatch(Add("idle-1", 1))
    system.dispatch(Add("idle-2", 2))
    pids = shard_pids(system)

    # Polling the tree also drives simpleSystemBase, whose timers fire only inside later calls.
    router = wait_until(
        lambda: (r := router_node(system))["live"] == 0 and r, what="idle passivation"
    )

    assert router["passivated"] == 2
    assert aggregate_nodes(system) == {}
    assert shard_pids(system) == pids
    again = system.dispatch(Add("idle-1", 10))
    assert (again.version, again.events[0].data) == (2, Added("idle-1", 10, 11))
    assert system.dispatch(Add("idle-2", 10)).events[0].data == Added("idle-2", 10, 12)


def test_a_route_can_set_its_own_lifespan(start_app: Any) -> None:
    # No idle passivation by default; the Tally route says 0.3 s.
    system = start_app(make_app(lifespan=None, tally_lifespan=0.3, shards=1))
    system.dispatch(Add("stays", 1))
    system.dispatch(Count("goes", 1))

    router = wait_until(
        lambda: (r := router_node(system))["passivated"] == 1 and r, what="route lifespan"
    )

    assert list(aggregate_nodes(system)) == ["Counter-stays"]
    assert router["live"] == 1
    assert system.dispatch(Count("goes", 2)).events[0].data == Counted("goes", 2, 3)


def test_an_aggregate_in_use_is_not_passivated(start_app: Any) -> None:
    """Commands sent straight to the shard bypass the router: the shard keeps the aggregate's
    idle clock, so it is not passivated while busy (lifespan here 1 s: a command's round trip on
    a loaded machine stays well within it)."""
    system = start_app(make_app(lifespan=1.0, shards=1))
    system.dispatch(Add("busy", 1))
    deadline = time.monotonic() + 3.0

    while time.monotonic() < deadline:  # a command every 50 ms: never idle for 1 s
        system.dispatch(Add("busy", 1))
        time.sleep(0.05)

    assert router_node(system)["passivated"] == 0
    wait_until(lambda: router_node(system)["passivated"] == 1, what="passivation once idle")


def test_the_cap_passivates_the_least_recently_used(start_app: Any) -> None:
    system = start_app(make_app(max_live=3, shards=1))
    for i in range(3):
        system.dispatch(Add(f"cap-{i}", i + 1))
    pids = shard_pids(system)
    for i in range(3, 6):
        system.dispatch(Add(f"cap-{i}", i + 1))

    router = router_node(system)
    assert (router["max_live"], router["live"], router["passivated"]) == (3, 3, 3)
    assert set(aggregate_nodes(system)) == {
        "Counter-cap-3",
        "Counter-cap-4",
        "Counter-cap-5",
    }
    assert shard_pids(system) == pids

    # Every one of them comes back with its state rebuilt from the store.
    for i in range(6):
        result = system.dispatch(Add(f"cap-{i}", 100))
        assert (result.version, result.events[0].data) == (2, Added(f"cap-{i}", 100, 101 + i))
    router = router_node(system)
    assert (router["live"], router["passivated"]) == (3, 9)


def test_commands_racing_a_passivation_are_not_lost(start_app: Any) -> None:
    # One live aggregate at most, and commands alternating between two of them, one message
    # each: every command evicts the other aggregate while commands for it are on their way.
    system = start_app(make_app(max_live=1, shards=1))
    commands = [Add("ping" if i % 2 == 0 else "pong", i) for i in range(1, 25)]

    results = system.dispatch_many(commands, batch_size=1, timeout=30)

    assert all(isinstance(r, DispatchResult) for r in results), results
    for name in ("ping", "pong"):
        amounts = [c.amount for c in commands if c.counter_id == name]
        mine = [
            r for r in results if isinstance(r, DispatchResult) and r.stream_id == f"Counter-{name}"
        ]
        assert [r.version for r in mine] == list(range(1, 13))
        totals = [sum(amounts[: n + 1]) for n in range(12)]
        assert [r.events[0].data.total for r in mine] == totals
        assert [e.data.total for e in stored(system, f"Counter-{name}")] == totals
    router = router_node(system)
    assert router["live"] <= 1
    assert router["passivated"] >= 2


def test_a_batch_for_more_aggregates_than_the_cap_is_answered(start_app: Any) -> None:
    # One message for five aggregates with room for two: the shard passivates aggregates as
    # soon as their commands are answered. Every command is still answered, and stored once.
    system = start_app(make_app(max_live=2, shards=1))
    commands = [Add(f"wide-{i % 5}", 1) for i in range(10)]

    results = system.dispatch_many(commands, timeout=10)

    assert all(isinstance(r, DispatchResult) for r in results), results
    assert [r.version for r in results if isinstance(r, DispatchResult)] == [1] * 5 + [2] * 5
    assert system.store.last_position() == 10
    for i in range(5):
        assert [e.data.total for e in stored(system, f"Counter-wide-{i}")] == [1, 2]
    assert router_node(system)["live"] <= 2


# -- snapshots ------------------------------------------------------------------------------


def evict(system: Any, stream_id: str) -> None:
    """With ``max_live=1`` and one shard: a command to another aggregate passivates
    ``stream_id``."""
    system.dispatch(Add("evictor", 1))
    assert stream_id not in aggregate_nodes(system)


def test_snapshots_are_stored_and_the_rebuild_starts_from_them(start_app: Any) -> None:
    system = start_app(make_app(max_live=1, shards=1))
    for amount in range(1, 8):
        system.dispatch(Count("t", amount))
    assert system.store.load_snapshot("Tally-t").version == 5  # snapshot_every = 5
    for amount in range(8, 13):
        system.dispatch(Count("t", amount))

    snapshot = system.store.load_snapshot("Tally-t")
    assert (snapshot.version, snapshot.schema_version, snapshot.type) == (10, 1, "Tally")
    assert snapshot.state == {"total": 55}
    rows = system.store.conn.execute("SELECT stream_id, version FROM snapshots").fetchall()
    assert rows == [("Tally-t", 10)]  # the latest only

    evict(system, "Tally-t")
    # Keep only the events after the snapshot: the rebuild is right only if it starts from it.
    assert system.store.truncate_stream("Tally-t", before_version=11) == 10
    result = system.dispatch(Count("t", 13))

    assert (result.version, result.events[0].data) == (13, Counted("t", 13, 91))


@pytest.mark.parametrize(
    ("schema_version", "state"),
    [(2, {"sum": 999}), (1, {"total": "999"})],
    ids=["other-snapshot-version", "state-does-not-fit"],
)
def test_an_unusable_snapshot_is_ignored(
    start_app: Any, schema_version: int, state: dict[str, Any]
) -> None:
    # A snapshot of another snapshot_version (the class changed its state's shape since), or
    # of this version but with a state that no longer restores: both are only a lost shortcut.
    system = start_app(make_app(max_live=1, shards=1))
    for amount in range(1, 8):
        system.dispatch(Count("t", amount))
    system.store.save_snapshot("Tally-t", 7, state, schema_version, "Tally")
    evict(system, "Tally-t")

    result = system.dispatch(Count("t", 8))

    assert (result.version, result.events[0].data) == (8, Counted("t", 8, 36))
    assert aggregate_nodes(system)["Tally-t"]["restarts"] == 0
