"""The patches ``backstage_actors._thespian`` makes to Thespian, each checked on its own."""

from __future__ import annotations

import logging
import os
import resource
import selectors
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from thespian.actors import Actor, DeadEnvelope, WakeupMessage
from thespian.system.transport import ReceiveEnvelope, TransmitIntent
from thespian.system.transport import TCPTransport as tcp_module

from backstage_actors import _thespian

ROOT = Path(__file__).resolve().parent.parent


class Loud:
    """A message that counts how often it is turned into text."""

    def __init__(self) -> None:
        self.formatted = 0

    def __str__(self) -> str:
        self.formatted += 1
        return "x" * 100_000


def test_transport_log_lines_name_the_message_type_without_formatting_it() -> None:
    from backstage_actors._thespian import auth

    _thespian.terse_messages()
    message = Loud()

    with auth.entered(auth.Scope(bytes(32), "127.0.0.1", None)):  # in a Backstage system
        received = ReceiveEnvelope("sender", message).identify()
        sent = TransmitIntent("target", message).identify()
    assert message.formatted == 0
    assert "Loud" in received and "sender" in received
    assert "Loud" in sent and "target" in sent

    ReceiveEnvelope("sender", message).identify()  # elsewhere: Thespian's own description
    assert message.formatted == 1


def test_lean_poll_selector_answers_like_the_standard_one() -> None:
    left, right = socket.socketpair()
    try:
        lean = _thespian.LeanPollSelector()
        lean.register(left.fileno(), selectors.EVENT_READ)
        lean.register(right.fileno(), selectors.EVENT_WRITE)
        with pytest.raises(KeyError):
            lean.register(left.fileno(), selectors.EVENT_READ)
        with pytest.raises(ValueError):  # the transport treats this as a bad descriptor
            lean.register(-1, selectors.EVENT_READ)

        # Nothing to read yet; the other end can be written to at once.
        assert [(k.fd, e) for k, e in lean.select(0)] == [(right.fileno(), selectors.EVENT_WRITE)]
        right.send(b"x")
        ready = {k.fd: e for k, e in lean.select(1.0)}
        assert ready == {
            left.fileno(): selectors.EVENT_READ,
            right.fileno(): selectors.EVENT_WRITE,
        }
        lean.close()
    finally:
        left.close()
        right.close()


def test_lean_simple_base_fires_due_timers_in_order_and_keeps_the_others() -> None:
    from thespian.system.timing import currentTime

    system = _thespian.lean_simple_system()
    timers = system._systemBase
    assert isinstance(timers, _thespian.LeanSimpleBase)
    assert timers._pop_expired_wakeups(currentTime()) == []
    for name, seconds in [("first", 0), ("later", 60), ("second", 0), ("third", 0)]:
        timers._add_wakeup(name, timedelta(seconds=seconds), name)

    due = timers._pop_expired_wakeups(currentTime())

    assert [payload for _, _, payload in due] == ["first", "second", "third"]
    assert [payload for _, _, payload in timers._wakeUps] == ["later"]
    timers._add_wakeup("never", None, "never")  # no deadline
    assert timers._pop_expired_wakeups(currentTime()) == []
    assert [payload for _, _, payload in timers._wakeUps] == ["later", "never"]
    assert [p for _, _, p in timers._pop_expired_wakeups(currentTime() + 61)] == ["later"]
    system.shutdown()


def test_lean_simple_base_still_logs_deliveries_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    from backstage_actors._thespian import speed

    received: list[tuple[object, object]] = []

    class Plain:
        def receiveMessage(self, message: object, sender: object) -> None:
            received.append((message, sender))

    class Listener(Plain, Actor):  # type: ignore[misc]
        pass

    speed._receive(Plain(), "hello", "someone")
    assert [r for r in caplog.records if r.name == "Thespian"] == []
    with caplog.at_level(logging.DEBUG, logger="Thespian"):
        speed._receive(Plain(), "again", "someone")
    [line] = [r.getMessage() for r in caplog.records if r.name == "Thespian"]
    assert line.endswith('got message "again" from "someone"')

    system = _thespian.lean_simple_system()
    try:  # the lean base's actors receive through speed._receive
        listener = system.createActor(Listener)
        system.tell(listener, "last")
    finally:
        system.shutdown()
    assert [m for m, _ in received] == ["hello", "again", "last"]


def test_lean_simple_base_leaves_other_simple_systems_alone() -> None:
    """Thespian's own simpleSystemBase is untouched, in this process too."""
    from thespian.actors import ActorSystem
    from thespian.system import simpleSystemBase

    _thespian.lean_simple_system().shutdown()
    system = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        assert type(system._systemBase) is simpleSystemBase.ActorSystemBase
        assert "LeanSimpleBase" not in repr(simpleSystemBase.ActorSystemBase._runSingleSend)
    finally:
        system.shutdown()


def test_ready_response_takes_what_simple_base_actors_already_answered() -> None:
    from thespian.actors import Actor, ActorSystem

    class Echo(Actor):  # type: ignore[misc]
        def receiveMessage(self, message: object, sender: object) -> None:
            if isinstance(message, str):
                self.send(sender, message.upper())

    system = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        echo = system.createActor(Echo)
        assert _thespian.ready_response(system) is None
        system.tell(echo, "one")
        system.tell(echo, "two")

        assert [_thespian.ready_response(system) for _ in range(3)] == ["ONE", "TWO", None]
    finally:
        system.shutdown()


def test_lean_simple_base_delivers_like_thespian() -> None:
    """User messages go straight to live actors; a failed delivery is still retried, messages
    to a stopped actor still reach the dead-letter handler, exit requests still stop."""
    from thespian.actors import Actor, ActorExitRequest, DeadEnvelope

    class Flaky(Actor):  # type: ignore[misc]
        failures = 0

        def receiveMessage(self, message: object, sender: object) -> None:
            if message == "fail once" and Flaky.failures == 0:
                Flaky.failures += 1
                raise RuntimeError("first delivery fails")
            if isinstance(message, str):
                self.send(sender, f"got {message}")

    class Letters(Actor):  # type: ignore[misc]
        def receiveMessage(self, message: object, sender: object) -> None:
            if message == "watch":
                self.handleDeadLetters()
                self.send(sender, "watching")
            elif isinstance(message, DeadEnvelope):
                self.send(self.watcher, f"dead: {message.deadMessage}")
            elif message == "report here":
                self.watcher = sender
                self.send(sender, "ok")

    system = _thespian.lean_simple_system()
    try:
        flaky = system.createActor(Flaky)
        assert system.ask(flaky, "hello", 1) == "got hello"
        assert system.ask(flaky, "fail once", 1) == "got fail once"  # Thespian's retry
        letters = system.createActor(Letters)
        assert system.ask(letters, "watch", 1) == "watching"
        assert system.ask(letters, "report here", 1) == "ok"
        system.tell(flaky, ActorExitRequest())
        system.tell(flaky, "anyone?")
        assert system.listen(1) == "dead: anyone?"
    finally:
        system.shutdown()


# -- Thespian's dead letters, which the router relies on (no patch of ours involved) -----------


class DeadLetters(Actor):  # type: ignore[misc]
    """Handles the system's dead letters; tells the last asker what each one carried."""

    def receiveMessage(self, message: object, sender: object) -> None:
        if message == "watch":
            self.handleDeadLetters(startHandling=True)
            self.watcher = sender
            self.send(sender, "watching")
        elif isinstance(message, DeadEnvelope) and _is_command(message.deadMessage):
            # (not a dead letter of its own: once the watcher is gone, those would go round)
            self.send(self.watcher, ("dead", message.deadMessage))


def _is_command(message: object) -> bool:
    return isinstance(message, tuple) and message[:1] == ("a command",)


class Mortal(Actor):  # type: ignore[misc]
    def receiveMessage(self, message: object, sender: object) -> None:
        if message == "ping":
            self.send(sender, "pong")


DEAD_LETTERS = """
import sys
from thespian.actors import ActorExitRequest, ActorSystem
from tests.test_thespian_patches import DeadLetters, Mortal
base = sys.argv[1]
capabilities = {"Admin Port": int(sys.argv[2])} if base == "multiprocTCPBase" else {}
system = ActorSystem(base, capabilities, transientUnique=True)
try:
    letters = system.createActor(DeadLetters)
    assert system.ask(letters, "watch", 10) == "watching"
    mortal = system.createActor(Mortal)
    assert system.ask(mortal, "ping", 10) == "pong"
    system.tell(mortal, ActorExitRequest())
    # Once the actor is gone (on multiproc its process ends a moment after the request), what
    # is sent to it comes back; until then Thespian may drop it: the router retries by name.
    for attempt in range(150):  # (30 s: a loaded machine ends a process late)
        answer = system.ask(mortal, ("a command", attempt), 0.2)
        if answer is not None:
            break
    print(answer[0], answer[1][0], flush=True)
    system.tell(letters, ActorExitRequest())
finally:
    system.shutdown()
"""


@pytest.mark.parametrize("base", ["simpleSystemBase", "multiprocTCPBase"])
def test_a_message_to_an_actor_that_exited_reaches_the_dead_letter_handler(
    base: str, tmp_path: Path
) -> None:
    """The router's requirement of Thespian itself, checked on Thespian alone (a fresh
    interpreter: none of Backstage's patches): a message sent to an actor that has exited comes
    back to the actor that handles dead letters, as a ``DeadEnvelope`` carrying it. (On
    simpleSystemBase, ``LeanSimpleBase`` extends this to an actor whose exit its parent has not
    handled yet: ``test_lean_simple_base_delivers_like_thespian``.)"""
    env = {**os.environ, "THESPLOG_FILE": str(tmp_path / "thespian.log")}
    result = subprocess.run(
        [sys.executable, "-c", DEAD_LETTERS, base, str(_thespian.free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "dead a command"


def _wide() -> None:
    """A call whose frame is larger than ``_descend``'s (a deeper evaluation stack)."""


_wide.__code__ = _wide.__code__.replace(co_stacksize=64)


def _descend(levels: int, calls: int) -> None:
    """Call ``_wide`` ``calls`` times at each of ``levels`` depths below this one."""
    if levels:
        _descend(levels - 1, calls)
    for _ in range(calls):
        _wide()


class StackProbe(Actor):  # type: ignore[misc]
    """Answers how many minor page faults calls at every depth across one data-stack chunk
    (16 KiB) cost it: each call that has to open a chunk maps one, and touches it."""

    def receiveMessage(self, message: object, sender: object) -> None:
        if message == "probe":
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            _descend(200, 500)  # 200 levels: over 16 KiB of frames
            self.send(sender, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)


def test_actor_processes_run_their_loop_clear_of_data_stack_chunk_ends(tmp_path: Path) -> None:
    """CPython 3.11 maps a data-stack chunk for a call that crosses a chunk's end and unmaps it
    on return: at the wrong depth every call of a loop pays a mmap, a page fault and a munmap.
    An actor process of a Backstage system runs on a floor that leaves it a chunk's room."""
    system = _thespian.start_actor_system("multiproc", thespian_log=str(tmp_path / "t.log"))
    try:
        probe = system.createActor(StackProbe)
        faults = [system.ask(probe, "probe", 30) for _ in range(2)]  # the first touches pages
    finally:
        system.shutdown()
    assert isinstance(faults[1], int), faults
    assert faults[1] < 250, f"{faults[1]} page faults for 100,000 calls: chunks mapped per call"


class NearDeadline(Actor):  # type: ignore[misc]
    """On "arm": a wakeup 0.3 s away, and the transport's next look at the clock (when it
    decides how long to wait on its sockets) falls 0.3 microseconds before the wakeup is due;
    the real clock after that. Answers "woke" when the wakeup comes."""

    def receiveMessage(self, message: object, sender: object) -> None:
        if message == "arm":
            self.tester = sender
            self.wakeupAfter(timedelta(seconds=0.3), "due")
            deadline = self._myRef.transport.run_time._time_to_quit
            real = tcp_module.currentTime

            def once() -> float:
                tcp_module.currentTime = real
                return float(deadline - 3e-7)

            tcp_module.currentTime = once
        elif isinstance(message, WakeupMessage):
            self.send(self.tester, "woke")


def test_a_wakeup_looked_at_a_fraction_of_a_microsecond_before_it_is_due_still_comes(
    tmp_path: Path,
) -> None:
    """Thespian's loop waits on its sockets for the wakeup's remaining time as a timedelta and
    leaves out delays that are false: under half a microsecond rounds to timedelta(0), and it
    waited with no timeout, until some message happened to arrive. A subscriber with nothing
    more coming (its next page and its slow poll both wakeups) then never woke again."""
    system = _thespian.start_actor_system("multiproc", thespian_log=str(tmp_path / "t.log"))
    try:
        actor = system.createActor(NearDeadline)
        system.tell(actor, "arm")
        answer = system.listen(timedelta(seconds=5))
    finally:
        system.shutdown()
    assert answer == "woke", "no wakeup: the transport waited on its sockets with no timeout"
