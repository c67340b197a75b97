"""Lanes: on multiproc a client sends its commands for an aggregate over its shard process's
local socket (``backstage_actors._lane``; one per shard) instead of a Thespian TCP message.

Whatever goes wrong on a lane, the command takes the router's way, named, so that it runs once.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import threading
import time
from typing import Any

import pytest

from backstage_actors import _lane
from backstage_actors._protocol import Execute, Executed
from backstage_actors._shard import shard_of
from backstage_actors.command import new_item

from .conftest import wait_until
from .dispatch_domain import (
    Add,
    Added,
    Reject,
    Stall,
    aggregate_nodes,
    make_app,
    router_node,
    stored,
)


def described(system: Any, stream_id: str) -> dict[str, Any]:
    """What the shard hosting ``stream_id`` says of itself, in the system's tree."""

    def find(node: dict[str, Any]) -> dict[str, Any] | None:
        children = node.get("children", [])
        if node.get("kind") == "shard" and any(c.get("name") == stream_id for c in children):
            return node
        return next((found for child in children if (found := find(child))), None)

    node = find(system.tree())
    assert node is not None, f"no shard hosts {stream_id}"
    return node


def lane_socket(node: dict[str, Any]) -> str:
    """The abstract socket name of a shard's lane, from its description (``@name``)."""
    return "\0" + node["lane"]["socket"][1:]


def test_commands_to_a_known_aggregate_go_by_its_lane(start_app: Any, base: str) -> None:
    system = start_app(make_app())

    results = [system.dispatch(Add("l", 1)) for _ in range(5)]

    assert [r.version for r in results] == [1, 2, 3, 4, 5]
    assert [e.data.total for e in stored(system, "Counter-l")] == [1, 2, 3, 4, 5]
    node = described(system, "Counter-l")
    if base == "simple":
        assert "lane" not in node  # in-process every message is a call already
    else:
        # Every one went by the shard's lane (the first by the router if the shard was not up
        # yet: its answer named the lane).
        assert node["lane"]["commands"] in (4, 5)
        assert node["lane"]["connections"] == 1
        assert node["lane"]["socket"].startswith("@backstage-lane-")
        # Another client finds the shard's lane by the stream's name, without the router.
        other = make_app().attach(system.actor_system, database=system.settings.database)
        try:
            assert other.dispatch(Add("l", 1)).version == 6
        finally:
            other.stop()
        assert described(system, "Counter-l")["lane"]["commands"] == node["lane"]["commands"] + 1


@pytest.mark.parametrize("base", ["multiproc"])
def test_a_lane_cuts_off_what_is_not_a_request_and_serves_on(start_app: Any) -> None:
    system = start_app(make_app(shards=2))
    system.dispatch(Add("g", 1))
    name = lane_socket(described(system, "Counter-g"))

    for garbage in (struct.pack(">I", 5) + b"nope!", struct.pack(">I", 2**31)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(name)
            sock.sendall(garbage)
            assert sock.recv(16) == b"", "the aggregate should close the connection"

    # A request for an aggregate of another shard is answered with nothing: its client asks
    # the router.
    shards = system.settings.shards
    other = next(
        f"other-{n}"
        for n in range(100)
        if shard_of(f"Counter-other-{n}", shards) != shard_of("Counter-g", shards)
    )
    elsewhere = Execute([new_item(Add(other, 1))], None, False, f"Counter-{other}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(name)
        sock.sendall(_lane.frame(elsewhere))
        answer = _lane.LaneClient._read(sock, time.monotonic() + 10)
    assert isinstance(answer, Executed) and answer.results == []

    after = system.dispatch(Add("g", 2))

    assert (after.version, after.events[0].data) == (2, Added("g", 2, 3))
    node = described(system, "Counter-g")
    assert aggregate_nodes(system)["Counter-g"]["restarts"] == 0
    assert node["lane"]["commands"] >= 2  # the misdirected request and the last Add (+ the first)
    assert stored(system, f"Counter-{other}") == []


def send_and_read(name: str, request: bytes) -> int:
    """How many bytes of answer ``request`` gets on lane ``name`` (0: the lane hung up)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(name)
        try:
            sock.sendall(request)
            return len(sock.recv(1 << 16))
        except (ConnectionResetError, BrokenPipeError):  # closed before reading the request
            return 0


def as_another_user(probe: Any) -> int:
    """``probe()`` in a forked child running as nobody (uid 65534); its int result."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exceptions past here
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, str(probe()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as result:
        answer = result.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the probe failed"
    return int(answer)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.parametrize("base", ["multiproc"])
def test_a_lane_refuses_another_user(start_app: Any) -> None:
    system = start_app(make_app())
    system.dispatch(Add("u", 1))
    name = lane_socket(described(system, "Counter-u"))
    request = _lane.frame(Execute([new_item(Add("u", 1))], None, False, "Counter-u"))

    answered = as_another_user(lambda: send_and_read(name, request))

    assert answered == 0, "the aggregate should close a stranger's connection"
    assert [e.version for e in stored(system, "Counter-u")] == [1]
    assert system.dispatch(Add("u", 1)).version == 2


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])
def test_a_killed_aggregates_lane_sends_the_next_command_by_the_router(start_app: Any) -> None:
    system = start_app(make_app())
    system.dispatch(Add("k", 1))
    system.dispatch(Add("k", 1))
    old = described(system, "Counter-k")
    assert old["lane"]["commands"] >= 1  # the second at least (the first too if the shard was up)

    os.kill(aggregate_nodes(system)["Counter-k"]["pid"], signal.SIGKILL)
    after = system.dispatch(Add("k", 10), timeout=10)
    later = system.dispatch(Add("k", 100))

    assert (after.version, later.version) == (3, 4)
    assert [e.data.total for e in stored(system, "Counter-k")] == [1, 2, 12, 112]
    wait_until(
        lambda: sum(s["restarts"] for s in router_node(system)["children"]) == 1,
        what="the restart of Counter-k's shard",
    )
    # `later` came by the new instance's lane (`after` too, if the shard was back in time).
    assert described(system, "Counter-k")["lane"]["commands"] >= 1


@pytest.mark.parametrize("base", ["multiproc"])
def test_a_command_slower_than_the_lanes_patience_runs_once(start_app: Any) -> None:
    system = start_app(make_app())
    system.dispatch(Add("s", 1))

    # The lane gives up after a second and the command goes by the router too: the aggregate
    # finds the second copy stored when it gets to it, and answers with that.
    result = system.dispatch(Stall("s", 1.5), timeout=10)

    assert result.version == 2
    assert [e.data for e in stored(system, "Counter-s")] == [Added("s", 1, 1), Added("s", 0, 1)]
    assert result.events == stored(system, "Counter-s")[1:]


@pytest.mark.parametrize("base", ["multiproc"])
def test_the_lanes_of_ended_threads_are_closed(start_app: Any) -> None:
    system = start_app(make_app())
    system.dispatch(Add("t", 1))
    fds = len(os.listdir("/proc/self/fd"))

    for _ in range(40):
        thread = threading.Thread(target=system.dispatch, args=(Add("t", 1),))
        thread.start()
        thread.join()

    assert [e.version for e in stored(system, "Counter-t")] == list(range(1, 42))
    # The main thread's (its command went by the router).
    assert len(system._courier._lane_clients) == 1
    assert len(os.listdir("/proc/self/fd")) < fds + 5
    node = wait_until(
        lambda: (n := described(system, "Counter-t"))["lane"]["connections"] == 0 and n,
        what="the aggregate to drop the ended threads' connections",
    )
    assert node["lane"]["commands"] == 40


@pytest.mark.parametrize("base", ["multiproc"])
def test_two_systems_on_one_database_keep_to_their_own_aggregates(start_app: Any) -> None:
    one = start_app(make_app(name="one", exclusive=False))
    one.dispatch(Add("x", 1))
    one.dispatch(Add("x", 1))
    two = start_app(make_app(name="two", exclusive=False), database=one.settings.database)

    for _ in range(3):
        two.dispatch(Add("x", 1))

    # Every command went by its own system's shard's lane (the first, unless it came before
    # the shard was up, by the router): none crossed over.
    assert described(one, "Counter-x")["lane"]["commands"] in (1, 2)
    assert router_node(two)["live"] == 1
    assert described(two, "Counter-x")["lane"]["commands"] in (2, 3)
    assert [e.version for e in stored(one, "Counter-x")] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("base", ["multiproc"])
def test_a_client_that_takes_no_answer_is_cut_off(
    start_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client waits 5 s on a lane here, not 1 s: the aggregate's 0.2 s of patience with the
    # stuck reader, the 0.9 MB rejection and the next command all fit in it on a loaded machine.
    monkeypatch.setattr("backstage_actors._courier.DIRECT_PATIENCE", 5.0)
    system = start_app(make_app())
    system.dispatch(Add("z", 1))
    system.dispatch(Add("z", 1))
    lanes = system._courier._lane_client()
    calls = lanes.calls
    big = Execute([new_item(Reject("z", "x" * 900_000))], None, False, "Counter-z")

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
        stuck.connect(lane_socket(described(system, "Counter-z")))
        stuck.sendall(_lane.frame(big))  # and never reads the 0.9 MB rejection
        # The aggregate gives up on that answer within the time a lane client waits: this
        # command is answered by lane, not after a detour through the router.
        after = system.dispatch(Add("z", 1), timeout=20)

    assert after.version == 3
    assert lanes.calls == calls + 1


def test_a_hung_up_lane_keeps_its_descriptor_numbers_taken() -> None:
    """An aggregate on its way out hangs up its lane while Thespian still watches the lane's
    descriptors and sends the actor's last messages: a number freed then could be reused by one
    of those sends, and registered twice in the transport's selector (which crashed the exit)."""
    name = _lane.name_for("test-system", "/nowhere/app.db", f"Counter-{os.getpid()}")
    server = _lane.LaneServer(name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(name)
        poller = select.poll()
        poller.register(server.listener, select.POLLIN)
        assert poller.poll(10_000)
        assert list(server.ready(server.filenos())) == []  # accepted, nothing asked yet
        numbers = server.filenos()
        assert len(numbers) == 2

        server.hang_up()

        assert client.recv(16) == b""  # the client sees its lane end
        fresh = [socket.socket() for _ in range(8)]
        try:
            assert not set(numbers) & {sock.fileno() for sock in fresh}
        finally:
            for sock in fresh:
                sock.close()
        quiet = select.poll()
        for number in numbers:
            quiet.register(number, select.POLLIN)
        assert quiet.poll(0) == []  # nothing there for Thespian to wake up on
    assert server.filenos() == []
    again = _lane.LaneServer(name)  # the next instance takes the name
    try:
        assert again.name == name
    finally:
        again.close()


def test_a_dropped_connection_is_closed_only_once_thespian_watches_the_new_list() -> None:
    """Thespian watches the descriptors of the actor's last ``watched()`` until its next
    message: a connection dropped meanwhile ends at once for its client, but its number stays
    taken until the lane's next ``ready``, in the actor's next message."""
    server = _lane.LaneServer(None)
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(server.name)
        poller = select.poll()
        poller.register(server.listener, select.POLLIN)
        assert poller.poll(10_000)
        list(server.ready(server.filenos()))
        [number] = server.filenos()[1:]
        client.sendall(struct.pack(">I", 5) + b"nope!")  # not a request: the lane hangs up

        watched = select.poll()
        watched.register(number, select.POLLIN)
        assert watched.poll(10_000)
        assert list(server.ready([number])) == []

        assert client.recv(16) == b""
        assert number not in server.filenos()
        os.fstat(number)  # still open: no socket of Thespian's can take its number yet
        list(server.ready([]))  # the actor's next message
        with pytest.raises(OSError):
            os.fstat(number)
        client.close()
    finally:
        server.close()


@pytest.mark.parametrize(("running", "believed"), [(3, 2), (1, 3)])
def test_a_client_that_counts_shards_otherwise_learns_the_running_count(
    start_app: Any, base: str, running: int, believed: int
) -> None:
    """A client names a new stream's lane after its application's shard count. Attached to a
    system that runs another count (configured apart, or another machine's cores), it takes the
    running count from the first answer, and its commands to new streams go straight to their
    shards' lanes from then on instead of detouring through the router (a wrong shard answers
    "not mine", a lane that does not exist refuses)."""
    if base == "simple":
        pytest.skip("in-process one shard hosts every stream: no lanes, nothing to count")
    system = start_app(make_app(shards=running))
    client = make_app(shards=believed).attach(
        system.actor_system, database=system.settings.database
    )
    try:
        before = int(router_node(system)["routed"])
        results = [client.dispatch(Add(f"n{i}", 1)) for i in range(30)]
        detoured = int(router_node(system)["routed"]) - before
        assert [r.version for r in results] == [1] * 30
        # Streams whose shard differs under the two counts: all of them would detour.
        differ = sum(
            shard_of(f"Counter-n{i}", running) != shard_of(f"Counter-n{i}", believed)
            for i in range(30)
        )
        assert differ > 10
        assert detoured <= 1, f"{detoured} of 30 went through the router"
        assert client._courier.shards == running
    finally:
        client.stop()


def test_a_client_takes_no_shard_count_from_another_systems_shard(
    start_app: Any, base: str
) -> None:
    """In a cluster a forwarded command's answer, or a call to the lane it named, comes from
    another member's shard, whose count is not the one this client's lanes are named after:
    only an answer by one of this system's lanes (or naming one) teaches the count."""
    if base == "simple":
        pytest.skip("in-process one shard hosts every stream: no lanes, nothing to count")
    system = start_app(make_app(shards=2))
    courier = system._courier
    other_system = _lane.name_for("ActorAddr-(T|:1)", system.settings.database, "shard-0")
    ours = _lane.name_for(courier._system_key, system.settings.database, "shard-0")

    courier._take(Executed([], shards=1), {}, [], lane=other_system)
    courier._take(Executed([], ("Counter-x", None, other_system), shards=1), {}, [])
    assert courier.shards == 2

    courier._take(Executed([], ("Counter-x", None, ours), shards=1), {}, [])
    assert courier.shards == 1
    courier._take(Executed([], shards=2), {}, [], lane=ours)
    assert courier.shards == 2
