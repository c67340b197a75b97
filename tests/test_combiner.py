"""The in-process queue (``_combiner``) on its own, with a ``run`` and a ``flush`` that the test
holds: the server flushes its batch outside the queue, the next batch is served meanwhile, and
no caller of a batch returns before that batch's flush has ended."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from backstage_actors._combiner import Combiner, _Slot
from backstage_actors.errors import BackstageError, StorageError

from .conftest import wait_until


class Held:
    """A ``run`` that answers each item with its own text and numbers its commits, and a
    ``flush`` that waits until the test lets that commit's flush end."""

    def __init__(self) -> None:
        self.served: list[list[str]] = []  # each batch's items, in serving order
        self.flushing: list[int] = []  # commits whose flush began
        self.release: dict[int, threading.Event] = {}
        self.fail: set[int] = set()
        self.lock = threading.Lock()

    def later(self) -> list[str]:
        """The items served after the first batch, sorted."""
        return sorted(item for batch in self.served[1:] for item in batch)

    def run(self, items: list[Any], timeout: float, batch_size: int) -> tuple[list[Any], int]:
        with self.lock:
            self.served.append(list(items))
            commit = len(self.served)
            self.release[commit] = threading.Event()
        return [f"answer to {item}" for item in items], commit

    @staticmethod
    def late(items: list[Any], timeout: float, sent: bool) -> list[Any]:
        return [f"{'late' if sent else 'unsent'} {item}" for item in items]

    def flush(self, commit: int, answers: list[Any]) -> None:
        self.flushing.append(commit)
        assert self.release[commit].wait(30)
        if commit in self.fail:
            answers[:] = [StorageError(f"flush of {commit} failed")] * len(answers)


def call(combiner: Combiner, item: str, returned: dict[str, Any]) -> threading.Thread:
    def send() -> None:
        try:
            returned[item] = combiner.submit([item], 10.0, 1000)  # type: ignore[list-item]
        except BaseException as exc:  # what the caller would have raised
            returned[item] = exc

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_callers_return_after_their_flush_and_the_next_batch_is_served_meanwhile() -> None:
    held = Held()
    combiner = Combiner(held.run, held.flush, held.late)
    returned: dict[str, Any] = {}
    first = call(combiner, "a", returned)
    wait_until(lambda: held.flushing == [1], 10)  # "a" served alone, its flush held
    later = [call(combiner, item, returned) for item in ("b", "c", "d")]
    # Served while the first flush is held: by one of them, in one or more batches.
    wait_until(lambda: held.later() == ["b", "c", "d"], 10)
    assert returned == {}  # nobody answered: no flush has ended
    held.release[1].set()
    first.join(10)
    assert returned == {"a": ["answer to a"]}
    for commit in range(2, len(held.served) + 1):
        wait_until(lambda commit=commit: commit in held.flushing, 10)  # type: ignore[misc]
        held.release[commit].set()
    for thread in later:
        thread.join(10)
    assert returned == {item: [f"answer to {item}"] for item in "abcd"}


def test_a_failed_flush_is_the_answer_of_every_caller_of_its_batch() -> None:
    held = Held()
    held.fail.add(2)
    combiner = Combiner(held.run, held.flush, held.late)
    returned: dict[str, Any] = {}
    first = call(combiner, "a", returned)
    wait_until(lambda: held.flushing == [1], 10)
    later = [call(combiner, item, returned) for item in ("b", "c")]
    wait_until(lambda: held.later() == ["b", "c"], 10)
    for commit in held.release:
        held.release[commit].set()
    for thread in [first, *later]:
        thread.join(10)
    assert returned["a"] == ["answer to a"]
    failed = [item for item in "bc" if isinstance(returned[item][0], StorageError)]
    assert failed == [item for item in "bc" if item in held.served[1]]  # batch 2, all of it
    assert failed  # (batch 2 holds "b" or "c" or both)


def test_an_error_while_serving_reaches_every_caller_of_the_batch_and_the_queue_goes_on() -> None:
    held = Held()
    broken = threading.Event()

    def run(items: list[Any], timeout: float, batch_size: int) -> tuple[list[Any], int]:
        if "boom" in items:
            broken.set()
            raise RuntimeError("the actor system stopped")
        return held.run(items, timeout, batch_size)

    combiner = Combiner(run, held.flush, held.late)
    with pytest.raises(RuntimeError, match="stopped"):
        combiner.submit(["boom"], 10.0, 1000)  # type: ignore[list-item]
    assert broken.is_set()
    returned: dict[str, Any] = {}
    thread = call(combiner, "after", returned)
    wait_until(lambda: held.flushing == [1], 10)
    held.release[1].set()
    thread.join(10)
    assert returned == {"after": ["answer to after"]}


def test_a_call_from_inside_the_actor_system_runs_at_once_and_flushes_itself() -> None:
    held = Held()

    def run(items: list[Any], timeout: float, batch_size: int) -> tuple[list[Any], int]:
        answered = held.run(items, timeout, batch_size)
        held.release[answered[1]].set()  # (its flush is not held)
        return answered

    combiner = Combiner(run, held.flush, held.late, inside=lambda: True)
    assert combiner.submit(["x"], 10.0, 1000) == ["answer to x"]  # type: ignore[list-item]
    assert held.flushing == [1]  # flushed before it returned, on the caller's own thread
    assert held.served == [["x"]]


class Interrupted(BaseException):
    """What a signal handler raises in the main thread here, as Ctrl-C raises KeyboardInterrupt."""


def gated(held: Held, gate: str) -> tuple[Any, threading.Event, threading.Event]:
    """A ``run`` that holds the batch ``[gate]`` (``serving`` set) until ``go_on`` is set."""
    serving, go_on = threading.Event(), threading.Event()

    def run(items: list[Any], timeout: float, batch_size: int) -> tuple[list[Any], int]:
        if items == [gate]:
            serving.set()
            assert go_on.wait(30)
        return held.run(items, timeout, batch_size)

    return run, serving, go_on


def busy(
    gate: str,
) -> tuple[Held, Combiner, threading.Event, threading.Thread, dict[str, Any]]:
    """A combiner whose first caller (a thread) serves the batch ``[gate]`` and holds it until
    ``go_on`` is set; what each caller returned (or raised) goes in ``returned``."""
    held = Held()
    run, serving, go_on = gated(held, gate)
    combiner = Combiner(run, held.flush, held.late)
    returned: dict[str, Any] = {}
    first = call(combiner, gate, returned)
    assert serving.wait(10)
    return held, combiner, go_on, first, returned


@contextlib.contextmanager
def interrupted_after(script: Any) -> Iterator[None]:
    """Run ``script`` in a thread, then interrupt the main thread (a signal whose handler
    raises :class:`Interrupted`); the block must end with that interruption."""

    def raise_interrupted(signum: int, frame: Any) -> None:
        raise Interrupted

    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main

    def watch() -> None:
        script()
        signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    watcher = threading.Thread(target=watch)
    try:
        watcher.start()
        with pytest.raises(Interrupted):
            yield
    finally:
        watcher.join(30)
        signal.signal(signal.SIGUSR1, previous)


def test_a_caller_interrupted_while_queued_leaves_and_the_queue_goes_on() -> None:
    """The main thread, queued behind a server, is interrupted: it leaves the queue, and the
    serving is not handed to a caller that left."""
    # "a" serves; the main thread's "b" queues behind it
    held, combiner, go_on, first, returned = busy("a")
    with interrupted_after(lambda: wait_until(lambda: len(combiner._queue) == 1, 10)):
        combiner.submit(["b"], 10.0, 1000)  # type: ignore[list-item]
    go_on.set()
    wait_until(lambda: held.flushing == [1], 10)
    held.release[1].set()
    first.join(10)
    later = call(combiner, "c", returned)  # served: "b" left, nobody holds the serving
    wait_until(lambda: held.flushing == [1, 2], 10)
    held.release[2].set()
    later.join(10)
    assert returned == {"a": ["answer to a"], "c": ["answer to c"]}
    assert held.served == [["a"], ["c"]]


def test_an_interrupted_server_tells_its_batch_that_the_outcome_is_unknown() -> None:
    """The main thread serves a batch holding another thread's command and is interrupted
    while it waits for the flush: it raises the interruption, the other caller gets a
    BackstageError saying its command may or may not have run (not the interruption)."""
    held, combiner, go_on, first, returned = busy("x")
    others: list[threading.Thread] = []

    def script() -> None:
        wait_until(lambda: len(combiner._queue) == 1, 10)  # the main thread's "a"
        others.append(call(combiner, "b", returned))
        wait_until(lambda: len(combiner._queue) == 2, 10)
        go_on.set()  # "x" ends; the serving goes to "a", whose batch is ["a", "b"]
        wait_until(lambda: 2 in held.flushing, 10)  # "a" waits for the flush of commit 2

    with interrupted_after(script):
        combiner.submit(["a"], 10.0, 1000)  # type: ignore[list-item]
    assert held.served[1] == ["a", "b"]
    others[0].join(10)
    error = returned["b"]
    assert isinstance(error, BackstageError) and "may or may not" in str(error), error
    held.release[1].set()
    first.join(10)
    assert returned["x"] == ["answer to x"]


def test_a_queued_caller_returns_by_its_deadline_and_its_commands_are_never_sent() -> None:
    """Behind a server that takes longer than the caller's timeout, the caller does not wait
    for it: it leaves the queue at its deadline, unsent, and the queue goes on without it."""
    held, combiner, go_on, first, returned = busy("a")

    assert combiner.submit(["b"], 0.2, 1000) == ["unsent b"]  # type: ignore[list-item]

    go_on.set()
    wait_until(lambda: held.flushing == [1], 10)
    held.release[1].set()
    first.join(10)
    later = call(combiner, "c", returned)  # served: "b" left the queue
    wait_until(lambda: held.flushing == [1, 2], 10)
    held.release[2].set()
    later.join(10)
    assert held.served == [["a"], ["c"]]
    assert returned == {"a": ["answer to a"], "c": ["answer to c"]}


def test_a_caller_taken_into_a_batch_returns_by_its_deadline_saying_it_may_have_run() -> None:
    """Taken into another caller's batch whose flush outlasts its timeout, a caller returns at
    its deadline: its commands were sent, so their outcome is unknown to it."""
    held, combiner, go_on, first, returned = busy("x")
    others: list[threading.Thread] = []

    def script() -> None:
        others.append(call(combiner, "a", returned))
        wait_until(lambda: len(combiner._queue) == 2, 10)  # "a", then the main thread's "b"
        go_on.set()  # "x" ends; "a" serves the batch ["a", "b"], whose flush is held

    watcher = threading.Thread(target=script)
    watcher.start()
    try:
        wait_until(lambda: len(combiner._queue) == 1, 10)
        assert combiner.submit(["b"], 4.0, 1000) == ["late b"]  # type: ignore[list-item]
    finally:
        watcher.join(10)
    assert held.served[1] == ["a", "b"] and 2 in held.flushing
    for commit in held.release:
        held.release[commit].set()
    for thread in [first, *others]:
        thread.join(10)
    assert returned == {"x": ["answer to x"], "a": ["answer to a"]}


def test_a_queued_caller_without_a_deadline_waits_for_its_turn() -> None:
    """``timeout=inf`` (or one past what a lock's wait takes) waits as long as it takes."""
    held, combiner, go_on, first, _returned = busy("a")

    def script() -> None:
        wait_until(lambda: len(combiner._queue) == 1, 10)  # the main thread's "b"
        go_on.set()
        for commit in (1, 2):  # ("a" and "b" flush at once: "b" serves while "a" flushes)
            wait_until(lambda commit=commit: commit in held.flushing, 10)  # type: ignore[misc]
            held.release[commit].set()

    watcher = threading.Thread(target=script)
    watcher.start()
    try:
        assert combiner.submit(["b"], float("inf"), 1000) == ["answer to b"]  # type: ignore[list-item]
    finally:
        watcher.join(30)
        first.join(10)
    assert held.served == [["a"], ["b"]]


@pytest.mark.parametrize("state", ["handed", "answered", "failed", "taken", "queued"])
def test_a_caller_past_its_deadline_settles_by_what_happened_to_its_slot(state: str) -> None:
    """The five ways a deadline can find a caller, each decided under the queue's mutex: handed
    the serving (it serves: None), answered or failed meanwhile (those stand), taken into a
    batch (late), still queued (unsent, and out of the queue)."""
    combiner = Combiner(Held().run, Held().flush, Held.late)
    slot = _Slot(["b"], 0.1)  # type: ignore[list-item]
    if state in ("handed", "queued"):
        combiner._queue.append(slot)
        slot.serve = state == "handed"
    elif state == "answered":
        slot.answers = ["answer to b"]
    elif state == "failed":
        slot.error = StorageError("flush failed")

    if state == "failed":
        with pytest.raises(StorageError):
            combiner._give_up(slot)
        return
    outcome = combiner._give_up(slot)

    assert (
        outcome
        == {
            "handed": None,
            "answered": ["answer to b"],
            "taken": ["late b"],
            "queued": ["unsent b"],
        }[state]
    )
    assert combiner._queue == ([slot] if state == "handed" else [])
