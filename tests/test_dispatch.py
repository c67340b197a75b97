"""Aggregates as actors, the router, dispatch and the application, on both Thespian bases.

The domain lives in ``tests/dispatch_domain.py``: on multiproc every actor is a forked process that
unpickles its classes by module path. Passivation and snapshots are in ``test_passivation.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import (
    AggregateFailed,
    Application,
    CommandRejected,
    DispatchResult,
    DispatchTimeout,
    InvalidCommand,
    RecordedEvent,
    SerializationError,
    SystemNotRunning,
    UnregisteredCommand,
    WrongExpectedVersion,
    _thespian,
)
from backstage_actors.testing import given

from .conftest import process_alive, wait_until
from .dispatch_domain import (
    Add,
    Added,
    AddTwice,
    Counter,
    Denied,
    Explode,
    Exploded,
    Gate,
    NotACommand,
    Nothing,
    Recorder,
    Reject,
    Smuggle,
    Stall,
    Unrouted,
    aggregate_nodes,
    make_app,
    make_router,
    router_node,
    stored,
)

ROOT = Path(__file__).resolve().parent.parent
# Every test that starts the application runs on SQLite and on the private PostgreSQL server.
STORES = ["sqlite", "postgres"]


# -- routing and identity -------------------------------------------------------------------


def test_result_names_the_stream_version_and_recorded_events(start_app: Any) -> None:
    system = start_app(make_app())

    first = system.dispatch(Add("c-1", 5))
    pair = system.dispatch(AddTwice("c-1", 1))
    nothing = system.dispatch(Nothing("c-1"))

    assert isinstance(first, DispatchResult)
    assert (first.stream_id, first.version) == ("Counter-c-1", 1)
    [event] = first.events
    assert isinstance(event, RecordedEvent)
    assert (event.stream_id, event.version, event.type) == ("Counter-c-1", 1, "Added")
    assert event.data == Added("c-1", 5, 5)
    assert first.position == event.position
    meta = event.metadata
    assert meta["command_id"] == first.command_id
    # Without given ids, a command starts its own correlation and causes its own events.
    assert meta["correlation_id"] == meta["causation_id"] == first.command_id
    assert first.correlation_id == first.command_id
    # One command, two events: both in the result, versions in order, one command id.
    assert pair.version == 3
    assert [(e.version, e.data) for e in pair.events] == [
        (2, Added("c-1", 1, 6)),
        (3, Added("c-1", 1, 7)),
    ]
    assert {e.metadata["command_id"] for e in pair.events} == {pair.command_id}
    # Accepted without events: the stream stays where it was.
    assert (nothing.stream_id, nothing.version, nothing.events) == ("Counter-c-1", 3, [])
    assert [e.event_id for e in stored(system, "Counter-c-1")] == [
        e.event_id for e in [event, *pair.events]
    ]


def test_given_correlation_and_causation_ids_are_kept(start_app: Any) -> None:
    system = start_app(make_app())

    result = system.dispatch(
        Add("c-2", 1),
        metadata={"correlation_id": "corr-7", "causation_id": "event-6", "user": "ada"},
    )

    [event] = stored(system, "Counter-c-2")
    for meta in (result.events[0].metadata, event.metadata):
        assert meta["correlation_id"] == "corr-7"
        assert meta["causation_id"] == "event-6"
        assert meta["user"] == "ada"
        assert meta["command_id"] == result.command_id
    assert result.correlation_id == "corr-7"
    assert result.command_id not in ("corr-7", "event-6")  # the command still has its own id


def test_each_aggregate_instance_lives_in_its_shard(start_app: Any) -> None:
    system = start_app(make_app())
    system.dispatch(Add("x", 1))
    system.dispatch(Add("y", 1))

    nodes = aggregate_nodes(system)

    assert set(nodes) == {"Counter-x", "Counter-y"}
    assert {n["kind"] for n in nodes.values()} == {"aggregate"}
    assert router_node(system)["live"] == 2
    shards = {s["name"]: s for s in router_node(system)["children"]}
    assert {s["kind"] for s in shards.values()} == {"shard"}
    if system.base == "multiproc":
        # In the shards' processes: neither the caller's nor the router's, one per shard.
        pids = {n["pid"] for n in nodes.values()}
        assert os.getpid() not in pids and router_node(system)["pid"] not in pids
        assert pids <= {s["pid"] for s in shards.values()}
    # Later commands find the same aggregate again, in the same shard.
    for _ in range(3):
        system.dispatch(Add("x", 1))
    again = aggregate_nodes(system)
    assert again["Counter-x"]["pid"] == nodes["Counter-x"]["pid"]
    assert (again["Counter-x"]["restarts"], again["Counter-x"]["version"]) == (0, 4)
    assert set(again) == {"Counter-x", "Counter-y"}


# -- serialization of one aggregate's commands ----------------------------------------------


def assert_serialized(system: Any, stream_id: str, versions: list[int], count: int) -> None:
    """``count`` commands of ``Add(..., 1)`` ran one at a time: versions 1..count, no gap,
    no duplicate, and each event's total is its version (every command saw the previous one)."""
    assert sorted(versions) == list(range(1, count + 1))
    events = stored(system, stream_id)
    assert [e.version for e in events] == list(range(1, count + 1))
    assert [e.data.total for e in events] == list(range(1, count + 1))


def test_commands_from_many_threads_are_serialized(start_app: Any) -> None:
    system = start_app(make_app())
    threads, per_thread = 4, 15
    versions: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(per_thread):
                versions[index].append(system.dispatch(Add("shared", 1), timeout=20).version)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert not any(w.is_alive() for w in workers)
    assert errors == []
    # Each thread saw its own commands land in order...
    assert all(v == sorted(v) for v in versions)
    # ...and together they form one gapless history.
    assert_serialized(system, "Counter-shared", [v for vs in versions for v in vs], 60)


ATTACHED_CLIENT = """
import json, sys
from backstage_actors import _thespian
from tests.dispatch_domain import Add, make_app

port, count = int(sys.argv[1]), int(sys.argv[2])
system = make_app().attach(_thespian.attach(port))
print("ready", flush=True)
sys.stdin.readline()  # "go"
versions = [system.dispatch(Add("shared", 1), timeout=20).version for _ in range(count)]
print(json.dumps(versions), flush=True)
# No stop() and no shutdown(): this process only attached; the system is the test's.
"""


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])
def test_commands_from_a_second_process_are_serialized(start_app: Any) -> None:
    system = start_app(make_app())
    port = system.actor_system.capabilities["Admin Port"]
    count = 40
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    client = subprocess.Popen(
        [sys.executable, "-c", ATTACHED_CLIENT, str(port), str(count)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "ready"
        client.stdin.write("go\n")
        client.stdin.flush()
        local = [system.dispatch(Add("shared", 1), timeout=20).version for _ in range(count)]
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err
    remote = json.loads(out.strip().splitlines()[-1])
    assert local == sorted(local) and remote == sorted(remote)
    assert_serialized(system, "Counter-shared", local + remote, 2 * count)


# -- rejections and crashes -----------------------------------------------------------------


def test_rejection_names_the_error_and_keeps_the_state(start_app: Any) -> None:
    system = start_app(make_app())
    system.dispatch(Add("r", 3))

    with pytest.raises(CommandRejected) as caught:
        system.dispatch(Reject("r", "account is frozen"))

    assert caught.value.error_type == "ValueError"
    assert caught.value.message == "account is frozen"
    assert caught.value.command == "Reject"
    assert "account is frozen" in str(caught.value)
    after = system.dispatch(Add("r", 4))
    assert (after.version, after.events[0].data) == (2, Added("r", 4, 7))
    # A rejection is no crash: the same actor serves on.
    assert aggregate_nodes(system)["Counter-r"]["restarts"] == 0


def test_apply_failure_restarts_the_aggregate_and_loses_nothing_queued(start_app: Any) -> None:
    system = start_app(make_app())
    system.dispatch(Add("boom", 5))

    # One message per command, sent together: on multiproc the three behind the stall wait in
    # the aggregate's mailbox while it sleeps, and the crash must hand them to the next instance.
    results = system.dispatch_many(
        [Stall("boom", 0.3), Explode("boom"), Add("boom", 1), Add("boom", 2)],
        batch_size=1,
        timeout=20,
    )

    stall, exploded, one, two = results
    assert isinstance(stall, DispatchResult) and stall.version == 2
    assert isinstance(exploded, AggregateFailed)
    assert "Counter-boom" in str(exploded) and "Exploded cannot be applied" in str(exploded)
    # Served by the rebuilt instance, from the stored state: 5 + 0, then + 1, then + 2.
    assert isinstance(one, DispatchResult) and isinstance(two, DispatchResult)
    assert [(one.version, one.events[0].data.total), (two.version, two.events[0].data.total)] == [
        (3, 6),
        (4, 8),
    ]
    events = stored(system, "Counter-boom")
    assert not any(isinstance(e.data, Exploded) for e in events)
    assert [e.version for e in events] == [1, 2, 3, 4]
    node = aggregate_nodes(system)["Counter-boom"]
    assert node["restarts"] == 1
    assert "Exploded cannot be applied" in node["last_failure"]
    assert system.dispatch(Add("boom", 10)).events[0].data == Added("boom", 10, 18)


def test_apply_failure_in_a_batch_fails_only_that_command(start_app: Any) -> None:
    system = start_app(make_app())

    # One message: what the crashing aggregate decided before the crash is stored; the crash
    # fails its own command only, and the command after it runs on the state rebuilt from the
    # store. Another aggregate's commands are unaffected.
    results = system.dispatch_many(
        [Add("batch", 1), Add("bystander", 1), Explode("batch"), Add("batch", 2)]
    )

    assert [type(r).__name__ for r in results] == [
        "DispatchResult",
        "DispatchResult",
        "AggregateFailed",
        "DispatchResult",
    ]
    assert [e.data.total for e in stored(system, "Counter-batch")] == [1, 3]
    assert len(stored(system, "Counter-bystander")) == 1
    assert system.dispatch(Add("batch", 5)).events[0].data == Added("batch", 5, 8)
    assert aggregate_nodes(system)["Counter-batch"]["restarts"] == 1


def test_stored_event_that_cannot_be_applied_fails_without_crash_looping(
    start_app: Any,
) -> None:
    system = start_app(make_app())
    # Written behind the runtime's back: the aggregate's own code cannot apply it.
    system.store.append("Counter-cursed", [Added("cursed", 1, 1), Exploded("cursed")])

    for _ in range(3):
        with pytest.raises(AggregateFailed) as caught:
            system.dispatch(Add("cursed", 1))
        assert "Counter-cursed" in str(caught.value)
        assert "version 2" in str(caught.value)
        assert "Exploded cannot be applied" in str(caught.value)

    node = aggregate_nodes(system)["Counter-cursed"]
    assert (node["status"], node["restarts"]) == ("running", 0)
    assert [e.version for e in stored(system, "Counter-cursed")] == [1, 2]
    # Its neighbours are not affected.
    assert system.dispatch(Add("healthy", 2)).events[0].data == Added("healthy", 2, 2)
    assert router_node(system)["restarts"] == 0


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])
def test_sigkill_of_a_shard_process_loses_no_acknowledged_event(start_app: Any) -> None:
    system = start_app(make_app())
    acknowledged = [system.dispatch(Add("k", 1)) for _ in range(5)]
    old = aggregate_nodes(system)["Counter-k"]

    os.kill(old["pid"], signal.SIGKILL)
    # Sent at once: the router may not have heard of the death yet.
    after = system.dispatch(Add("k", 10), timeout=10)

    assert (after.version, after.events[0].data) == (6, Added("k", 10, 15))
    shard = wait_until(
        lambda: next(
            (s for s in router_node(system)["children"] if s["restarts"] == 1 and s.get("pid")),
            None,
        ),
        what="the restart of Counter-k's shard",
    )
    new = aggregate_nodes(system)["Counter-k"]
    assert new["pid"] == shard["pid"] != old["pid"]  # rebuilt in the new shard process
    assert not process_alive(old["pid"])
    ids = [e.event_id for e in stored(system, "Counter-k")]
    assert ids[:5] == [r.events[0].event_id for r in acknowledged]
    assert len(ids) == 6


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])
@pytest.mark.parametrize("max_restarts", [1, 3])
def test_restart_intensity_decides_when_the_application_gives_up(
    start_app: Any, max_restarts: int
) -> None:
    system = start_app(make_app(restart_intensity=(max_restarts, 60.0)))
    system.dispatch(Add("ri", 1))

    for _ in range(2):
        pid = router_node(system)["pid"]
        os.kill(pid, signal.SIGKILL)
        # Either the router is back under a new pid, or the root supervisor gave up.
        wait_until(
            lambda pid=pid: _router_replaced_or_gone(system, pid), what="the router's restart"
        )

    if max_restarts == 1:  # two crashes within 60 s are one too many
        with pytest.raises(SystemNotRunning):
            system.tree(timeout=2)
        # Stopping it does not ask the root that gave up to stop (that waited out 30 s).
        started = time.monotonic()
        system.stop()
        assert time.monotonic() - started < 15.0
    else:
        assert router_node(system)["restarts"] == 2
        assert system.dispatch(Add("ri", 1)).version == 2


def _router_replaced_or_gone(system: Any, old_pid: int) -> bool:
    # A root that gave up has left the admin's names: asking it for the tree would wait out
    # tree()'s whole timeout (6 s) before saying SystemNotRunning.
    with system._endpoint() as endpoint:
        if _thespian.global_address(endpoint, system.app.root_name) is None:
            return True
    try:
        return router_node(system).get("pid") not in (None, old_pid)
    except SystemNotRunning:
        return True


# -- optimistic concurrency -----------------------------------------------------------------


def test_foreign_write_makes_the_aggregate_catch_up_and_retry(start_app: Any) -> None:
    system = start_app(make_app())
    system.dispatch(Add("occ", 1))  # the actor is live, its state at version 1
    # Another writer appends behind its back.
    system.store.append("Counter-occ", [Added("occ", 10, 11)], expected_version=1)

    result = system.dispatch(Add("occ", 100))

    # The first append failed on the version, the actor rebuilt and ran the command again.
    assert (result.version, result.events[0].data) == (3, Added("occ", 100, 111))
    assert [e.data.amount for e in stored(system, "Counter-occ")] == [1, 10, 100]


def test_without_retries_a_foreign_write_is_a_wrong_expected_version(start_app: Any) -> None:
    system = start_app(make_app(max_retries=0))
    system.dispatch(Add("occ", 1))
    system.store.append("Counter-occ", [Added("occ", 10, 11)], expected_version=1)

    with pytest.raises(WrongExpectedVersion) as caught:
        system.dispatch(Add("occ", 100))

    assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == (
        "Counter-occ",
        1,
        2,
    )
    assert len(stored(system, "Counter-occ")) == 2
    # The failed attempt left the actor rebuilt from the store: the next command just works.
    after = system.dispatch(Add("occ", 100))
    assert (after.version, after.events[0].data) == (3, Added("occ", 100, 111))


def test_a_batch_that_meets_a_foreign_write_stores_nothing_decided_on_a_stale_state(
    start_app: Any,
) -> None:
    """Three commands to one aggregate in one dispatch_many: each decided on the state the one
    before it makes. The first meets another writer's event; the two after it must not be
    stored on the state it was to make (the second expects the version the foreign event has)."""
    system = start_app(make_app())
    system.dispatch(Add("occ", 1))
    system.store.append("Counter-occ", [Added("occ", 10, 11)], expected_version=1)

    results = system.dispatch_many([Add("occ", 100), Add("occ", 1000), Add("occ", 5)])

    assert [r.events[0].data for r in results] == [
        Added("occ", 100, 111),
        Added("occ", 1000, 1111),
        Added("occ", 5, 1116),
    ]
    totals = [(e.data.amount, e.data.total) for e in stored(system, "Counter-occ")]
    assert totals == [(1, 1), (10, 11), (100, 111), (1000, 1111), (5, 1116)]


def test_without_retries_only_the_command_that_met_a_foreign_write_fails(
    start_app: Any,
) -> None:
    """The command after it was refused only for counting on it: it runs again on the stored
    state, and that does not count as a retry."""
    system = start_app(make_app(max_retries=0))
    system.dispatch(Add("occ", 1))
    system.store.append("Counter-occ", [Added("occ", 10, 11)], expected_version=1)

    conflicting, after = system.dispatch_many([Add("occ", 100), Add("occ", 1000)])

    assert isinstance(conflicting, WrongExpectedVersion) and conflicting.actual == 2
    assert isinstance(after, DispatchResult), after
    assert after.events[0].data == Added("occ", 1000, 1011)
    assert [e.data.amount for e in stored(system, "Counter-occ")] == [1, 10, 1000]


# -- middleware -----------------------------------------------------------------------------


def test_middleware_can_halt_and_sees_every_outcome(start_app: Any) -> None:
    recorder = Recorder()
    system = start_app(make_app(middleware=[recorder, Gate()]))

    with pytest.raises(Denied, match="mallory may not Add"):
        system.dispatch(Add("m", 1), metadata={"user": "mallory"})
    assert stored(system, "Counter-m") == []
    assert aggregate_nodes(system) == {}  # halted before anything was sent

    ok = system.dispatch(Add("m", 2), metadata={"user": "ada"})
    with pytest.raises(CommandRejected) as rejected:
        system.dispatch(Reject("m", "no"))

    assert [(hook, name) for hook, name, _ in recorder.calls] == [
        ("before", "Add"),
        ("failure", "Add"),
        ("before", "Add"),
        ("after", "Add"),
        ("before", "Reject"),
        ("failure", "Reject"),
    ]
    assert isinstance(recorder.calls[1][2], Denied)
    assert recorder.calls[3][2] is ok
    assert recorder.calls[5][2] is rejected.value
    # What before_dispatch adds to the metadata is stored with the events.
    assert ok.events[0].metadata["seen_by"] == "recorder"
    assert ok.events[0].metadata["user"] == "ada"


def test_dispatch_many_answers_each_command_in_order(start_app: Any) -> None:
    system = start_app(make_app())
    commands: list[Any] = []
    for round_ in range(8):
        for n in range(5):
            if (round_ + n) % 4 == 0:
                commands.append(Reject(f"m-{n}", f"no {round_}"))
            else:
                commands.append(Add(f"m-{n}", 1))
    commands[7:7] = [Unrouted("m-0"), NotACommand("m-0"), Add("", 1)]

    results = system.dispatch_many(commands, batch_size=7, timeout=30)

    assert len(results) == len(commands)
    expected_version: dict[str, int] = {}
    for command, result in zip(commands, results, strict=True):
        if isinstance(command, Add) and command.counter_id:
            stream_id = f"Counter-{command.counter_id}"
            expected_version[stream_id] = expected_version.get(stream_id, 0) + 1
            assert isinstance(result, DispatchResult), result
            # Commands to one aggregate ran in the order they were given.
            assert (result.stream_id, result.version) == (stream_id, expected_version[stream_id])
            assert result.events[0].data.total == result.version
        elif isinstance(command, Reject):
            assert isinstance(result, CommandRejected) and result.message == command.reason
        elif isinstance(command, Unrouted):
            assert isinstance(result, UnregisteredCommand)
        else:
            assert isinstance(result, InvalidCommand)
    assert system.store.last_position() == sum(expected_version.values())
    for stream_id, version in expected_version.items():
        assert system.store.stream_version(stream_id) == version


# -- timeouts and bad input -----------------------------------------------------------------


# Multiproc only: on simpleSystemBase every actor runs inside the caller's own thread, so a
# blocking execute blocks the caller itself and no timeout can fire meanwhile.
@pytest.mark.parametrize("base", ["multiproc"])
def test_a_command_that_takes_too_long_times_out(start_app: Any) -> None:
    system = start_app(make_app())

    with pytest.raises(DispatchTimeout, match="Stall"):
        system.dispatch(Stall("slow", 1.0), timeout=0.2)

    # The stalled command still completes; the next one queues behind it, and its answer is
    # not confused with the late answer of the timed-out one.
    after = system.dispatch(Add("slow", 1), timeout=10)
    assert (after.version, after.events[0].data) == (2, Added("slow", 1, 1))
    assert [type(e.data).__name__ for e in stored(system, "Counter-slow")] == ["Added"] * 2


@pytest.mark.parametrize("base", ["simple"])
def test_in_process_a_caller_queued_behind_a_slow_command_returns_by_its_deadline(
    start_app: Any,
) -> None:
    """In-process, a thread whose dispatch queues behind another thread's slow command gets
    its DispatchTimeout at its own deadline, while that command still runs, and its command is
    never executed (it was never sent); the system serves on."""
    system = start_app(make_app())
    returned: dict[str, Any] = {}

    def slow() -> None:
        returned["slow"] = system.dispatch(Stall("slow", 3.0), timeout=30)

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        wait_until(lambda: system._courier.combiner._server is not None, 10)  # it runs the actors
        with pytest.raises(DispatchTimeout, match=r"Add: not sent within 0\.3s.*not executed"):
            system.dispatch(Add("other", 1), timeout=0.3)
        assert "slow" not in returned  # the slow command had not ended
    finally:
        thread.join(30)
    assert returned["slow"].version == 1
    assert stored(system, "Counter-other") == []
    assert system.dispatch(Add("other", 2)).version == 1


@pytest.mark.parametrize(
    ("command", "error", "match"),
    [
        (NotACommand("b"), InvalidCommand, "attrs class or dataclass.*NotACommand"),
        (Unrouted("b"), UnregisteredCommand, "Unrouted"),
        (Add("", 1), InvalidCommand, "counter_id"),
        (Add("   ", 1), InvalidCommand, "counter_id"),
        (Add(None, 1), InvalidCommand, "counter_id"),  # type: ignore[arg-type]
    ],
    ids=["not-attrs", "unrouted", "empty-identity", "blank-identity", "no-identity"],
)
def test_bad_command_is_refused_and_the_system_serves_on(
    start_app: Any, command: Any, error: type[BaseException], match: str
) -> None:
    system = start_app(make_app())
    system.dispatch(Add("b", 1))

    with pytest.raises(error, match=match):
        system.dispatch(command)

    assert system.dispatch(Add("b", 1)).version == 2


def test_unserializable_event_names_the_field_path(start_app: Any) -> None:
    system = start_app(make_app())
    system.dispatch(Add("s", 1))

    with pytest.raises(SerializationError) as caught:
        system.dispatch(Smuggle("s"))

    assert caught.value.path == "$.lines[1].blob"
    assert "Smuggled" in str(caught.value) and "$.lines[1].blob" in str(caught.value)
    assert len(stored(system, "Counter-s")) == 1
    # Nothing of it was applied either: the state is what the stored events say.
    assert system.dispatch(Add("s", 1)).events[0].data == Added("s", 1, 2)
    assert aggregate_nodes(system)["Counter-s"]["restarts"] == 0


# -- the pytest plugin ----------------------------------------------------------------------


def test_given_when_then_runs_an_aggregate_without_actors() -> None:
    given([Added("g", 5, 5)], aggregate=Counter).when(Add("g", 2)).then(Added("g", 2, 7))
    given([], aggregate=Counter).when(AddTwice("g", 1)).then([Added("g", 1, 1), Added("g", 1, 2)])
    # With a router instead of a class, the command's route picks the aggregate.
    given([Added("g", 5, 5)], router=make_router()).when(Nothing("g")).then(None)
    given(aggregate=Counter).when(Reject("g", "frozen")).then_raises(ValueError, match="froz")


def test_given_when_then_fails_when_it_should() -> None:
    with pytest.raises(AssertionError, match="produced"):
        given(aggregate=Counter).when(Add("g", 1)).then(Added("g", 1, 2))
    with pytest.raises(AssertionError, match="was rejected"):
        given(aggregate=Counter).when(Reject("g", "no")).then([])
    with pytest.raises(AssertionError, match="was not rejected"):
        given(aggregate=Counter).when(Add("g", 1)).then_raises(ValueError)
    with pytest.raises(AssertionError, match="does not match"):
        given(aggregate=Counter).when(Reject("g", "no")).then_raises(ValueError, match="yes")
    with pytest.raises(AssertionError, match="not TypeError"):
        given(aggregate=Counter).when(Reject("g", "no")).then_raises(TypeError)
    # The produced events must apply, as the runtime will apply them.
    with pytest.raises(RuntimeError, match="cannot be applied"):
        given(aggregate=Counter).when(Explode("g"))


@pytest.fixture
def backstage_app() -> Application:
    """What the plugin's ``backstage_system`` fixture starts."""
    return make_app("plugin")


def test_backstage_system_fixture_runs_the_app(backstage_system: Any, tmp_path: Path) -> None:
    result = backstage_system.dispatch(Add("p", 3))

    assert (result.stream_id, result.version) == ("Counter-p", 1)
    assert backstage_system.base == "simple"
    assert backstage_system.app.name == "plugin"
    # A database of the test's own.
    assert Path(backstage_system.settings.database).parent == tmp_path
    assert [e.data for e in stored(backstage_system, "Counter-p")] == [Added("p", 3, 3)]
