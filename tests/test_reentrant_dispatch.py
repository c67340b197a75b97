"""In-process dispatch made from inside the actor system, while other threads dispatch: it runs
at once (never queued behind a server that waits for the running system's lock), and an answer
it reads that belongs to another call reaches that call."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import pytest

from backstage_actors import EventHandler, Metadata, Retry

from .conftest import wait_until
from .handler_domain import HdIncrement, HdIncremented, make_app

Start = Any


class Echoer(EventHandler):
    """On an increment of "trigger", dispatches an increment of "echo" from inside the system,
    once another thread has become the server of the in-process queue (``hold``)."""

    name = "hd-echoer"
    system: ClassVar[Any] = None
    hold: ClassVar[bool] = False
    inside: ClassVar[threading.Event] = threading.Event()
    echoed: ClassVar[list[Any]] = []

    def handle(self, event: Any, meta: Metadata) -> None:
        if not (isinstance(event, HdIncremented) and event.counter_id == "trigger"):
            return
        if type(self).hold and self.system._courier.combiner._server == threading.get_ident():
            # Run in the dispatch's own send: try again later, when its thread waits in
            # wait_for (holding the running system's lock, not serving the queue).
            raise _NotYet()
        type(self).inside.set()
        if type(self).hold:  # another thread now serves the queue, waiting for our lock
            wait_until(lambda: self.system._courier.combiner._server is not None, 10)
            time.sleep(0.05)  # (it is blocked on the lock by then; not needed for correctness)
        type(self).echoed.append(self.system.dispatch(HdIncrement("echo"), timeout=10))

    def error(self, exc: BaseException, event: Any, meta: Metadata, failures: int) -> Any:
        return (
            Retry(0.01) if isinstance(exc, _NotYet) else super().error(exc, event, meta, failures)
        )


class _NotYet(Exception):
    pass


@pytest.fixture
def echoer(start_app: Start) -> Any:
    Echoer.inside.clear()
    Echoer.echoed.clear()
    system = start_app(make_app(handlers=[Echoer]))
    Echoer.system = system
    yield system
    Echoer.system, Echoer.hold = None, False


@pytest.mark.parametrize("base", ["simple"])  # the handler runs in the caller's thread there
def test_a_handler_dispatches_while_another_thread_serves_the_queue(echoer: Any) -> None:
    # The strong dispatch's thread holds the running system's lock in wait_for while the
    # handler runs; the other thread becomes the server and waits for that lock. The
    # handler's dispatch must not queue behind it (a deadlock before the fix).
    Echoer.hold = True
    other: list[Any] = []
    mine: list[Any] = []
    first = threading.Thread(
        target=lambda: mine.append(
            echoer.dispatch(HdIncrement("trigger"), consistency="strong", timeout=20)
        )
    )
    first.start()
    assert Echoer.inside.wait(20)
    second = threading.Thread(target=lambda: other.append(echoer.dispatch(HdIncrement("b"))))
    second.start()
    first.join(30)
    second.join(30)
    assert not first.is_alive() and not second.is_alive(), "deadlocked"
    assert mine[0].events[0].data == HdIncremented("trigger", 1, 1)
    assert Echoer.echoed[0].events[0].data == HdIncremented("echo", 1, 1)
    assert other[0].events[0].data == HdIncremented("b", 1, 1)


@pytest.mark.parametrize("base", ["simple"])
def test_an_answer_read_by_a_dispatch_inside_the_system_reaches_its_own_call(
    echoer: Any,
) -> None:
    # The handler's dispatch runs while the outer call still listens for its answers: every
    # outer call gets its own answer (none times out), whoever read it first.
    results = echoer.dispatch_many(
        [HdIncrement("trigger")] + [HdIncrement(f"c{n}") for n in range(20)]
    )
    echoer.settle(timeout=20)
    assert [type(r).__name__ for r in results] == ["DispatchResult"] * 21
    assert Echoer.echoed and type(Echoer.echoed[0]).__name__ == "DispatchResult"
