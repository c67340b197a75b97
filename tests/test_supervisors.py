"""Supervision trees on both Thespian bases: crashes, strategies, restart types, intensity, shutdown."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from supervisors import (
    Backoff,
    ChildSpec,
    Failure,
    Forward,
    SupervisionError,
    SupervisorSpec,
    start_child,
    start_supervisor,
    stop_supervisor,
    terminate_child,
    tree,
    whereis,
)

from .conftest import process_alive, wait_until
from .supervision_actors import Probe, Worker


@pytest.fixture
def probe(actor_system: Any) -> Any:
    return actor_system.createActor(Probe)


def events(actor_system: Any, probe: Any, kind: str | None = None) -> list[tuple[Any, ...]]:
    """The workers' reports in the order they happened (by their monotonic clock, which every
    process of the machine shares): messages from different processes may arrive out of order."""
    record = actor_system.ask(probe, "dump", 5)
    return sorted((e for e in record if kind is None or e[0] == kind), key=lambda e: e[-1])


def reported(actor_system: Any, probe: Any, kind: str, count: int) -> list[tuple[Any, ...]]:
    """Every report once ``count`` of ``kind`` reached the probe: a worker's report travels from
    its own process and may arrive after whatever the test waited on (a reply, an address)."""
    return wait_until(
        lambda: len(events(actor_system, probe, kind)) >= count and events(actor_system, probe),
        what=f"{count} {kind!r} reports",
    )


def names(record: list[tuple[Any, ...]]) -> list[str]:
    return [f"{e[0]}:{e[1]}" for e in record]


def child(node: dict[str, Any], *path: str) -> dict[str, Any]:
    for name in path:
        node = next(c for c in node["children"] if c["name"] == name)
    return node


def worker(name: str, probe: Any, restart: str = "permanent", **args: Any) -> ChildSpec:
    return ChildSpec(name, Worker, restart=restart, args={"probe": probe, **args})  # type: ignore[arg-type]


def restarted(actor_system: Any, root: Any, old: Any, *path: str) -> Any:
    """The new address of the child at ``path`` once it differs from ``old``."""

    def lookup() -> Any:
        sup = root
        for name in path[:-1]:
            sup = whereis(actor_system, sup, name)
        address = whereis(actor_system, sup, path[-1])
        return address if address is not None and address != old else None

    return wait_until(lookup, what=f"restart of {'/'.join(path)}")


def test_crash_gives_sender_a_failure_and_fresh_state(actor_system: Any, probe: Any) -> None:
    root = start_supervisor(actor_system, SupervisorSpec(children=[worker("w", probe)]))
    first = whereis(actor_system, root, "w")
    assert actor_system.ask(first, "inc", 5) == 1
    assert actor_system.ask(first, "inc", 5) == 2

    reply = actor_system.ask(first, "boom", 5)

    assert isinstance(reply, Failure)
    assert (reply.error_type, reply.message) == ("ValueError", "boom on purpose")
    second = restarted(actor_system, root, first, "w")
    # The new instance starts from on_start, not from the half-changed state (2 + 100).
    assert actor_system.ask(second, "get", 5) == 0
    # Thespian's own retry would have run the handler again: it ran exactly once.
    reported(actor_system, probe, "boom", 1)
    assert len(events(actor_system, probe, "boom")) == 1
    assert child(tree(actor_system, root), "w")["restarts"] == 1


def test_messages_for_a_restarting_child_reach_the_next_instance(
    actor_system: Any, probe: Any
) -> None:
    root = start_supervisor(actor_system, SupervisorSpec(children=[worker("w", probe)]))
    actor_system.tell(root, Forward("w", "inc-silently"))
    actor_system.tell(root, Forward("w", "boom"))
    for _ in range(3):  # reach the crashing instance or the supervisor while w is between instances
        actor_system.tell(root, Forward("w", "inc-silently"))

    replies = [actor_system.ask(root, Forward("w", "get"), 5)]
    while isinstance(replies[-1], Failure):
        replies.append(actor_system.listen(5))

    # The crash answered the sender of "boom" once; the three later increments all reached the
    # fresh instance, in order, before "get".
    assert [type(r).__name__ for r in replies] == ["Failure", "int"] or replies[0] == 3
    assert replies[-1] == 3
    assert child(tree(actor_system, root), "w")["restarts"] == 1


def test_on_start_failure_is_a_crash(actor_system: Any, probe: Any) -> None:
    spec = SupervisorSpec(max_restarts=2, within=60, children=[worker("w", probe, fail_start=True)])
    with pytest.raises(SupervisionError, match="RestartIntensity"):
        start_supervisor(actor_system, spec, timeout=20)


def test_a_dynamic_child_that_fails_to_start_twice_is_given_up(
    actor_system: Any, probe: Any
) -> None:
    """Started on demand, it would fail the same way forever: after two failed starts in a row it
    is stopped (whoever waits hears of it), and the supervisor serves on. Started on demand
    again, its recent failures still count: one more attempt, not two."""
    root = start_supervisor(actor_system, SupervisorSpec(max_restarts=100, within=60))
    spec = worker("bad", probe, restart="transient", fail_start=True)

    with pytest.raises(SupervisionError, match="ChildStopped"):
        start_child(actor_system, root, spec)
    with pytest.raises(SupervisionError, match="ChildStopped"):
        start_child(actor_system, root, spec)

    reported(actor_system, probe, "attempt", 3)
    assert len(events(actor_system, probe, "attempt")) == 3
    assert tree(actor_system, root)["children"] == []
    assert actor_system.ask(start_child(actor_system, root, worker("good", probe)), "inc", 5) == 1


@pytest.mark.process
def test_sigkill_of_a_worker_process_restarts_it(multiproc_system: Any) -> None:
    asys = multiproc_system
    probe = asys.createActor(Probe)
    root = start_supervisor(asys, SupervisorSpec(children=[worker("w", probe)]))
    first = whereis(asys, root, "w")
    pid = asys.ask(first, "pid", 5)
    asys.ask(first, "inc", 5)

    os.kill(pid, signal.SIGKILL)

    second = restarted(asys, root, first, "w")
    assert asys.ask(second, "get", 5) == 0
    assert asys.ask(second, "pid", 5) != pid
    node = child(tree(asys, root), "w")
    assert node["restarts"] == 1
    assert "Killed" in node["last_failure"]


@pytest.mark.process
def test_a_tree_waiting_on_a_child_that_dies_is_answered_at_once(multiproc_system: Any) -> None:
    """A child killed while its supervisor waits for its description will never answer: the
    tree was answered only at its timeout (5 s by default; after every SIGKILL a test's first
    tree() took that long), with the child 'unresponsive'."""
    from supervisors._messages import GetTree, TreeNode

    asys = multiproc_system
    probe = asys.createActor(Probe)
    root = start_supervisor(asys, SupervisorSpec(children=[worker("w", probe)]))
    first = whereis(asys, root, "w")
    pid = asys.ask(first, "pid", 5)
    os.kill(pid, signal.SIGSTOP)  # it cannot answer the description it is asked for
    try:
        asys.tell(root, GetTree("tree-of-a-dying-child", 30.0))
        whereis(asys, root, "w")  # answered after the GetTree: the child's description is asked
    finally:
        os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    deadline = started + 30.0
    reply = None
    while not (isinstance(reply, TreeNode) and reply.request_id == "tree-of-a-dying-child"):
        assert time.monotonic() < deadline, "no tree"
        reply = asys.listen(1.0)
    assert time.monotonic() - started < 15.0
    assert child(reply.node, "w")["status"] != "unresponsive"
    assert restarted(asys, root, first, "w") is not None


@pytest.mark.process
def test_sigkill_of_a_nested_supervisor_takes_its_subtree_and_restarts_it(
    multiproc_system: Any,
) -> None:
    asys = multiproc_system
    probe = asys.createActor(Probe)
    inner = SupervisorSpec(children=[worker("a", probe), worker("b", probe)])
    root = start_supervisor(asys, SupervisorSpec(children=[ChildSpec("inner", inner)]))
    before = tree(asys, root)
    inner_pid = child(before, "inner")["pid"]
    worker_pids = [child(before, "inner", n)["pid"] for n in ("a", "b")]

    os.kill(inner_pid, signal.SIGKILL)

    # The orphaned workers die with their supervisor instead of living on beside the new ones.
    for pid in worker_pids:
        wait_until(lambda pid=pid: not process_alive(pid), what=f"orphan {pid} to die")
    after = wait_until(
        lambda: (
            (t := tree(asys, root))
            and child(t, "inner")["status"] == "running"
            and all(child(t, "inner", n)["status"] == "running" for n in ("a", "b"))
            and t
        ),
        what="subtree restart",
    )
    assert child(after, "inner")["restarts"] == 1
    assert child(after, "inner")["pid"] != inner_pid
    assert {child(after, "inner", n)["pid"] for n in ("a", "b")}.isdisjoint(worker_pids)


@pytest.mark.parametrize(
    ("strategy", "restarted_names"),
    [
        ("one_for_one", ["b"]),
        ("one_for_all", ["a", "b", "c"]),
        ("rest_for_one", ["b", "c"]),
    ],
)
def test_strategy_restarts_in_order(
    actor_system: Any, probe: Any, strategy: str, restarted_names: list[str]
) -> None:
    spec = SupervisorSpec(
        strategy=strategy,  # type: ignore[arg-type]
        children=[worker("a", probe), worker("b", probe), worker("c", probe)],
    )
    root = start_supervisor(actor_system, spec)
    old = whereis(actor_system, root, "b")
    assert isinstance(actor_system.ask(old, "boom", 5), Failure)
    restarted(actor_system, root, old, "b")
    others = [n for n in restarted_names if n != "b"]
    # The siblings' "stop" reports may arrive after every "start": wait for both.
    reported(actor_system, probe, "stop", len(others))
    record = reported(actor_system, probe, "start", 3 + len(restarted_names))

    after_boom = names(record[[e[0] for e in record].index("boom") + 1 :])
    # Siblings stop in reverse start order, then everything restarts in start order.
    assert after_boom == [f"stop:{n}" for n in reversed(others)] + [
        f"start:{n}" for n in restarted_names
    ]
    node = tree(actor_system, root)
    assert {n: child(node, n)["restarts"] for n in "abc"} == {
        n: int(n in restarted_names) for n in "abc"
    }


@pytest.mark.parametrize(
    ("restart", "after_exit", "after_crash"),
    [("permanent", True, True), ("transient", False, True), ("temporary", False, False)],
)
def test_restart_types(
    actor_system: Any, probe: Any, restart: str, after_exit: bool, after_crash: bool
) -> None:
    spec = SupervisorSpec(children=[worker("x", probe, restart), worker("y", probe, restart)])
    root = start_supervisor(actor_system, spec)
    x, y = whereis(actor_system, root, "x"), whereis(actor_system, root, "y")

    assert actor_system.ask(x, "quit", 5) == "bye"
    assert isinstance(actor_system.ask(y, "boom", 5), Failure)

    def settled() -> Any:
        node = tree(actor_system, root)
        kids = {c["name"]: c for c in node["children"]}
        busy = [c for c in kids.values() if c["status"] not in ("running", "stopped")]
        return None if busy else (kids,)

    (kids,) = wait_until(settled, what="children to settle")
    for name, expect in (("x", after_exit), ("y", after_crash)):
        if expect:
            assert kids[name]["status"] == "running" and kids[name]["restarts"] == 1
        elif restart == "temporary":
            assert name not in kids  # a temporary child is forgotten
        else:
            assert kids[name]["status"] == "stopped"


def test_restart_intensity_escalates_two_levels(
    actor_system: Any, probe: Any, base: str, tmp_path: Any, caplog: Any
) -> None:
    mid = SupervisorSpec(max_restarts=1, within=60, children=[worker("w", probe)])
    root = start_supervisor(
        actor_system, SupervisorSpec(max_restarts=1, within=60, children=[ChildSpec("mid", mid)])
    )

    def crash_w() -> None:
        address = whereis(actor_system, whereis(actor_system, root, "mid"), "w")
        assert isinstance(actor_system.ask(address, "boom", 5), Failure)

    crash_w()  # mid restarts w
    wait_until(lambda: child(tree(actor_system, root), "mid", "w")["restarts"] == 1)
    crash_w()  # mid gives up; root restarts mid (with a fresh w)
    node = wait_until(
        lambda: (
            (t := tree(actor_system, root))
            and child(t, "mid")["restarts"] == 1
            and child(t, "mid")["status"] == "running"
            and child(t, "mid", "w")["status"] == "running"
            and t
        )
    )
    assert child(node, "mid", "w")["restarts"] == 0
    crash_w()
    wait_until(lambda: child(tree(actor_system, root), "mid", "w")["restarts"] == 1)
    crash_w()  # mid gives up again; root is over its intensity and stops the whole tree

    def root_gone() -> bool:
        try:
            tree(actor_system, root, timeout=1.0)
        except SupervisionError:
            return True
        return False

    wait_until(root_gone, timeout=20, what="root to stop")

    def logged() -> bool:
        # On multiproc the line travels through Thespian's logger process: it may be written
        # after the root is already gone.
        log_text = caplog.text if base == "simple" else (tmp_path / "actors.log").read_text()
        return "root supervisor gives up" in log_text and "RestartIntensity" in log_text

    wait_until(logged, what="the root's last words in the log")


def test_backoff_delays_grow(actor_system: Any, probe: Any) -> None:
    spec = SupervisorSpec(
        max_restarts=10,
        within=60,
        backoff=Backoff(base=0.2, cap=5.0, jitter=0.0),
        children=[worker("w", probe)],
    )
    root = start_supervisor(actor_system, spec)
    address = whereis(actor_system, root, "w")
    for _ in range(3):
        assert isinstance(actor_system.ask(address, "boom", 5), Failure)
        address = restarted(actor_system, root, address, "w")
    # The last worker's "start" report may reach the probe after its address reached us.
    record = reported(actor_system, probe, "start", 4)
    booms = [e[-1] for e in record if e[0] == "boom"]
    starts = [e[-1] for e in record if e[0] == "start"][1:]
    delays = [start - boom for boom, start in zip(booms, starts, strict=True)]
    for delay, expected in zip(delays, (0.2, 0.4, 0.8), strict=True):
        assert expected <= delay < expected + 1.5


def test_dynamic_children(actor_system: Any, probe: Any) -> None:
    root = start_supervisor(actor_system, SupervisorSpec(children=[]))
    address = start_child(actor_system, root, worker("dyn", probe))
    assert actor_system.ask(address, "inc", 5) == 1
    assert whereis(actor_system, root, "dyn") == address
    # Starting a live name again is idempotent.
    assert start_child(actor_system, root, worker("dyn", probe)) == address

    terminate_child(actor_system, root, "dyn")

    assert whereis(actor_system, root, "dyn") is None
    assert tree(actor_system, root)["children"] == []
    reported(actor_system, probe, "start", 1)
    assert names(reported(actor_system, probe, "stop", 1)) == ["start:dyn", "stop:dyn"]


def test_thousands_of_dynamic_children_in_process(probe: Any, base: str, actor_system: Any) -> None:
    if base != "simple":
        pytest.skip("one process per actor: thousands are for simpleSystemBase")
    root = start_supervisor(actor_system, SupervisorSpec(children=[]))
    from supervisors import StartChild

    for i in range(3000):
        actor_system.tell(root, StartChild(ChildSpec(f"w{i}", Worker, args={})))
    node = tree(actor_system, root, timeout=30)
    assert len(node["children"]) == 3000
    assert all(c["status"] == "running" for c in node["children"])
    assert actor_system.ask(whereis(actor_system, root, "w2999"), "inc", 5) == 1


def test_orderly_shutdown_stops_children_in_reverse_order(actor_system: Any, probe: Any) -> None:
    inner = SupervisorSpec(children=[worker("b1", probe), worker("b2", probe)])
    spec = SupervisorSpec(children=[worker("a", probe), ChildSpec("b", inner), worker("c", probe)])
    root = start_supervisor(actor_system, spec)

    stop_supervisor(actor_system, root)

    reported(actor_system, probe, "stop", 4)
    assert names(events(actor_system, probe, "stop")) == ["stop:c", "stop:b2", "stop:b1", "stop:a"]


@pytest.mark.process
def test_shutdown_kills_a_child_that_hangs(multiproc_system: Any) -> None:
    asys = multiproc_system
    probe = asys.createActor(Probe)
    spec = SupervisorSpec(
        children=[
            worker("first", probe),
            ChildSpec("stuck", Worker, args={"probe": probe}, shutdown=1.0),
            worker("last", probe),
        ]
    )
    root = start_supervisor(asys, spec)
    stuck = whereis(asys, root, "stuck")
    stuck_pid = asys.ask(stuck, "pid", 5)
    assert asys.ask(stuck, "hang", 5) == "hanging"

    started = time.monotonic()
    stop_supervisor(asys, root, timeout=20)

    assert 1.0 <= time.monotonic() - started < 10
    assert not process_alive(stuck_pid)
    # The others stopped cleanly, in reverse order, around the stuck one.
    reported(asys, probe, "stop", 2)
    assert names(events(asys, probe, "stop")) == ["stop:last", "stop:first"]


def test_tree_reports_kinds_statuses_and_worker_details(actor_system: Any, probe: Any) -> None:
    inner = SupervisorSpec(children=[worker("leaf", probe)])
    root = start_supervisor(
        actor_system, SupervisorSpec(children=[worker("w", probe), ChildSpec("inner", inner)])
    )
    actor_system.ask(whereis(actor_system, root, "w"), "inc", 5)

    node = tree(actor_system, root)

    assert (node["name"], node["kind"], node["status"]) == ("root", "supervisor", "running")
    assert child(node, "w")["kind"] == "worker"
    assert child(node, "w")["count"] == 1  # from Worker.describe()
    assert child(node, "inner")["kind"] == "supervisor"
    assert child(node, "inner", "leaf")["status"] == "running"
    for each in (node, child(node, "w"), child(node, "inner", "leaf")):
        assert set(each) >= {"name", "kind", "address", "status", "restarts", "children"}
